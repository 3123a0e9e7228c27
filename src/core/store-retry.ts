import { Readable } from "node:stream";
import { setTimeout as sleep } from "node:timers/promises";
import { isStoreError, StoreError, type ObjectInfo, type ReadOptions, type StoreInstance } from "../plugins/plugin-api.js";

export interface RetryPolicy {
  /** Further tries after the first. */
  retries: number;
  /** The first back-off; each next one doubles, up to maxDelayMs, with jitter. */
  baseDelayMs: number;
  maxDelayMs: number;
}

/** What a store wrapper reports about its traffic, e.g. to metrics. */
export interface StoreObserver {
  bytes(direction: "read" | "write", count: number): void;
  error(kind: string): void;
}

export const defaultRetryPolicy: RetryPolicy = { retries: 5, baseDelayMs: 200, maxDelayMs: 5_000 };

const transientCodes = new Set(["ECONNRESET", "ECONNREFUSED", "ETIMEDOUT", "EPIPE", "EAI_AGAIN", "ENETUNREACH", "EHOSTUNREACH"]);

/** Errors worth another try: the store said it is unavailable, or the connection failed. */
export function isTransient(err: unknown): boolean {
  if (isStoreError(err)) return err.kind === "unavailable";
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  return typeof code === "string" && transientCodes.has(code);
}

/**
 * A store instance whose calls survive transient faults: each call is tried again with
 * exponential back-off and jitter, and a read that breaks off resumes from the last byte
 * it delivered (where the store reads ranges) instead of starting over. Writes are not
 * retried here: their source is consumed; the task fails and may be run again. A store
 * that stays down fails with an error that names it.
 */
export function withRetries(
  store: string,
  instance: StoreInstance,
  canResume: boolean,
  policy = defaultRetryPolicy,
  observer: StoreObserver = { bytes() {}, error() {} },
): StoreInstance {
  const failed = (what: string, err: unknown) => {
    const error = named(store, what, err);
    if (isStoreError(error)) observer.error(error.kind);
    return error;
  };
  const retry = async <T>(what: string, signal: AbortSignal | undefined, call: () => Promise<T>): Promise<T> => {
    for (let attempt = 0; ; attempt++) {
      try {
        return await call();
      } catch (err) {
        if (!isTransient(err) || attempt >= policy.retries || signal?.aborted) throw failed(what, err);
        await sleep(backoff(policy, attempt), undefined, { signal });
      }
    }
  };

  async function* resumingRead(key: string, options: ReadOptions = {}): AsyncGenerator<Buffer> {
    const start = options.range?.offset ?? 0;
    const end = options.range?.length === undefined ? undefined : start + options.range.length;
    let delivered = 0;
    for (let breaks = 0; ; breaks++) {
      const offset = start + delivered;
      const range = delivered === 0 ? options.range : { offset, length: end === undefined ? undefined : end - offset };
      const stream = await retry(`read ${key}`, options.signal, () => instance.read(key, { ...options, range }));
      try {
        for await (const chunk of stream as AsyncIterable<Buffer>) {
          delivered += chunk.length;
          observer.bytes("read", chunk.length);
          yield chunk;
        }
        return;
      } catch (err) {
        if (!canResume || !isTransient(err) || breaks >= policy.retries || options.signal?.aborted) throw failed(`read ${key}`, err);
        await sleep(backoff(policy, breaks), undefined, { signal: options.signal });
      }
    }
  }

  /** Stored or read without a copy (adoptFile, linkFile), but moved all the same: the traffic metric counts it. */
  async function uncopied(direction: "read" | "write", what: string, call: () => Promise<ObjectInfo | undefined>): Promise<ObjectInfo | undefined> {
    const moved = await call().catch((err: unknown) => {
      throw failed(what, err);
    });
    if (moved) observer.bytes(direction, moved.size);
    return moved;
  }

  return {
    stat: (key, options) => retry(`stat ${key}`, options?.signal, () => instance.stat(key, options)),
    read: async (key, options) => {
      // Open the first time eagerly, so a missing object rejects here as the contract says.
      const chunks = resumingRead(key, options);
      const first = await chunks.next();
      return Readable.from(
        (async function* () {
          if (!first.done) yield first.value;
          yield* chunks;
        })(),
        { objectMode: false },
      );
    },
    write: (key, source, options) =>
      instance
        .write(
          key,
          (async function* () {
            for await (const chunk of source) {
              observer.bytes("write", chunk.length);
              yield chunk;
            }
          })(),
          options,
        )
        .catch((err: unknown) => {
          throw failed(`write ${key}`, err);
        }),
    delete: (key, options) => retry(`delete ${key}`, options?.signal, () => instance.delete(key, options)),
    list: (options) => retry("list", options?.signal, () => instance.list(options)),
    removePartialWrites: instance.removePartialWrites && ((olderThan, options) => instance.removePartialWrites!(olderThan, options)),
    adoptFile: instance.adoptFile && ((key, path, options) => uncopied("write", `adopt ${key}`, () => instance.adoptFile!(key, path, options))),
    linkFile: instance.linkFile && ((key, path, options) => uncopied("read", `link ${key}`, () => instance.linkFile!(key, path, options))),
    openFile:
      instance.openFile &&
      (async (key, options) => {
        const file = await retry(`open ${key}`, options?.signal, () => instance.openFile!(key, options));
        return (
          file && {
            info: file.info,
            read: async (buffer, position) => {
              const count = await file.read(buffer, position).catch((err: unknown) => {
                throw failed(`read ${key}`, err);
              });
              observer.bytes("read", count);
              return count;
            },
            close: () => file.close(),
          }
        );
      }),
    presign: instance.presign && ((key, options) => retry(`presign ${key}`, undefined, () => instance.presign!(key, options))),
    close: instance.close && (() => instance.close!()),
  };
}

function backoff(policy: RetryPolicy, attempt: number): number {
  const ceiling = Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** attempt);
  return ceiling / 2 + Math.random() * (ceiling / 2);
}

/** The store's own error, with the store named so a task's reason says which store failed. */
function named(store: string, what: string, err: unknown): unknown {
  if (isStoreError(err)) return new StoreError(err.kind, `store "${store}": ${err.message}`, { cause: err });
  if (isTransient(err)) return new StoreError("unavailable", `store "${store}" did not answer (${what}): ${(err as Error).message}`, { cause: err });
  return err;
}
