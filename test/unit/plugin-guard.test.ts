import { appendFile, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable } from "node:stream";
import { describe, expect, it } from "vitest";
import { guardConverter, guardStore, type PluginGuard } from "../../src/plugins/guard.js";
import { StoreError, type StoreInstance } from "../../src/plugins/plugin-api.js";

function guardOf(limits: { callTimeoutMs?: number; stallTimeoutMs?: number } = {}): PluginGuard & { failures: number } {
  const guard = {
    pluginId: "store-x",
    callTimeoutMs: limits.callTimeoutMs ?? 1_000,
    stallTimeoutMs: limits.stallTimeoutMs ?? 1_000,
    failures: 0,
    failed: () => void guard.failures++,
  };
  return guard;
}

/** A store whose calls the test gives; the others are never called. */
function fakeStore(calls: Partial<StoreInstance>): StoreInstance {
  const unused = () => {
    throw new Error("not called in this test");
  };
  return { stat: unused, read: unused, write: unused, delete: unused, list: unused, ...calls };
}

async function* chunks(count: number, delayMs = 0): AsyncGenerator<Uint8Array> {
  for (let i = 0; i < count; i++) {
    if (delayMs) await new Promise((r) => setTimeout(r, delayMs));
    yield Buffer.alloc(1024);
  }
}

describe("plugin guard around a store", () => {
  it("passes StoreErrors and connection errors on unchanged and does not count them", async () => {
    const guard = guardOf();
    const refused = Object.assign(new Error("socket hang up"), { code: "ECONNRESET" });
    const store = guardStore(guard, fakeStore({
      stat: async () => {
        throw new StoreError("not-found", "no such object");
      },
      list: async () => {
        throw refused;
      },
    }));
    await expect(store.stat("k")).rejects.toMatchObject({ name: "StoreError", kind: "not-found" });
    await expect(store.list()).rejects.toBe(refused);
    expect(guard.failures).toBe(0);
  });

  it("cuts a write whose plugin stops taking chunks, and aborts the plugin's call", async () => {
    const guard = guardOf({ stallTimeoutMs: 300 });
    let aborted = false;
    const store = guardStore(guard, fakeStore({
      write: async (key, source, options) => {
        options?.signal?.addEventListener("abort", () => (aborted = true));
        for await (const _ of source) return new Promise(() => {});
        return { key, size: 0 };
      },
    }));
    await expect(store.write("k", chunks(3))).rejects.toMatchObject({
      reason: "PLUGIN_TIMEOUT",
      message: 'plugin "store-x" made no progress in write within 0.3 s',
    });
    expect(aborted).toBe(true);
    expect(guard.failures).toBe(1);
  });

  it("cuts a write whose plugin never asks for the first chunk", async () => {
    const guard = guardOf({ stallTimeoutMs: 200 });
    const store = guardStore(guard, fakeStore({ write: () => new Promise(() => {}) }));
    await expect(store.write("k", chunks(1))).rejects.toMatchObject({ reason: "PLUGIN_TIMEOUT" });
    expect(guard.failures).toBe(1);
  });

  it("does not blame the plugin for a slow source, and lets the source's own error through", async () => {
    const guard = guardOf({ stallTimeoutMs: 200 });
    const store = guardStore(guard, fakeStore({
      write: async (key, source) => {
        let size = 0;
        for await (const chunk of source) size += chunk.length;
        return { key, size };
      },
    }));
    // Each chunk arrives later than the stall limit: the wait is the source's, not the plugin's.
    await expect(store.write("k", chunks(3, 300))).resolves.toEqual({ key: "k", size: 3 * 1024 });
    const tooBig = new Error("the image is larger than allowed");
    const failing = (async function* () {
      yield Buffer.alloc(1);
      throw tooBig;
    })();
    await expect(store.write("k", failing)).rejects.toBe(tooBig);
    expect(guard.failures).toBe(0);
  });

  it("turns an error a read stream emits before anyone reads it into a typed failure, without crashing", async () => {
    const guard = guardOf();
    const store = guardStore(guard, fakeStore({
      read: async () => {
        const stream = new Readable({ read() {} });
        process.nextTick(() => stream.destroy(new Error("early failure")));
        return stream;
      },
    }));
    const stream = await store.read("k");
    await new Promise((r) => setTimeout(r, 50));
    await expect(stream.toArray()).rejects.toMatchObject({ reason: "PLUGIN_FAILED", message: 'plugin "store-x" failed in read: early failure' });
    expect(guard.failures).toBe(1);
  });

  it("fails a read that delivers no bytes for longer than the stall limit", async () => {
    const guard = guardOf({ stallTimeoutMs: 200 });
    const store = guardStore(guard, fakeStore({ read: async () => new Readable({ read() {} }) }));
    const stream = await store.read("k");
    await expect(stream.toArray()).rejects.toMatchObject({ reason: "PLUGIN_TIMEOUT", message: 'plugin "store-x" made no progress in read within 0.2 s' });
  });
});

describe("plugin guard around an open file", () => {
  const opened = (read: (buffer: Uint8Array, position: number) => Promise<number>) =>
    fakeStore({ openFile: async (key) => ({ info: { key, size: 10 }, read, close: async () => undefined }) });

  it("refuses a read count that does not fit the buffer as the plugin's failure", async () => {
    const guard = guardOf();
    const file = (await guardStore(guard, opened(async (buffer) => buffer.length + 1)).openFile!("k"))!;
    await expect(file.read(Buffer.alloc(8), 0)).rejects.toMatchObject({ reason: "PLUGIN_FAILED", message: 'plugin "store-x" failed in read: read answered 9 bytes for a 8-byte buffer' });
    expect(guard.failures).toBe(1);
  });

  it("fails a read that does not answer within the stall limit", async () => {
    const guard = guardOf({ stallTimeoutMs: 200 });
    const file = (await guardStore(guard, opened(() => new Promise<number>(() => undefined))).openFile!("k"))!;
    await expect(file.read(Buffer.alloc(8), 0)).rejects.toMatchObject({ reason: "PLUGIN_TIMEOUT" });
  });
});

describe("plugin guard around a converter", () => {
  it("lets a conversion that reports no progress run on while its output grows, and cuts it once the output stops growing", async () => {
    const dir = await mkdtemp(join(tmpdir(), "itx-guard-"));
    try {
      const guard = guardOf({ stallTimeoutMs: 200 });
      const writer = (rounds: number, hang: boolean) =>
        guardConverter(guard, {
          conversions: [{ from: "qcow2", to: "raw" }],
          convert: async (job) => {
            for (let i = 0; i < rounds; i++) {
              await appendFile(job.outputPath, Buffer.alloc(1024));
              await new Promise((r) => setTimeout(r, 100));
            }
            if (hang) await new Promise(() => {});
          },
        });
      const job = { from: "qcow2", to: "raw", inputPath: join(dir, "in"), outputPath: join(dir, "out") };
      // Ten rounds of 100 ms: five times the stall limit, with no progress reported.
      await expect(writer(10, false).convert(job)).resolves.toBeUndefined();
      expect(guard.failures).toBe(0);
      await expect(writer(2, true).convert({ ...job, outputPath: join(dir, "out2") })).rejects.toMatchObject({
        reason: "PLUGIN_TIMEOUT",
        message: 'plugin "store-x" made no progress in convert within 0.2 s',
      });
      expect(guard.failures).toBe(1);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("cuts a findHoles that hangs past the call limit", async () => {
    const guard = guardOf({ callTimeoutMs: 100 });
    const converter = guardConverter(guard, { conversions: [], convert: async () => undefined, findHoles: () => new Promise(() => {}) });
    await expect(converter.findHoles!("/work/runtime")).rejects.toMatchObject({
      reason: "PLUGIN_TIMEOUT",
      message: 'plugin "store-x" did not answer in findHoles within 0.1 s',
    });
    expect(guard.failures).toBe(1);
  });
});

describe("plugin guard around linkFile", () => {
  it("cuts a linkFile that hangs past the call limit", async () => {
    const guard = guardOf({ callTimeoutMs: 100 });
    const store = guardStore(guard, fakeStore({ linkFile: () => new Promise(() => {}) }));
    await expect(store.linkFile!("uploads/u", "/work/upload")).rejects.toMatchObject({ reason: "PLUGIN_TIMEOUT" });
    expect(guard.failures).toBe(1);
  });
});
