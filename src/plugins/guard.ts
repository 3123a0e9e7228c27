import { stat } from "node:fs/promises";
import { Readable } from "node:stream";
import { taskFailure } from "../core/transfer/failure.js";
import { isDomainError, type DomainError } from "../core/errors.js";
import { isTransient } from "../core/store-retry.js";
import {
  isStoreError,
  type CallOptions,
  type ConverterDriver,
  type OpenFile,
  type StoreDriver,
  type StoreInstance,
} from "./plugin-api.js";

/** How long plugin calls may take, and whom to tell when a plugin misbehaves. */
export interface PluginGuard {
  pluginId: string;
  /** Limit of calls that should be short: stat, delete, list, presign, open, describe, measure, findHoles, opening a read. */
  callTimeoutMs: number;
  /** Limit of a stall inside a long call: no bytes from a read, no chunk taken by a write, a convert neither reporting progress nor growing its output. */
  stallTimeoutMs: number;
  /** Called once per failure the plugin caused, to count it. */
  failed(): void;
}

/** Reason codes of failures a plugin caused; StoreErrors a plugin throws keep their own meaning. */
export const PLUGIN_FAILED = "PLUGIN_FAILED";
export const PLUGIN_TIMEOUT = "PLUGIN_TIMEOUT";

export function isPluginFailure(err: unknown): err is DomainError {
  return isDomainError(err) && (err.reason === PLUGIN_FAILED || err.reason === PLUGIN_TIMEOUT);
}

/**
 * What a plugin's throw or rejection becomes. Passed on as they are: StoreErrors and
 * connection errors (the contract's way to say "not found" or "unavailable"; the host
 * retries the transient ones), the host's own errors (DomainErrors, from a write's
 * source), and whatever follows an abort the host asked for. Anything else is a
 * PLUGIN_FAILED naming the plugin and the call.
 */
function failure(guard: PluginGuard, call: string, err: unknown, signal?: AbortSignal): unknown {
  if (isStoreError(err) || isTransient(err) || isDomainError(err) || signal?.aborted) return err;
  guard.failed();
  const detail = err instanceof Error ? err.message : describeValue(err);
  return taskFailure(PLUGIN_FAILED, `plugin "${guard.pluginId}" failed in ${call}: ${detail}`, err);
}

/**
 * A converter rejecting with an Error is its verdict on the image (qemu-img refusing a
 * broken file); the host reports that as the conversion's failure. Other values are not.
 */
function converterFailure(guard: PluginGuard, call: string, err: unknown, signal?: AbortSignal): unknown {
  return err instanceof Error ? err : failure(guard, call, err, signal);
}

function describeValue(value: unknown): string {
  if (typeof value === "string") return value;
  try {
    return JSON.stringify(value) ?? String(value);
  } catch {
    return String(value);
  }
}

function timedOut(guard: PluginGuard, call: string, ms: number, what = "did not answer"): DomainError {
  guard.failed();
  return taskFailure(PLUGIN_TIMEOUT, `plugin "${guard.pluginId}" ${what} in ${call} within ${ms / 1000} s`);
}

/**
 * Runs one short plugin call: synchronous throws become rejections, and a call that
 * outlives the limit is aborted through its signal and fails with PLUGIN_TIMEOUT.
 */
async function guarded<T>(
  guard: PluginGuard,
  call: string,
  signal: AbortSignal | undefined,
  run: (signal: AbortSignal) => Promise<T> | T,
  failed = failure,
  limitMs = guard.callTimeoutMs,
): Promise<T> {
  const controller = new AbortController();
  const combined = signal ? AbortSignal.any([signal, controller.signal]) : controller.signal;
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      reject(timedOut(guard, call, limitMs));
      controller.abort();
    }, limitMs);
  });
  try {
    return await Promise.race([Promise.resolve().then(() => run(combined)), timeout]);
  } catch (err) {
    throw failed(guard, call, err, signal);
  } finally {
    clearTimeout(timer);
  }
}

/** A store driver whose open() is guarded, and whose instances are. */
export function guardStoreDriver(guard: PluginGuard, driver: StoreDriver): StoreDriver {
  return {
    schemes: driver.schemes,
    capabilities: driver.capabilities,
    open: async (config) => guardStore(guard, await guarded(guard, "open", undefined, () => driver.open(config))),
  };
}

/**
 * A store instance whose calls cannot hurt the host: every failure is typed and names the
 * plugin, short calls time out, and reads and writes fail when the plugin stalls. A whole
 * write or read of a multi-GiB image has no time limit of its own: only stalls are cut.
 */
export function guardStore(guard: PluginGuard, instance: StoreInstance): StoreInstance {
  const withSignal = <O extends CallOptions>(options: O | undefined, signal: AbortSignal): O => ({ ...options, signal }) as O;
  return {
    stat: (key, options) => guarded(guard, "stat", options?.signal, (signal) => instance.stat(key, withSignal(options, signal))),
    read: async (key, options) => {
      const stream = await guarded(guard, "read", options?.signal, (signal) => instance.read(key, withSignal(options, signal)));
      return guardReadStream(guard, stream, options?.signal);
    },
    write: (key, source, options) => guardWrite(guard, instance, key, source, options),
    delete: (key, options) => guarded(guard, "delete", options?.signal, (signal) => instance.delete(key, withSignal(options, signal))),
    list: (options) => guarded(guard, "list", options?.signal, (signal) => instance.list(withSignal(options, signal))),
    // A sweep walks the whole store: it gets the longer limit.
    removePartialWrites:
      instance.removePartialWrites &&
      ((olderThan, options) =>
        guarded(
          guard,
          "removePartialWrites",
          options?.signal,
          (signal) => instance.removePartialWrites!(olderThan, withSignal(options, signal)),
          failure,
          guard.stallTimeoutMs,
        )),
    // Syncing a whole image to disk is slow: the longer limit.
    adoptFile:
      instance.adoptFile &&
      ((key, path, options) =>
        guarded(guard, "adoptFile", options?.signal, (signal) => instance.adoptFile!(key, path, withSignal(options, signal)), failure, guard.stallTimeoutMs)),
    linkFile:
      instance.linkFile &&
      ((key, path, options) => guarded(guard, "linkFile", options?.signal, (signal) => instance.linkFile!(key, path, withSignal(options, signal)))),
    openFile:
      instance.openFile &&
      (async (key, options) => {
        const file = await guarded(guard, "openFile", options?.signal, (signal) => instance.openFile!(key, withSignal(options, signal)));
        return file && guardOpenFile(guard, file);
      }),
    presign: instance.presign && ((key, options) => guarded(guard, "presign", undefined, () => instance.presign!(key, options))),
    close: instance.close && (() => guarded(guard, "close", undefined, () => instance.close!())),
  };
}

/** Each read of an open file has the stall limit a stream's next chunk has, and must answer a count that fits the buffer. */
function guardOpenFile(guard: PluginGuard, file: OpenFile): OpenFile {
  return {
    info: file.info,
    read: (buffer, position) =>
      guarded(
        guard,
        "read",
        undefined,
        async () => {
          const count = await file.read(buffer, position);
          if (!Number.isInteger(count) || count < 0 || count > buffer.length) throw new Error(`read answered ${count} bytes for a ${buffer.length}-byte buffer`);
          return count;
        },
        failure,
        guard.stallTimeoutMs,
      ),
    close: () => guarded(guard, "close", undefined, () => file.close()),
  };
}

/**
 * The plugin's read stream, re-emitted: its 'error' events become typed failures (a
 * listener is attached at once, so an error before anyone reads cannot crash the
 * process), and waiting longer than the stall limit for the next chunk fails the read.
 * Time the consumer spends elsewhere (back-pressure) is not counted against the plugin.
 */
function guardReadStream(guard: PluginGuard, stream: Readable, signal: AbortSignal | undefined): Readable {
  let streamError: unknown;
  stream.on("error", (err) => (streamError ??= err));
  const chunks = stream[Symbol.asyncIterator]();
  // One watchdog for the whole read, re-armed per chunk: a timer per chunk would cost more than the copy.
  let stalled: ((err: unknown) => void) | undefined;
  const watchdog = setTimeout(() => stalled?.(timedOut(guard, "read", guard.stallTimeoutMs, "made no progress")), guard.stallTimeoutMs);
  const nextChunk = () =>
    new Promise<IteratorResult<unknown>>((resolve, reject) => {
      stalled = reject;
      watchdog.refresh();
      chunks.next().then(resolve, reject);
    }).finally(() => (stalled = undefined));
  async function* guardedChunks(): AsyncGenerator<Buffer> {
    try {
      for (;;) {
        const next = await nextChunk();
        if (next.done) break;
        yield next.value as Buffer;
      }
      if (streamError !== undefined) throw streamError;
    } catch (err) {
      throw failure(guard, "read", err, signal);
    } finally {
      clearTimeout(watchdog);
      stream.destroy();
    }
  }
  return Readable.from(guardedChunks(), { objectMode: false });
}

/**
 * A write, cut when the plugin stalls: before it asks for the first chunk, while it
 * holds a chunk without asking for the next, or after the source ended without finishing.
 * Time spent waiting for the source is not the plugin's.
 */
async function guardWrite(
  guard: PluginGuard,
  instance: StoreInstance,
  key: string,
  source: AsyncIterable<Uint8Array>,
  options: CallOptions | undefined,
): ReturnType<StoreInstance["write"]> {
  const controller = new AbortController();
  const signal = options?.signal ? AbortSignal.any([options.signal, controller.signal]) : controller.signal;
  let timer: NodeJS.Timeout | undefined;
  let stalled: (err: unknown) => void = () => {};
  const stall = new Promise<never>((_, reject) => (stalled = reject));
  const startStallClock = () => {
    timer = setTimeout(() => {
      stalled(timedOut(guard, "write", guard.stallTimeoutMs, "made no progress"));
      controller.abort();
    }, guard.stallTimeoutMs);
  };
  const stopStallClock = () => clearTimeout(timer);
  // The source is the host's: when it fails, its error is the task's, not the plugin's.
  let sourceError: { err: unknown } | undefined;
  async function* watched(): AsyncGenerator<Uint8Array> {
    stopStallClock();
    try {
      for await (const chunk of source) {
        startStallClock();
        yield chunk;
        stopStallClock();
      }
    } catch (err) {
      sourceError = { err };
      throw err;
    }
    startStallClock();
  }
  // Until the plugin asks for the first chunk, it is the one holding the write up.
  startStallClock();
  try {
    return await Promise.race([Promise.resolve().then(() => instance.write(key, watched(), { ...options, signal })), stall]);
  } catch (err) {
    if (sourceError) throw sourceError.err;
    throw failure(guard, "write", err, options?.signal);
  } finally {
    stopStallClock();
  }
}

/**
 * A converter whose calls cannot hurt the host: describe, measure and findHoles are short calls;
 * a conversion may run for as long as it keeps reporting progress or growing its output.
 */
export function guardConverter(guard: PluginGuard, driver: ConverterDriver): ConverterDriver {
  return {
    conversions: driver.conversions,
    convert: async (job) => {
      const controller = new AbortController();
      const signal = job.signal ? AbortSignal.any([job.signal, controller.signal]) : controller.signal;
      let timer: NodeJS.Timeout | undefined;
      let finished = false;
      let stalled: (err: unknown) => void = () => {};
      const stall = new Promise<never>((_, reject) => (stalled = reject));
      // Progress is what the converter reports or its output growing: a converter that
      // reports rarely (qemu-img every 1 %) or only at the end (a copy) is not cut while it writes.
      let outputSize = -1;
      const restartStallClock = () => {
        clearTimeout(timer);
        timer = setTimeout(async () => {
          const size = await stat(job.outputPath).then((s) => s.size, () => -1);
          if (finished) return;
          if (size !== outputSize) {
            outputSize = size;
            return restartStallClock();
          }
          stalled(timedOut(guard, "convert", guard.stallTimeoutMs, "made no progress"));
          controller.abort();
        }, guard.stallTimeoutMs);
      };
      const onProgress = (done: number, total: number) => {
        restartStallClock();
        job.onProgress?.(done, total);
      };
      restartStallClock();
      try {
        await Promise.race([Promise.resolve().then(() => driver.convert({ ...job, signal, onProgress })), stall]);
      } catch (err) {
        throw converterFailure(guard, "convert", err, job.signal);
      } finally {
        finished = true;
        clearTimeout(timer);
      }
    },
    describe:
      driver.describe &&
      ((path, format, options) =>
        guarded(guard, "describe", options?.signal, (signal) => driver.describe!(path, format, { ...options, signal }), converterFailure)),
    measure:
      driver.measure &&
      ((path, from, to, options) =>
        guarded(guard, "measure", options?.signal, (signal) => driver.measure!(path, from, to, { ...options, signal }), converterFailure)),
    findHoles:
      driver.findHoles &&
      ((path, options) => guarded(guard, "findHoles", options?.signal, (signal) => driver.findHoles!(path, { ...options, signal }), converterFailure)),
  };
}
