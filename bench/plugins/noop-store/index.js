/**
 * A store for benchmark B5 that keeps nothing: every key "exists" as `objectBytes` zero
 * bytes (a valid, empty raw disk), reads produce those zeros, writes drain their source and
 * forget it. It isolates the control plane (RPCs, database, task runner) from data movement.
 *
 * Options:
 *   objectBytes      size of every object (default 1 MiB)
 *   chunkBytes       bytes per read chunk (default 64 KiB)
 *   chunkIntervalMs  pause before each read chunk (default 0): a slow read, so that an import
 *                    stays in "fetching" and reports progress for a while (the WatchTask bench)
 *   gateFile         reads wait until this file exists, so that a bench can attach its watchers
 *                    to tasks that are running but have not made progress yet
 *
 * Only the one benchmark uses it; it is not a model of a real store (not even "atomic":
 * there is nothing to make visible).
 */
import { existsSync } from "node:fs";
import { Readable } from "node:stream";
import { setTimeout as sleep } from "node:timers/promises";
import { defineStorePlugin, StoreError } from "imagetransfer/plugin-api";

const OPTIONS = ["objectBytes", "chunkBytes", "chunkIntervalMs", "gateFile"];

export default defineStorePlugin({
  schemes: ["noop"],
  capabilities: { readRanges: true, write: true, delete: true, list: true, presignGet: false, presignPut: false, maxObjectSize: 0 },
  open(config) {
    const options = config.options ?? {};
    for (const name of Object.keys(options)) {
      if (!OPTIONS.includes(name)) throw new StoreError("invalid", `unknown option ${JSON.stringify(name)}: the no-op store accepts ${OPTIONS.join(", ")}`);
    }
    const objectBytes = options.objectBytes ?? 1024 * 1024;
    const chunkBytes = options.chunkBytes ?? 64 * 1024;
    const chunkIntervalMs = options.chunkIntervalMs ?? 0;
    const gateFile = options.gateFile;
    const zeros = Buffer.alloc(chunkBytes);
    return {
      async stat(key) {
        return { key, size: objectBytes, modifiedTime: new Date(0) };
      },
      async read(key, readOptions = {}) {
        const signal = readOptions.signal;
        signal?.throwIfAborted();
        const offset = readOptions.range?.offset ?? 0;
        const end = readOptions.range?.length === undefined ? objectBytes : offset + readOptions.range.length;
        if (end > objectBytes) throw new StoreError("invalid", `the range ends at ${end}, beyond the object's ${objectBytes} bytes`);
        async function* chunks() {
          while (gateFile && !existsSync(gateFile)) await sleep(20, undefined, { signal });
          for (let at = offset; at < end; at += chunkBytes) {
            if (chunkIntervalMs > 0) await sleep(chunkIntervalMs, undefined, { signal });
            yield zeros.subarray(0, Math.min(chunkBytes, end - at));
          }
        }
        return Readable.from(chunks(), { objectMode: false, signal });
      },
      async write(key, source, writeOptions = {}) {
        let size = 0;
        for await (const chunk of source) {
          writeOptions.signal?.throwIfAborted();
          size += chunk.length;
        }
        return { key, size, modifiedTime: new Date() };
      },
      async delete() {},
      async list() {
        return { objects: [] };
      },
    };
  },
});
