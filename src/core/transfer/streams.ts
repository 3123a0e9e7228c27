import { createHash, type Hash } from "node:crypto";
import { createReadStream } from "node:fs";
import { PassThrough, Transform } from "node:stream";
import { pipeline } from "node:stream/promises";
import { setTimeout as sleep } from "node:timers/promises";
import type { FileRange, ObjectInfo, StoreInstance } from "../../plugins/plugin-api.js";
import { SparseFileWriter } from "../../plugins/sparse-file.js";
import { isTransient, type RetryPolicy } from "../store-retry.js";
import { taskFailure } from "./failure.js";
import { startHashing, type FileDigests } from "./hashing.js";

/** Chunks read from local files: large enough that per-chunk costs vanish, small enough to bound memory. */
export const CHUNK_BYTES = 1024 * 1024;

/** What a meter does with the bytes passing through it. */
export interface MeterOptions {
  hashes?: Hash[];
  maxBytes?: number;
  onBytes?: (done: number) => void;
  /** Sees every chunk in order (the format inspector). */
  onChunk?: (chunk: Buffer) => void;
}

/** Counts bytes as they pass, feeds them to hashes, and stops the stream past `maxBytes`. */
export function meter(options: MeterOptions): Transform {
  let done = 0;
  return new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      done += chunk.length;
      if (options.maxBytes !== undefined && done > options.maxBytes) {
        return callback(taskFailure("IMAGE_TOO_LARGE", `the image is larger than the limit of ${options.maxBytes} bytes`));
      }
      for (const hash of options.hashes ?? []) hash.update(chunk);
      try {
        options.onChunk?.(chunk);
      } catch (err) {
        return callback(err as Error);
      }
      options.onBytes?.(done);
      callback(null, chunk);
    },
  });
}

/** Streams a store object into a local file; resolves with the holes left where zeros came. */
export async function downloadToFile(
  instance: StoreInstance,
  key: string,
  path: string,
  options: MeterOptions & { signal: AbortSignal },
): Promise<{ holes: FileRange[] }> {
  const source = await instance.read(key, { signal: options.signal });
  const writer = new SparseFileWriter(path);
  await pipeline(source, meter(options), writer, { signal: options.signal });
  return { holes: writer.holes };
}

/**
 * Puts a store object into a new local file: a second name for the same bytes where the store
 * can make one (a file store on this file system), else a copy. A copy passes every byte
 * through `options` (inspection, hashes, the size limit, progress) on its way. A linked file is
 * neither read nor reported, only its size checked: it is a local file, which the caller can
 * check better itself (the inspector seeks to the few bytes it needs; a hash skips the holes).
 */
export async function fetchToFile(
  instance: StoreInstance,
  key: string,
  path: string,
  options: MeterOptions & { signal: AbortSignal },
): Promise<{ linked: boolean; holes?: FileRange[] }> {
  const linked = await instance.linkFile?.(key, path, { signal: options.signal });
  if (!linked) return { linked: false, ...(await downloadToFile(instance, key, path, options)) };
  if (options.maxBytes !== undefined && linked.size > options.maxBytes) {
    throw taskFailure("IMAGE_TOO_LARGE", `the image is larger than the limit of ${options.maxBytes} bytes`);
  }
  return { linked: true };
}

export interface StoreTarget {
  store: string;
  instance: StoreInstance;
  key: string;
}

export interface FanOutResult {
  size: number;
  md5: string;
  sha512: string;
  /** One outcome per target, in order. */
  outcomes: PromiseSettledResult<ObjectInfo>[];
}

/**
 * Reads the source once and writes it to every target store at the same pace,
 * hashing on the way. A store that fails drops out; the others go on, so the caller
 * decides whether partial success is enough.
 */
export async function fanOut(
  source: AsyncIterable<Buffer>,
  targets: readonly StoreTarget[],
  options: { signal: AbortSignal; onBytes?: (done: number) => void },
): Promise<FanOutResult> {
  const md5 = createHash("md5");
  const sha512 = createHash("sha512");
  const lanes = targets.map((target) => {
    const input = new PassThrough({ highWaterMark: CHUNK_BYTES });
    const lane = { input, failed: false, result: undefined as unknown as Promise<ObjectInfo> };
    lane.result = target.instance.write(target.key, input, { signal: options.signal });
    lane.result.catch(() => {
      lane.failed = true;
      input.destroy();
    });
    return lane;
  });
  let size = 0;
  try {
    for await (const chunk of source) {
      md5.update(chunk);
      sha512.update(chunk);
      size += chunk.length;
      // Wait only for stores that are behind: most chunks cost no promise at all.
      // A lane whose store gave up may be destroyed before its failure is seen: it is not behind, it is gone.
      const behind = lanes.filter((lane) => !lane.failed && !lane.input.destroyed && !lane.input.write(chunk));
      if (behind.length === 1) await drained(behind[0]!.input);
      else if (behind.length > 1) await Promise.all(behind.map((lane) => drained(lane.input)));
      options.onBytes?.(size);
      if (lanes.every((l) => l.failed)) break;
    }
  } catch (err) {
    for (const lane of lanes) lane.input.destroy(err as Error);
    await Promise.allSettled(lanes.map((l) => l.result));
    throw err;
  }
  for (const lane of lanes) if (!lane.failed) lane.input.end();
  const outcomes = await Promise.allSettled(lanes.map((l) => l.result));
  return { size, md5: md5.digest("hex"), sha512: sha512.digest("hex"), outcomes };
}

/**
 * Resolves when the store has caught up ("drain") or its write failed ("close").
 * Listening on the stream, not racing the write's promise: a handler added to that
 * long-lived promise per chunk kept every chunk alive (1 GiB of RSS per GiB stored).
 */
function drained(stream: PassThrough): Promise<void> {
  return new Promise((resolve) => {
    // Its "close" may have passed already (destroyed during the write that returned false).
    if (stream.destroyed) return resolve();
    const done = () => {
      stream.off("drain", done);
      stream.off("close", done);
      resolve();
    };
    stream.on("drain", done);
    stream.on("close", done);
  });
}

/** A local file as a fan-out source. */
function fileChunks(path: string, signal: AbortSignal): AsyncIterable<Buffer> {
  return createReadStream(path, { highWaterMark: CHUNK_BYTES, signal });
}

export interface StoreFileOptions {
  signal: AbortSignal;
  onBytes?: (done: number) => void;
  /** md5 and sha512 of the file (import records them); off for exports, which need none. */
  hash?: boolean;
  /** The file's holes, which the hashes take as zeros without reading them. */
  holes?: readonly FileRange[];
  /**
   * The file is the caller's to give away: one store that can adopt it (a file store on the
   * same file system) takes it over by rename, after every other store has read it.
   */
  adopt?: boolean;
  /** Back-off for a store whose write fails transiently; it starts again from the first byte. */
  retry?: RetryPolicy;
}

/**
 * Stores a local file in every target store and hashes it. Nothing waits on anything else:
 * md5 and sha512 run on two threads that read the file themselves (see hashFile), and each
 * store reads the file on its own (the page cache serves the repeats), so a store that fails
 * transiently is tried again from the start, with back-off, without holding the others up;
 * the hashes still come from one pass. A store that fails for good drops out and the others
 * go on, so the caller decides whether partial success is enough. When every store failed
 * the hashes are not finished and come back empty.
 */
export async function storeFile(path: string, targets: readonly StoreTarget[], options: StoreFileOptions): Promise<FanOutResult> {
  // Hashing stops when the caller aborts, or when no store is left to record its result for.
  const stop = new AbortController();
  const signal = AbortSignal.any([options.signal, stop.signal]);
  const progress = { hashed: options.hash === false ? Infinity : 0, lanes: targets.map(() => 0) };
  const report = () => {
    const done = Math.min(progress.hashed, ...progress.lanes);
    if (Number.isFinite(done)) options.onBytes?.(done);
  };
  let hashing: Promise<FileDigests> | undefined;
  if (options.hash !== false) {
    const onBytes = (done: number) => {
      progress.hashed = done;
      report();
    };
    // Opened before any store may adopt (rename) the file.
    hashing = (await startHashing(path, ["md5", "sha512"], { signal, onBytes, holes: options.holes })).digests;
  }
  const laneDone = (i: number) => () => {
    progress.lanes[i] = Infinity;
    report();
  };
  const adopter = options.adopt ? targets.findIndex((t) => t.instance.adoptFile !== undefined) : -1;
  const copies = targets.map((target, i) =>
    i === adopter
      ? undefined
      : writeFile(target, path, options.signal, options.retry, (done) => {
          progress.lanes[i] = done;
          report();
        }).finally(laneDone(i)),
  );
  const lanes = targets.map((target, i) => {
    if (i !== adopter) return copies[i]!;
    // The file moves into this store: only once every other store has read all of it.
    return Promise.allSettled(copies.filter((c) => c !== undefined))
      .then(async () => {
        const adopted = await target.instance.adoptFile!(target.key, path, { signal: options.signal });
        return adopted ?? (await writeFile(target, path, options.signal, options.retry, () => undefined));
      })
      .finally(laneDone(i));
  });
  const outcomes = await Promise.allSettled(lanes);
  const stored = outcomes.some((o) => o.status === "fulfilled");
  if (!stored) stop.abort(new Error("no store took the image"));
  const hashed = hashing && (await Promise.allSettled([hashing]))[0];
  if (stored && (hashed?.status === "rejected" || options.signal.aborted)) {
    // Stopped, or without the hashes that make them an image: the stored copies go.
    await Promise.allSettled(outcomes.map((o, i) => (o.status === "fulfilled" ? targets[i]!.instance.delete(targets[i]!.key) : undefined)));
    options.signal.throwIfAborted();
    throw (hashed as PromiseRejectedResult).reason;
  }
  options.signal.throwIfAborted();
  const digests = hashed?.status === "fulfilled" ? hashed.value : undefined;
  const size = digests?.size ?? outcomes.find((o) => o.status === "fulfilled")?.value.size ?? 0;
  return { size, md5: digests?.digests.md5 ?? "", sha512: digests?.digests.sha512 ?? "", outcomes };
}

/**
 * How often a whole write is tried again. Plugins retry their own requests already (and
 * store calls are retried around them), so this only covers a store that broke off a
 * write: two more tries, not the per-call policy's five, or a store that stays down
 * would hold the task for a minute of nested retries.
 */
const writeRetryPolicy: RetryPolicy = { retries: 2, baseDelayMs: 1_000, maxDelayMs: 5_000 };

/**
 * Writes a local file to one store. A transient failure (the store unavailable, a dropped
 * connection) is tried again from the first byte after a back-off with jitter, up to the
 * policy's bound; a try overwrites what an earlier one may have left, and when the store
 * gives up for good whatever is under the key is removed.
 */
async function writeFile(
  target: StoreTarget,
  path: string,
  signal: AbortSignal,
  policy: RetryPolicy = writeRetryPolicy,
  onBytes: (done: number) => void,
): Promise<ObjectInfo> {
  for (let attempt = 0; ; attempt++) {
    try {
      onBytes(0);
      return await target.instance.write(target.key, counted(fileChunks(path, signal), onBytes), { signal });
    } catch (err) {
      if (signal.aborted) throw err;
      if (!isTransient(err) || attempt >= policy.retries) {
        // A failed write leaves nothing, by contract; a store that kept bytes anyway loses them here.
        if (isTransient(err)) await target.instance.delete(target.key, { signal }).catch(() => undefined);
        throw err;
      }
      const ceiling = Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** attempt);
      await sleep(ceiling / 2 + Math.random() * (ceiling / 2), undefined, { signal });
    }
  }
}

async function* counted(source: AsyncIterable<Buffer>, onBytes: (done: number) => void): AsyncGenerator<Buffer> {
  let done = 0;
  for await (const chunk of source) {
    done += chunk.length;
    onBytes(done);
    yield chunk;
  }
}
