import { Readable } from "node:stream";
import { buffer as readAll } from "node:stream/consumers";
import { describe, expect, it } from "vitest";
import { withRetries } from "../../src/core/store-retry.js";
import { StoreError, type ReadOptions, type StoreInstance } from "../../src/plugins/plugin-api.js";

const fast = { retries: 4, baseDelayMs: 1, maxDelayMs: 5 };
const data = Buffer.from(Array.from({ length: 10_000 }, (_, i) => i % 251));

/** A store that fails as told: `faults` calls answer 503-like errors, reads break off after `breakAfter` bytes. */
function flakyStore(options: { faults?: number; breakAfter?: number; breaks?: number }) {
  let faults = options.faults ?? 0;
  let breaks = options.breaks ?? 0;
  const reads: Array<{ offset: number; length?: number }> = [];
  const store: StoreInstance = {
    async stat(key) {
      if (faults-- > 0) throw new StoreError("unavailable", "503 Service Unavailable");
      return { key, size: data.length };
    },
    async read(_key, { range }: ReadOptions = {}) {
      if (faults-- > 0) throw Object.assign(new Error("socket hang up"), { code: "ECONNRESET" });
      const offset = range?.offset ?? 0;
      const end = range?.length === undefined ? data.length : offset + range.length;
      reads.push({ offset, length: range?.length });
      const slice = data.subarray(offset, end);
      const cut = breaks-- > 0 ? (options.breakAfter ?? 0) : slice.length;
      return Readable.from(
        (async function* () {
          for (let at = 0; at < Math.min(cut, slice.length); at += 1000) yield slice.subarray(at, Math.min(at + 1000, cut));
          if (cut < slice.length) throw Object.assign(new Error("read ECONNRESET"), { code: "ECONNRESET" });
        })(),
      );
    },
    async write() {
      throw new Error("not used");
    },
    async delete() {
      if (faults-- > 0) throw new StoreError("unavailable", "429 Too Many Requests");
    },
    async list() {
      return { objects: [] };
    },
  };
  return { store, reads };
}

describe("store retries", () => {
  it("tries again after transient faults and succeeds", async () => {
    const { store } = flakyStore({ faults: 3 });
    const retrying = withRetries("swift1", store, true, fast);
    expect(await retrying.stat("k")).toEqual({ key: "k", size: data.length });
    await expect(retrying.delete("k")).resolves.toBeUndefined();
  });

  it("resumes a read that breaks off from the last byte it delivered, not from the start", async () => {
    const { store, reads } = flakyStore({ breakAfter: 3000, breaks: 2 });
    const bytes = await readAll(await withRetries("swift1", store, true, fast).read("k", { range: { offset: 100, length: 9000 } }));
    expect(bytes.equals(data.subarray(100, 9100))).toBe(true);
    expect(reads).toEqual([
      { offset: 100, length: 9000 },
      { offset: 3100, length: 6000 },
      { offset: 6100, length: 3000 },
    ]);
  });

  it("gives up after its retries with an error that names the store", async () => {
    const { store } = flakyStore({ faults: 100 });
    await expect(withRetries("swift1", store, true, fast).stat("k")).rejects.toMatchObject({
      name: "StoreError",
      kind: "unavailable",
      message: 'store "swift1": 503 Service Unavailable',
    });
  });

  it("does not retry what cannot get better, and never resumes without ranged reads", async () => {
    let calls = 0;
    const missing = withRetries("local", { ...flakyStore({}).store, stat: async () => { calls++; throw new StoreError("permission", "forbidden"); } }, true, fast);
    await expect(missing.stat("k")).rejects.toMatchObject({ kind: "permission" });
    expect(calls).toBe(1);
    const { store, reads } = flakyStore({ breakAfter: 3000, breaks: 1 });
    await expect(readAll(await withRetries("plain", store, false, fast).read("k"))).rejects.toMatchObject({ kind: "unavailable" });
    expect(reads).toHaveLength(1);
  });

  it("counts the bytes of an open file's reads as the store's read traffic, and names the store when one fails", async () => {
    let failing = false;
    const counted: number[] = [];
    const store: StoreInstance = {
      ...flakyStore({}).store,
      openFile: async (key) => ({
        info: { key, size: data.length },
        read: async (buffer, position) => {
          if (failing) throw new StoreError("unavailable", "EIO");
          return data.copy(buffer, 0, position, position + buffer.length);
        },
        close: async () => undefined,
      }),
    };
    const observer = { bytes: (_direction: "read" | "write", count: number) => void counted.push(count), error() {} };
    const file = (await withRetries("local", store, true, fast, observer).openFile!("k"))!;
    const into = Buffer.alloc(4096);
    expect(await file.read(into, 0)).toBe(4096);
    expect(await file.read(into, 8192)).toBe(data.length - 8192);
    expect(counted).toEqual([4096, data.length - 8192]);
    failing = true;
    await expect(file.read(into, 0)).rejects.toMatchObject({ kind: "unavailable", message: 'store "local": EIO' });
  });

  it("counts what adoptFile and linkFile move without a copy as write and read traffic, and names the store when they fail", async () => {
    const traffic: Array<[string, number]> = [];
    let failing = false;
    const store: StoreInstance = {
      ...flakyStore({}).store,
      adoptFile: async (key) => ({ key, size: 300 }),
      linkFile: async (key) => {
        if (failing) throw new StoreError("permission", "EACCES");
        return key === "elsewhere" ? undefined : { key, size: 700 };
      },
    };
    const observer = { bytes: (direction: "read" | "write", count: number) => void traffic.push([direction, count]), error() {} };
    const wrapped = withRetries("local", store, true, fast, observer);
    expect(await wrapped.adoptFile!("k", "/work/runtime")).toEqual({ key: "k", size: 300 });
    expect(await wrapped.linkFile!("k", "/work/upload")).toEqual({ key: "k", size: 700 });
    expect(await wrapped.linkFile!("elsewhere", "/work/upload")).toBeUndefined();
    expect(traffic).toEqual([["write", 300], ["read", 700]]);
    failing = true;
    await expect(wrapped.linkFile!("k", "/work/upload")).rejects.toMatchObject({ kind: "permission", message: 'store "local": EACCES' });
  });
});
