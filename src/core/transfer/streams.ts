import { createHash, type Hash } from "node:crypto";
import { createReadStream, createWriteStream } from "node:fs";
import { PassThrough, Transform } from "node:stream";
import { pipeline } from "node:stream/promises";
import type { ObjectInfo, StoreInstance } from "../../plugins/plugin-api.js";
import { taskFailure } from "./failure.js";

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

/** Streams a store object into a local file. */
export async function downloadToFile(
  instance: StoreInstance,
  key: string,
  path: string,
  options: MeterOptions & { signal: AbortSignal },
): Promise<void> {
  const source = await instance.read(key, { signal: options.signal });
  await pipeline(source, meter(options), createWriteStream(path), { signal: options.signal });
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
      await Promise.all(
        lanes.map(async (lane) => {
          if (lane.failed || lane.input.write(chunk)) return;
          await drained(lane.input);
        }),
      );
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
export function fileChunks(path: string, signal: AbortSignal): AsyncIterable<Buffer> {
  return createReadStream(path, { highWaterMark: CHUNK_BYTES, signal });
}
