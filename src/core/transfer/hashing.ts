import { open, type FileHandle } from "node:fs/promises";
import { availableParallelism } from "node:os";
import { Worker } from "node:worker_threads";
import type { FileRange } from "../../plugins/plugin-api.js";

/** Bytes each hashing thread reads at a time: 1 MiB reads hash 25% faster than 64 KiB ones. */
const READ_BYTES = 1024 * 1024;
/** How often a hashing thread says how far it got. */
const REPORT_BYTES = 32 * 1024 * 1024;

/**
 * A hashing thread: it hashes one file at a time, as it is asked, and is kept for the next
 * (starting a thread costs about 20 ms of CPU; an import needs two). It reads the file itself
 * (pread on the descriptor it is given, from the page cache) instead of being sent chunks: no
 * bytes cross threads, and each thread holds one read buffer. Holes it is told of are hashed
 * from zeros, not read; one past the end of the file shows as bytes hashed that differ from
 * the file's size, which the caller checks. Plain CommonJS evaluated as a string, so that it
 * runs the same from dist/ and from the TypeScript sources under test.
 */
const HASH_THREAD = `
const { parentPort, workerData } = require("node:worker_threads");
const { createHash } = require("node:crypto");
const { readSync } = require("node:fs");
const { readBytes, reportBytes } = workerData;
const buffer = Buffer.allocUnsafe(readBytes);
const zeros = Buffer.alloc(readBytes);
parentPort.on("message", ({ fd, algorithm, holes }) => {
  const hash = createHash(algorithm);
  let done = 0;
  let reported = 0;
  let hole = 0;
  for (;;) {
    while (hole < holes.length && holes[hole].offset + holes[hole].length <= done) hole++;
    const next = holes[hole];
    let n;
    if (next && next.offset <= done) {
      n = Math.min(readBytes, next.offset + next.length - done);
      hash.update(n === readBytes ? zeros : zeros.subarray(0, n));
    } else {
      n = readSync(fd, buffer, 0, next ? Math.min(readBytes, next.offset - done) : readBytes, done);
      if (n === 0) break;
      hash.update(n === readBytes ? buffer : buffer.subarray(0, n));
    }
    done += n;
    if (done - reported >= reportBytes) {
      parentPort.postMessage({ done });
      reported = done;
    }
  }
  parentPort.postMessage({ done, digest: hash.digest("hex") });
});
`;

/** Threads hashing at once, at most: more than the cores only share them; the rest wait their turn. */
const MAX_THREADS = Math.max(2, 2 * availableParallelism());
/** An idle thread is ended after this long: an idle server keeps none. */
const IDLE_MS = 30_000;

export interface FileDigests {
  /** Bytes hashed: the file's size when hashing began and ended (it must not change meanwhile). */
  size: number;
  /** Hex digest per algorithm asked for. */
  digests: Record<string, string>;
}

export interface HashOptions {
  signal: AbortSignal;
  onBytes?: (done: number) => void;
  /** The file's holes (ascending, not overlapping): hashed as zeros without being read. */
  holes?: readonly FileRange[];
}

/**
 * Hashes a local file with each algorithm on its own thread, so that md5 and sha512 (about
 * 1.9 s and 1.7 s per GiB on one core) run side by side on two cores. Resolves once the file
 * is open, with the digests still to come: from then on the file may be renamed (adopted by a
 * store) while the threads read, and they still read the same bytes. Aborting `signal` stops
 * the threads.
 */
export async function startHashing(
  path: string,
  algorithms: readonly string[],
  options: HashOptions,
): Promise<{ digests: Promise<FileDigests> }> {
  options.signal.throwIfAborted();
  const handle = await open(path, "r");
  const digests = hashOpenFile(handle, algorithms, options);
  digests.catch(() => undefined); // the caller's to await; never unhandled meanwhile
  return { digests };
}

async function hashOpenFile(handle: FileHandle, algorithms: readonly string[], options: HashOptions): Promise<FileDigests> {
  // One failed thread stops the others: their results are of no use.
  const stop = new AbortController();
  const signal = AbortSignal.any([options.signal, stop.signal]);
  const progress = algorithms.map(() => 0);
  const jobs = algorithms.map((algorithm, i) =>
    hashThreads.hash(handle.fd, algorithm, options.holes ?? [], signal, (done) => {
      progress[i] = done;
      options.onBytes?.(Math.min(...progress));
    }),
  );
  for (const job of jobs) job.catch(() => undefined); // awaited below; never unhandled meanwhile
  try {
    const sizeBefore = (await handle.stat()).size;
    const results = await Promise.all(jobs);
    options.signal.throwIfAborted();
    const sizeAfter = (await handle.stat()).size;
    if (results.some((r) => r.done !== sizeBefore) || sizeAfter !== sizeBefore) {
      throw new Error(`the file changed size while it was hashed (${sizeBefore} bytes before, ${sizeAfter} after)`);
    }
    return { size: sizeBefore, digests: Object.fromEntries(algorithms.map((a, i) => [a, results[i]!.digest])) };
  } catch (err) {
    stop.abort(err);
    throw err;
  } finally {
    // No thread reads the descriptor any more before it closes: its number may be reused at once.
    await Promise.allSettled(jobs);
    await handle.close();
  }
}

interface HashJob {
  fd: number;
  algorithm: string;
  holes: readonly FileRange[];
  signal: AbortSignal;
  onBytes: (done: number) => void;
  resolve: (result: { done: number; digest: string }) => void;
  reject: (err: unknown) => void;
  /** Takes the job out of the queue when aborted before its turn. */
  leaveQueue: () => void;
}

/**
 * The process's hashing threads: at most MAX_THREADS at work, jobs beyond that queued in
 * order, idle threads kept for IDLE_MS. A job settles only once its thread has stopped
 * reading its descriptor (finished, or ended on abort).
 */
class HashThreads {
  private readonly idle = new Map<Worker, NodeJS.Timeout>();
  private readonly queue: HashJob[] = [];
  private working = 0;

  hash(fd: number, algorithm: string, holes: readonly FileRange[], signal: AbortSignal, onBytes: (done: number) => void): Promise<{ done: number; digest: string }> {
    return new Promise((resolve, reject) => {
      if (signal.aborted) return reject(signal.reason);
      const job: HashJob = {
        fd,
        algorithm,
        holes,
        signal,
        onBytes,
        resolve,
        reject,
        leaveQueue: () => {
          this.queue.splice(this.queue.indexOf(job), 1);
          reject(signal.reason);
        },
      };
      signal.addEventListener("abort", job.leaveQueue, { once: true });
      this.queue.push(job);
      this.next();
    });
  }

  private next(): void {
    while (this.queue.length > 0 && this.working < MAX_THREADS) {
      const job = this.queue.shift()!;
      job.signal.removeEventListener("abort", job.leaveQueue);
      const [worker, timer] = this.idle.entries().next().value ?? [this.spawn(), undefined];
      clearTimeout(timer);
      this.idle.delete(worker);
      this.run(worker, job);
    }
  }

  private spawn(): Worker {
    const worker = new Worker(HASH_THREAD, {
      eval: true,
      workerData: { readBytes: READ_BYTES, reportBytes: REPORT_BYTES },
      // A thread needs little heap: its buffer is outside it.
      resourceLimits: { maxOldGenerationSizeMb: 32, maxYoungGenerationSizeMb: 8 },
    });
    // A job's failure is its own listener's to report; an idle thread that fails just goes.
    worker.on("error", () => undefined);
    worker.once("exit", () => {
      clearTimeout(this.idle.get(worker));
      this.idle.delete(worker);
    });
    return worker;
  }

  private run(worker: Worker, job: HashJob): void {
    this.working++;
    worker.ref();
    const onMessage = (message: { done: number; digest?: string }) => {
      job.onBytes(message.done);
      if (message.digest === undefined) return;
      // Aborted as it finished: the thread is being ended, and is no good for another job.
      finish(!job.signal.aborted);
      job.resolve({ done: message.done, digest: message.digest });
    };
    let failure: unknown;
    const onError = (err: unknown) => (failure = err);
    const onExit = (code: number) => {
      finish(false);
      job.reject(job.signal.aborted ? job.signal.reason : (failure ?? new Error(`the ${job.algorithm} hashing thread stopped (exit code ${code}) before it finished`)));
    };
    const onAbort = () => void worker.terminate();
    const finish = (reusable: boolean) => {
      worker.off("message", onMessage).off("error", onError).off("exit", onExit);
      job.signal.removeEventListener("abort", onAbort);
      this.working--;
      if (reusable) this.park(worker);
      this.next();
    };
    worker.on("message", onMessage).on("error", onError).on("exit", onExit);
    job.signal.addEventListener("abort", onAbort, { once: true });
    worker.postMessage({ fd: job.fd, algorithm: job.algorithm, holes: job.holes });
  }

  private park(worker: Worker): void {
    worker.unref();
    const timer = setTimeout(() => {
      this.idle.delete(worker);
      void worker.terminate();
    }, IDLE_MS);
    timer.unref();
    this.idle.set(worker, timer);
  }
}

const hashThreads = new HashThreads();
