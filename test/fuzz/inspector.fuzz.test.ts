// Fuzzes the streaming format inspector (coverage-guided, ./coverage-fuzzer.ts), seeded with the
// adversarial corpus. A bounded run (ITX_FUZZ_SECONDS, 60 s by default) is part of `npm test`;
// `npm run fuzz` runs for ten minutes. Failing inputs are kept in ITX_FUZZ_OUT (default a new
// temporary folder) as hex, to become regression tests in test/unit/inspect.test.ts.
//
// The target runs in a node process of its own, on the inspector transpiled to JavaScript by
// the project's TypeScript: V8 reports coverage for every script of a process after each run,
// and in this vitest worker that would cost far more than the run itself.
import { execFile } from "node:child_process";
import * as fs from "node:fs/promises";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { promisify } from "node:util";
import ts from "typescript";
import { afterAll, expect, it } from "vitest";
import { crc32c } from "../../src/inspect/bytes.js";
import { buildCorpus } from "../helpers/corpus.js";

const SECONDS = Number(process.env.ITX_FUZZ_SECONDS ?? 60);
/** Seeds are cut to this (head and tail kept): every format's head and regions fit, and runs stay fast. */
const KiB = 1024;
const MAX_SEED_BYTES = 1536 * KiB;
const ROOT = path.resolve(import.meta.dirname, "../..");

const dir = await fs.mkdtemp(path.join(tmpdir(), "itx-fuzz-"));
afterAll(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

/**
 * A corpus image cut to MAX_SEED_BYTES: its head and its last 4 KiB. A VHDX's metadata region
 * (at 3 MiB in qemu's layout) is moved to 1 MiB (the lowest place the spec allows) first, its
 * region tables rewritten to match.
 */
function seedOf(image: Buffer): Buffer {
  if (image.length <= MAX_SEED_BYTES) return image;
  const head = Buffer.from(image.subarray(0, MAX_SEED_BYTES - 4 * KiB));
  if (head.toString("latin1", 0, 8) === "vhdxfile") {
    for (const at of [192 * KiB, 256 * KiB]) {
      const table = head.subarray(at, at + 64 * KiB);
      for (let i = 0; i < Math.min(table.readUInt32LE(8), 2047); i++) {
        const entry = 16 + i * 32;
        if (table.toString("hex", entry, entry + 4) !== "06a27c8b") continue;
        const offset = Number(table.readBigUInt64LE(entry + 16));
        const length = Math.min(table.readUInt32LE(entry + 24), 256 * KiB);
        image.copy(head, 1024 * KiB, offset, offset + length);
        table.writeBigUInt64LE(BigInt(1024 * KiB), entry + 16);
        table.writeUInt32LE(length, entry + 24);
      }
      table.writeUInt32LE(0, 4);
      table.writeUInt32LE(crc32c(table), 4);
    }
  }
  return Buffer.concat([head, image.subarray(image.length - 4 * KiB)]);
}

/** Transpiles the inspector and the fuzz target into `out`, keeping their relative paths. */
async function transpile(out: string): Promise<string> {
  const sources = [
    ...(await fs.readdir(path.join(ROOT, "src/inspect"), { recursive: true })).filter((f) => f.endsWith(".ts")).map((f) => `src/inspect/${f}`),
    "test/fuzz/coverage-fuzzer.ts",
    "test/fuzz/fuzz-inspector.ts",
  ];
  for (const source of sources) {
    const { outputText } = ts.transpileModule(await fs.readFile(path.join(ROOT, source), "utf8"), {
      compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022 },
    });
    const file = path.join(out, source.replace(/\.ts$/, ".js"));
    await fs.mkdir(path.dirname(file), { recursive: true });
    await fs.writeFile(file, outputText);
  }
  await fs.writeFile(path.join(out, "package.json"), '{ "type": "module" }\n');
  return path.join(out, "test/fuzz/fuzz-inspector.js");
}

it(`finds no input that breaks the inspector in ${SECONDS} s`, async () => {
  const seeds = path.join(dir, "seeds");
  await fs.mkdir(seeds);
  const corpusDir = path.join(dir, "corpus");
  await fs.mkdir(corpusDir);
  for (const [i, c] of (await buildCorpus(corpusDir)).entries()) {
    await fs.writeFile(path.join(seeds, `${String(i).padStart(3, "0")}.bin`), seedOf(await fs.readFile(c.file)));
  }
  const out = process.env.ITX_FUZZ_OUT ?? (await fs.mkdtemp(path.join(tmpdir(), "itx-fuzz-failures-")));
  const main = await transpile(path.join(dir, "js"));
  const randomSeed = String(Number(process.env.ITX_FUZZ_SEED ?? Date.now()) >>> 0);
  const { stdout } = await promisify(execFile)(process.execPath, [main, seeds, out, String(SECONDS), randomSeed], { maxBuffer: 64 * 1024 * 1024 });
  const summary = JSON.parse(stdout.trim().split("\n").at(-1)!) as { executions: number; queue: number; features: number; failures: string[] };
  console.log(`fuzz: ${summary.executions} executions in ${SECONDS} s (random seed ${randomSeed}), ${summary.queue} inputs kept, ${summary.features} coverage features, ${summary.failures.length} failing inputs`);
  expect(summary.executions).toBeGreaterThan(summary.queue);
  expect(summary.failures).toEqual([]);
}, (SECONDS + 180) * 1000);
