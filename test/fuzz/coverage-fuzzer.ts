/**
 * A small coverage-guided mutation fuzzer for JavaScript targets, guided by V8's own block
 * coverage (node:inspector, Profiler.takePreciseCoverage with detailed block counts): an input
 * whose run reaches a block, or a block a different number of times (counts bucketed as AFL
 * does), joins the queue and is mutated further. It stands in for Jazzer.js, whose native
 * libFuzzer addon does not load here (see docs/image-safety.md). Coverage is taken of the
 * whole isolate after every run, so the fuzzer runs in a process of its own where little
 * else is loaded (see inspector.fuzz.test.ts).
 *
 * `target` returns normally for an uninteresting run and throws for a crash (a wrong
 * verdict, an unexpected exception, a broken invariant); crashes are collected, not fatal.
 */
import { Session } from "node:inspector/promises";

export interface FuzzOptions {
  seeds: Uint8Array[];
  /** Runs one input; throws when the input found a bug. */
  target(input: Uint8Array): void;
  /** Wall-clock budget. */
  seconds: number;
  /** Only coverage of scripts whose URL contains this counts (the code under test). */
  coverageOf: string;
  /** Strings worth splicing into inputs: the formats' magics and keywords. */
  dictionary: string[];
  /** Largest input a mutation may produce. */
  maxInputBytes: number;
  /** Seed for the random choices, so a run can be repeated. */
  randomSeed?: number;
}

export interface FuzzCrash {
  input: Uint8Array;
  error: unknown;
}

export interface FuzzResult {
  executions: number;
  /** Inputs kept for new coverage, seeds included. */
  queue: number;
  /** Distinct (block, count bucket) features reached. */
  features: number;
  crashes: FuzzCrash[];
}

export async function fuzz(options: FuzzOptions): Promise<FuzzResult> {
  const random = xorshift(options.randomSeed ?? Date.now());
  const session = new Session();
  session.connect();
  await session.post("Profiler.enable");
  await session.post("Profiler.startPreciseCoverage", { callCount: true, detailed: true });
  const seen = new Set<string>();
  const queue: Uint8Array[] = [];
  const crashes: FuzzCrash[] = [];
  const crashKinds = new Set<string>();
  let executions = 0;

  /** Blocks ever reached, whatever their counts: what a batch is checked against. */
  const reached = new Set<string>();

  const execute = (input: Uint8Array) => {
    executions++;
    try {
      options.target(input);
    } catch (error) {
      // One example of each kind of failure is enough; a kind is its message's first line.
      const kind = String(error instanceof Error ? error.message : error).split("\n", 1)[0]!;
      if (!crashKinds.has(kind)) {
        crashKinds.add(kind);
        crashes.push({ input, error });
      }
    }
  };

  /** Coverage since the last call, as "script:start:end" block keys with their counts. */
  const coverage = async (): Promise<Array<[string, number]>> => {
    const { result } = await session.post("Profiler.takePreciseCoverage");
    const blocks: Array<[string, number]> = [];
    for (const script of result) {
      if (!script.url.includes(options.coverageOf)) continue;
      for (const fn of script.functions) {
        for (const range of fn.ranges) if (range.count > 0) blocks.push([`${script.scriptId}:${range.startOffset}:${range.endOffset}`, range.count]);
      }
    }
    return blocks;
  };

  /** Runs one input; true when it reached a block, or a block a number of times (bucketed), not seen before. */
  const run = async (input: Uint8Array): Promise<boolean> => {
    execute(input);
    let fresh = false;
    for (const [block, count] of await coverage()) {
      reached.add(block);
      const feature = `${block}:${bucket(count)}`;
      if (!seen.has(feature)) {
        seen.add(feature);
        fresh = true;
      }
    }
    return fresh;
  };

  try {
    const deadline = Date.now() + options.seconds * 1000;
    for (const seed of options.seeds) {
      await run(seed);
      queue.push(seed);
    }
    const dictionary = options.dictionary.map((word) => Buffer.from(word, "latin1"));
    while (Date.now() < deadline) {
      // Coverage is costly to take (V8 reports the whole isolate), so mutants run in batches and
      // coverage is taken once per batch; only a batch that reached a new block is run again one
      // by one to find which mutants to keep. (Within batches, new hit counts alone go unnoticed.)
      const batch: Uint8Array[] = [];
      for (let i = 0; i < BATCH; i++) {
        // One copy of the parent, mutated in place: inputs are megabytes, copies per mutation would dominate.
        let child: Buffer = Buffer.from(queue[random(queue.length)]!);
        // Stack a few mutations now and then: structured formats need several fields right at once.
        for (let count = 1 + random(4); count > 0; count--) child = mutate(child, queue, dictionary, random, options.maxInputBytes);
        execute(child);
        batch.push(child);
      }
      if (!(await coverage()).some(([block]) => !reached.has(block))) continue;
      for (const child of batch) if (await run(child)) queue.push(child);
    }
  } finally {
    await session.post("Profiler.stopPreciseCoverage").catch(() => undefined);
    session.disconnect();
  }
  return { executions, queue: queue.length, features: seen.size, crashes };
}

/** Mutants run between two coverage snapshots. */
const BATCH = 16;

/** AFL's hit-count buckets: 1, 2, 3, 4-7, 8-15, 16-31, 32-127, 128+. */
function bucket(count: number): number {
  if (count <= 3) return count;
  if (count < 8) return 4;
  if (count < 16) return 8;
  if (count < 32) return 16;
  if (count < 128) return 32;
  return 128;
}

type Random = (below: number) => number;

function xorshift(seed: number): Random {
  let state = seed >>> 0 || 0x9e3779b9;
  return (below) => {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    state >>>= 0;
    return below <= 0 ? 0 : state % below;
  };
}

const INTERESTING_32 = [0, 1, 0x7f, 0x80, 0xff, 0x100, 0x200, 0x1000, 0x10000, 0x7fffffff, 0x80000000, 0xffffffff, 512, 1024, 2047, 2048, 4096];

/**
 * One mutation of `out`, in place where the size stays (else a new buffer), biased towards the
 * first 128 bytes, the first KiB and the last 1536 bytes, where headers and footers live.
 */
function mutate(out: Buffer, queue: Uint8Array[], dictionary: Buffer[], random: Random, maxBytes: number): Buffer {
  const offset = (width = 1) => {
    const size = Math.max(out.length - width, 0);
    const choice = random(4);
    let at: number;
    if (choice === 0 && size > 1536) at = size - random(1536);
    else if (choice === 1) at = random(Math.min(size, 128) + 1);
    else if (choice === 2) at = random(Math.min(size, 1024) + 1);
    else at = random(size + 1);
    // Header fields are mostly aligned to their width.
    return width > 1 && random(2) === 0 ? at - (at % width) : at;
  };
  switch (random(10)) {
    case 0: {
      if (out.length === 0) break;
      const at = offset();
      out[at] = out[at]! ^ (1 << random(8));
      break;
    }
    case 1: {
      if (out.length === 0) break;
      out[offset()] = [0, 0xff, 0x7f, 0x80, 1][random(5)]!;
      break;
    }
    case 2:
    case 3: {
      if (out.length < 4) break;
      const at = offset(4);
      const value = INTERESTING_32[random(INTERESTING_32.length)]!;
      if (random(2)) out.writeUInt32BE(value >>> 0, at);
      else out.writeUInt32LE(value >>> 0, at);
      break;
    }
    case 4: {
      if (out.length < 8) break;
      const at = offset(8);
      const value = [0n, 1n, 0xffffffffffffffffn, 1n << 40n, 1n << 62n, 1n << 53n][random(6)]!;
      if (random(2)) out.writeBigUInt64BE(value, at);
      else out.writeBigUInt64LE(value, at);
      break;
    }
    case 5: {
      const word = dictionary[random(dictionary.length)];
      if (!word || out.length < word.length) break;
      word.copy(out, offset(word.length));
      break;
    }
    case 6: {
      // Splice: a piece of another input at the same offset.
      const other = queue[random(queue.length)]!;
      const at = offset();
      const length = Math.min(random(4096) + 1, other.length - at, out.length - at);
      if (length > 0) out.set(other.subarray(at, at + length), at);
      break;
    }
    case 7:
      return Buffer.from(out.subarray(0, random(out.length + 1)));
    case 8: {
      const grown = Buffer.alloc(Math.min(maxBytes, out.length + random(64 * 1024) + 1));
      out.copy(grown);
      return grown;
    }
    default: {
      if (out.length < 2) break;
      const from = random(out.length);
      const to = offset();
      const length = Math.min(random(512) + 1, out.length - from, out.length - to);
      out.copyWithin(to, from, from + length);
    }
  }
  return out;
}
