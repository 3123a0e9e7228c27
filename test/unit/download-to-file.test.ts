import { randomBytes } from "node:crypto";
import * as fs from "node:fs/promises";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { Readable } from "node:stream";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { downloadToFile } from "../../src/core/transfer/streams.js";
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

describe("downloadToFile", () => {
  let dir: string;
  beforeEach(async () => {
    dir = await fs.mkdtemp(path.join(tmpdir(), "itx-download-"));
  });
  afterEach(async () => {
    await fs.rm(dir, { recursive: true, force: true });
  });

  it("writes the object byte for byte, leaving its zeros as holes, trailing zeros included", async () => {
    // Odd sizes, so data and zeros start mid-block; a 3 MiB zero chunk is longer than one comparison.
    const chunks = [randomBytes(1000), Buffer.alloc(70_000), randomBytes(MiB + 7), Buffer.alloc(3 * MiB), randomBytes(65_536), Buffer.alloc(4 * MiB)];
    const file = path.join(dir, "copy");
    let reported = 0;
    await downloadToFile(storeOf(chunks), "k", file, { signal: AbortSignal.timeout(60_000), onBytes: (done) => (reported = done) });
    const expected = Buffer.concat(chunks);
    // equals, not toEqual: vitest compares a Buffer's bytes one by one, for seconds.
    expect((await fs.readFile(file)).equals(expected)).toBe(true);
    expect(reported).toBe(expected.length);
    const { blocks } = await fs.stat(file);
    // About 1.1 MiB of data in 9.2 MiB: the zeros take no disk.
    expect(blocks * 512).toBeLessThan(2 * MiB);
  });

  it("writes many small chunks that arrive together in order", async () => {
    const chunks = Array.from({ length: 500 }, (_, i) => (i % 3 === 0 ? Buffer.alloc(4096 + i) : randomBytes(4096 + i)));
    const file = path.join(dir, "copy");
    await downloadToFile(storeOf(chunks), "k", file, { signal: AbortSignal.timeout(60_000) });
    expect((await fs.readFile(file)).equals(Buffer.concat(chunks))).toBe(true);
  });
});
