import { randomBytes } from "node:crypto";
import * as fs from "node:fs/promises";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { Readable } from "node:stream";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { downloadToFile, fetchToFile } from "../../src/core/transfer/streams.js";
import type { StoreInstance } from "../../src/plugins/plugin-api.js";

const MiB = 1024 * 1024;

/** A store whose one object arrives in the given chunks. */
function storeOf(chunks: Buffer[]): StoreInstance {
  return {
    stat: async () => undefined,
    read: async () => Readable.from(chunks),
    write: async () => {
      throw new Error("not used");
    },
    delete: async () => undefined,
    list: async () => ({ objects: [] }),
  };
}

let dir: string;
beforeEach(async () => {
  dir = await fs.mkdtemp(path.join(tmpdir(), "itx-fetch-"));
});
afterEach(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

describe("downloadToFile", () => {
  it("writes the object byte for byte, leaving its zeros as holes, trailing zeros included", async () => {
    // Odd sizes, so data and zeros start mid-block; a 3 MiB zero chunk is longer than one
    // comparison, and the 1 MiB one after it adds to the same hole.
    const chunks = [randomBytes(1000), Buffer.alloc(70_000), randomBytes(MiB + 7), Buffer.alloc(3 * MiB), Buffer.alloc(MiB), randomBytes(65_536), Buffer.alloc(4 * MiB)];
    const file = path.join(dir, "copy");
    let reported = 0;
    const { holes } = await downloadToFile(storeOf(chunks), "k", file, { signal: AbortSignal.timeout(60_000), onBytes: (done) => (reported = done) });
    const expected = Buffer.concat(chunks);
    // equals, not toEqual: vitest compares a Buffer's bytes one by one, for seconds.
    expect((await fs.readFile(file)).equals(expected)).toBe(true);
    expect(reported).toBe(expected.length);
    const { blocks } = await fs.stat(file);
    // About 1.1 MiB of data in 10.2 MiB: the zeros take no disk.
    expect(blocks * 512).toBeLessThan(2 * MiB);
    const afterData = 1000 + 70_000 + MiB + 7;
    expect(holes, "the holes it reports, for hashing them unread").toEqual([
      { offset: 1000, length: 70_000 },
      { offset: afterData, length: 4 * MiB },
      { offset: afterData + 4 * MiB + 65_536, length: 4 * MiB },
    ]);
  });

  it("lists at most 65,536 holes, however many separate runs of zeros come, and still leaves them all", async () => {
    const data = Buffer.of(7);
    const zero = Buffer.alloc(1);
    const chunks = Array.from({ length: 2 * 70_000 }, (_, i) => (i % 2 === 0 ? data : zero));
    const file = path.join(dir, "copy");
    const { holes } = await downloadToFile(storeOf(chunks), "k", file, { signal: AbortSignal.timeout(60_000) });
    expect(holes).toHaveLength(65_536);
    expect(holes.at(-1)).toEqual({ offset: 2 * 65_535 + 1, length: 1 });
    expect((await fs.readFile(file)).equals(Buffer.concat(chunks))).toBe(true);
  });

  it("writes many small chunks that arrive together in order", async () => {
    const chunks = Array.from({ length: 500 }, (_, i) => (i % 3 === 0 ? Buffer.alloc(4096 + i) : randomBytes(4096 + i)));
    const file = path.join(dir, "copy");
    await downloadToFile(storeOf(chunks), "k", file, { signal: AbortSignal.timeout(60_000) });
    expect((await fs.readFile(file)).equals(Buffer.concat(chunks))).toBe(true);
  });
});

describe("fetchToFile", () => {
  /** A store that links its one object (a local file) where asked, or declines. */
  function linkingStore(object: string, links: boolean): StoreInstance {
    return {
      ...storeOf([]),
      read: async () => {
        throw new Error("read() while the store can link");
      },
      linkFile: async (key, target) => {
        if (!links) return undefined;
        await fs.link(object, target);
        return { key, size: (await fs.stat(object)).size };
      },
    };
  }

  it("links where the store can, reading nothing and leaving the checks to the caller, but the size limit", async () => {
    const object = path.join(dir, "object");
    const bytes = randomBytes(3 * MiB + 5);
    await fs.writeFile(object, bytes);
    let seen = 0;
    let reported = 0;
    const file = path.join(dir, "upload");
    const fetched = await fetchToFile(linkingStore(object, true), "k", file, {
      signal: AbortSignal.timeout(60_000),
      onChunk: (chunk) => void (seen += chunk.length),
      onBytes: (done) => (reported = done),
    });
    expect(fetched).toEqual({ linked: true });
    expect((await fs.stat(file)).ino).toBe((await fs.stat(object)).ino);
    expect(seen, "nothing read: the caller reads a local file better itself").toBe(0);
    expect(reported).toBe(0);
    // The size limit holds for a linked object too.
    await expect(
      fetchToFile(linkingStore(object, true), "k", path.join(dir, "again"), { signal: AbortSignal.timeout(60_000), maxBytes: MiB }),
    ).rejects.toThrow(/larger than the limit of 1048576 bytes/);
  });

  it("copies where the store declines to link", async () => {
    const chunks = [randomBytes(1000), Buffer.alloc(MiB)];
    const store = { ...storeOf(chunks), linkFile: async () => undefined };
    const file = path.join(dir, "upload");
    let seen = 0;
    const fetched = await fetchToFile(store, "k", file, { signal: AbortSignal.timeout(60_000), onChunk: (chunk) => void (seen += chunk.length) });
    expect((await fs.readFile(file)).equals(Buffer.concat(chunks))).toBe(true);
    expect(seen, "a copy passes every byte through the checks").toBe(1000 + MiB);
    expect(fetched).toEqual({ linked: false, holes: [{ offset: 1000, length: MiB }] });
  });
});
