import { createHash, randomBytes } from "node:crypto";
import * as fs from "node:fs/promises";
import { availableParallelism, tmpdir } from "node:os";
import * as path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { startHashing } from "../../src/core/transfer/hashing.js";
import { storeFile, type StoreTarget } from "../../src/core/transfer/streams.js";
import { StoreError, type ObjectInfo, type StoreInstance } from "../../src/plugins/plugin-api.js";

/** Retries without waiting: the behaviour, not the back-off, is under test. */
const quickRetry = { retries: 3, baseDelayMs: 1, maxDelayMs: 2 };

/**
 * An in-memory store whose first `failures` writes fail with `kind` after taking half the
 * bytes. `leavesPartial` makes a failed write leave what it took (a store breaking the
 * contract, or one whose failure was reported after it kept the bytes).
 */
class FakeStore implements StoreInstance {
  readonly objects = new Map<string, Buffer>();
  writes = 0;
  constructor(
    private failures = 0,
    private kind: StoreError["kind"] = "unavailable",
    private leavesPartial = false,
  ) {}
  async stat(key: string): Promise<ObjectInfo | undefined> {
    const data = this.objects.get(key);
    return data && { key, size: data.length };
  }
  async read(): Promise<never> {
    throw new StoreError("not-found", "not used");
  }
  async write(key: string, source: AsyncIterable<Uint8Array>): Promise<ObjectInfo> {
    this.writes++;
    const parts: Buffer[] = [];
    let taken = 0;
    for await (const chunk of source) {
      parts.push(Buffer.from(chunk));
      taken += chunk.length;
      if (this.failures > 0 && taken > 0) {
        this.failures--;
        if (this.leavesPartial) this.objects.set(key, Buffer.concat(parts));
        throw new StoreError(this.kind, `injected ${this.kind} failure`);
      }
    }
    this.objects.set(key, Buffer.concat(parts));
    return { key, size: taken };
  }
  async delete(key: string): Promise<void> {
    this.objects.delete(key);
  }
  async list() {
    return { objects: [] };
  }
}

/** A store that takes files over by rename, recording when it did. */
class AdoptingStore extends FakeStore {
  adoptedAfterWrites: number | undefined;
  constructor(private readonly others: FakeStore[]) {
    super();
  }
  async adoptFile(key: string, file: string): Promise<ObjectInfo | undefined> {
    this.adoptedAfterWrites = this.others.reduce((n, s) => n + s.objects.size, 0);
    const data = await fs.readFile(file);
    await fs.rm(file);
    this.objects.set(key, data);
    return { key, size: data.length };
  }
}

let dir: string;
let file: string;
let bytes: Buffer;

beforeEach(async () => {
  dir = await fs.mkdtemp(path.join(tmpdir(), "itx-store-file-"));
  file = path.join(dir, "runtime");
  // Several read chunks and a partial last one.
  bytes = Buffer.concat([randomBytes(3 * 1024 * 1024 + 123), Buffer.alloc(1024 * 1024)]);
  await fs.writeFile(file, bytes);
});

afterEach(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

const target = (store: StoreInstance, name = "s"): StoreTarget => ({ store: name, instance: store, key: "images/abc" });
const digest = (algorithm: string, data: Buffer) => createHash(algorithm).update(data).digest("hex");
const signal = () => new AbortController().signal;
// Buffers compare with equals(): a deep toEqual of megabytes takes vitest minutes.

const hashFile = async (...args: Parameters<typeof startHashing>) => (await startHashing(...args)).digests;

describe("hashing", () => {
  it("gives md5 and sha512 of the whole file, and its size", async () => {
    const seen: number[] = [];
    const result = await hashFile(file, ["md5", "sha512"], { signal: signal(), onBytes: (done) => seen.push(done) });
    expect(result).toEqual({ size: bytes.length, digests: { md5: digest("md5", bytes), sha512: digest("sha512", bytes) } });
    expect(seen.at(-1)).toBe(bytes.length);
  });

  it("takes the holes it is told of as zeros without reading them, and notices one past the end", async () => {
    // A sparse file: data, a hole, data, a hole to the end.
    const data = [randomBytes(1024 * 1024 + 5), randomBytes(70_000)];
    await fs.writeFile(file, data[0]!);
    const handle = await fs.open(file, "r+");
    await handle.write(data[1]!, 0, data[1]!.length, 3 * 1024 * 1024);
    await handle.truncate(5 * 1024 * 1024);
    await handle.close();
    const contents = await fs.readFile(file);
    const holes = [
      { offset: data[0]!.length, length: 3 * 1024 * 1024 - data[0]!.length },
      { offset: 3 * 1024 * 1024 + 70_000, length: 2 * 1024 * 1024 - 70_000 },
    ];
    const seen: number[] = [];
    const result = await hashFile(file, ["md5", "sha512"], { signal: signal(), holes, onBytes: (done) => seen.push(done) });
    expect(result).toEqual({ size: contents.length, digests: { md5: digest("md5", contents), sha512: digest("sha512", contents) } });
    expect(seen.at(-1)).toBe(contents.length);
    // What a hole holds is never read: told that data is a hole, the hash takes zeros there.
    const told = { offset: 1000, length: 5000 };
    const asZeros = Buffer.from(contents);
    asZeros.fill(0, told.offset, told.offset + told.length);
    expect((await hashFile(file, ["sha512"], { signal: signal(), holes: [told, ...holes] })).digests.sha512).toBe(digest("sha512", asZeros));
    // A hole beyond the end would hash bytes the file does not have.
    await expect(hashFile(file, ["sha512"], { signal: signal(), holes: [{ offset: contents.length - 10, length: 20 }] })).rejects.toThrow(/changed size/);
  });

  it("hashes an empty file", async () => {
    await fs.writeFile(file, "");
    const result = await hashFile(file, ["sha512"], { signal: signal() });
    expect(result).toEqual({ size: 0, digests: { sha512: digest("sha512", Buffer.alloc(0)) } });
  });

  it("rejects once aborted", async () => {
    const controller = new AbortController();
    const hashing = hashFile(file, ["md5", "sha512"], { signal: controller.signal });
    controller.abort(new Error("stop"));
    await expect(hashing).rejects.toThrow("stop");
  });

  it("hashes more files at once than it has threads, each right, and goes on when some are aborted", async () => {
    // Two jobs a file, at most two threads a core at work: this many files always queue.
    const files = await Promise.all(
      Array.from({ length: 2 * availableParallelism() + 8 }, async (_, i) => {
        const name = path.join(dir, `many-${i}`);
        const data = randomBytes(256 * 1024 + i);
        await fs.writeFile(name, data);
        return { name, data, controller: new AbortController() };
      }),
    );
    // All started, so that most wait their turn; then every fourth is aborted, running or waiting.
    const started = await Promise.all(files.map(({ name, controller }) => startHashing(name, ["md5", "sha512"], { signal: controller.signal })));
    files.forEach(({ controller }, i) => i % 4 === 0 && controller.abort(new Error("stop")));
    const results = await Promise.allSettled(started.map((s) => s.digests));
    results.forEach((result, i) => {
      const { data } = files[i]!;
      if (i % 4 === 0) expect(result).toMatchObject({ status: "rejected", reason: new Error("stop") });
      else expect(result).toEqual({ status: "fulfilled", value: { size: data.length, digests: { md5: digest("md5", data), sha512: digest("sha512", data) } } });
    });
    // The threads are still good for the next file.
    expect(await hashFile(files[0]!.name, ["sha512"], { signal: signal() })).toEqual({ size: files[0]!.data.length, digests: { sha512: digest("sha512", files[0]!.data) } });
  });
});

describe("storeFile", () => {
  it("writes the file to every store and hashes the stored bytes", async () => {
    const [a, b] = [new FakeStore(), new FakeStore()];
    const result = await storeFile(file, [target(a, "a"), target(b, "b")], { signal: signal() });
    expect(result.outcomes.map((o) => o.status)).toEqual(["fulfilled", "fulfilled"]);
    expect(a.objects.get("images/abc")?.equals(bytes)).toBe(true);
    expect(b.objects.get("images/abc")?.equals(bytes)).toBe(true);
    expect(result).toMatchObject({ size: bytes.length, md5: digest("md5", bytes), sha512: digest("sha512", bytes) });
  });

  it("lets a store that can adopt the file take it, after the other stores have read it", async () => {
    const copy = new FakeStore();
    const adopting = new AdoptingStore([copy]);
    const result = await storeFile(file, [target(adopting, "adopting"), target(copy, "copy")], { signal: signal(), adopt: true });
    expect(result.outcomes.map((o) => o.status)).toEqual(["fulfilled", "fulfilled"]);
    expect(adopting.writes).toBe(0);
    expect(adopting.adoptedAfterWrites).toBe(1);
    expect(adopting.objects.get("images/abc")?.equals(bytes)).toBe(true);
    expect(copy.objects.get("images/abc")?.equals(bytes)).toBe(true);
    expect(result.sha512).toBe(digest("sha512", bytes));
    await expect(fs.stat(file)).rejects.toMatchObject({ code: "ENOENT" });
  });

  it("writes instead where the store cannot adopt the file", async () => {
    const store = new FakeStore();
    Object.assign(store, { adoptFile: async () => undefined });
    const result = await storeFile(file, [target(store)], { signal: signal(), adopt: true });
    expect(result.outcomes[0]!.status).toBe("fulfilled");
    expect(store.writes).toBe(1);
    expect(store.objects.get("images/abc")?.equals(bytes)).toBe(true);
  });

  it("tries a store that fails transiently again from the first byte, leaving no partial object", async () => {
    const flaky = new FakeStore(2, "unavailable", true);
    const steady = new FakeStore();
    const result = await storeFile(file, [target(flaky, "flaky"), target(steady, "steady")], { signal: signal(), retry: quickRetry });
    expect(result.outcomes.map((o) => o.status)).toEqual(["fulfilled", "fulfilled"]);
    expect(flaky.writes).toBe(3);
    expect(flaky.objects.get("images/abc")?.equals(bytes)).toBe(true);
    expect(steady.writes).toBe(1);
    expect(result.sha512).toBe(digest("sha512", bytes));
  });

  it("gives up on a store that stays unavailable after the retries, and removes what it left", async () => {
    const down = new FakeStore(100, "unavailable", true);
    const steady = new FakeStore();
    const result = await storeFile(file, [target(down, "down"), target(steady, "steady")], { signal: signal(), retry: quickRetry });
    expect(down.writes).toBe(quickRetry.retries + 1);
    expect(result.outcomes[0]).toMatchObject({ status: "rejected", reason: { kind: "unavailable" } });
    expect(result.outcomes[1]!.status).toBe("fulfilled");
    expect(down.objects.size).toBe(0);
  });

  it("does not retry a failure that is not transient", async () => {
    const denied = new FakeStore(1, "permission");
    const result = await storeFile(file, [target(denied)], { signal: signal(), retry: quickRetry });
    expect(denied.writes).toBe(1);
    expect(result.outcomes[0]).toMatchObject({ status: "rejected", reason: { kind: "permission" } });
  });

  it("removes what it stored when aborted", async () => {
    const store = new FakeStore();
    const controller = new AbortController();
    const storing = storeFile(file, [target(store)], {
      signal: controller.signal,
      onBytes: (done) => done > 0 && controller.abort(new Error("canceled")),
    });
    await expect(storing).rejects.toThrow("canceled");
    expect(store.objects.size).toBe(0);
  });
});
