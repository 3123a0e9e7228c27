// The decompression converter on its own: written only against the public entry points,
// it turns each compression back into the exact bytes compressed, reports progress, stops a
// decompression bomb at the cap, refuses what it cannot decompress, and cancels cleanly.
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import decompress from "../../plugins/converter-decompress/index.js";
import type { ConverterDriver } from "../../src/plugins/plugin-api.js";
import { descendants, stillRunning } from "../../src/testing/processes.js";
import { buildSourceRaw, MiB, sameBytes } from "../helpers/disk-images.js";
import { registerPlugin } from "../helpers/register-plugin.js";

const sh = (script: string) => promisify(execFile)("bash", ["-o", "pipefail", "-c", script]);
const pluginDir = new URL("../../plugins/converter-decompress/", import.meta.url).pathname;

let dir: string;
let raw: string;
let driver: ConverterDriver;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "itx-decompress-"));
  raw = await buildSourceRaw(join(dir, "disk.raw"), 3 * MiB);
  driver = (await registerPlugin(decompress)).converters[0]!;
});
afterAll(async () => {
  if (dir !== undefined) await rm(dir, { recursive: true, force: true });
});

/** Every module specifier a source file imports or re-exports. */
function importsOf(source: string): string[] {
  return [...source.matchAll(/(?:\bfrom\s*|\bimport\s*\(?\s*|\brequire\s*\(\s*)["']([^"']+)["']/g)].map((m) => m[1]!);
}

it("imports nothing from the project but its public entry points", async () => {
  const files = (await readdir(pluginDir, { recursive: true })).filter((f) => /\.(ts|js|mjs|cjs)$/.test(f));
  expect(files.length).toBeGreaterThan(0);
  for (const file of files) {
    for (const specifier of importsOf(await readFile(join(pluginDir, file), "utf8"))) {
      const allowed = specifier.startsWith("node:") || specifier === "imagetransfer/plugin-api" || specifier === "imagetransfer/testing"
        || (specifier.startsWith("./") && !specifier.includes(".."));
      expect(allowed, `${file} imports "${specifier}"`).toBe(true);
    }
  }
  // The scan itself can fail: a relative import out of the folder is caught.
  expect(importsOf('import { x } from "../../src/plugins/plugin-api.js";')).toEqual(["../../src/plugins/plugin-api.js"]);
});

it('advertises each compression as (compression -> "any")', () => {
  expect(driver.conversions).toEqual(["gzip", "xz", "zstd", "zip"].map((from) => ({ from, to: "any" })));
});

const compressors: Array<[format: string, command: (input: string, output: string) => string]> = [
  ["gzip", (i, o) => `gzip -c ${i} > ${o}`],
  ["xz", (i, o) => `xz -0 -c ${i} > ${o}`],
  ["xz", (i, o) => `xz -0 --format=lzma -c ${i} > ${o}`], // legacy lzma: xz reads both
  ["zstd", (i, o) => `zstd -q -c ${i} > ${o}`],
  ["zip", (i, o) => `cd ${dir} && zip -q - ${i.split("/").at(-1)} > ${o}`],
];

describe("decompression", () => {
  it.each(compressors.map(([format, command], n) => [`${format} #${n}`, format, command] as const))("restores the exact bytes of %s, with progress", async (_title, format, command) => {
    const input = join(dir, `in-${_title.replace(/\W/g, "")}`);
    await sh(command(raw, input));
    const outputPath = join(dir, `out-${_title.replace(/\W/g, "")}`);
    const progress: Array<[number, number]> = [];
    await driver.convert({ from: format, to: "any", inputPath: input, outputPath, maxOutputBytes: 3 * MiB, onProgress: (d, t) => void progress.push([d, t]) });
    expect(await sameBytes(raw, outputPath)).toBe(true);
    const [done, total] = progress.at(-1)!;
    expect(done).toBe(total);
    expect(progress.every(([d], i) => i === 0 || d >= progress[i - 1]![0])).toBe(true);
  });
});

describe("refusals", () => {
  it.each([
    ["gzip", "head -c 64M /dev/zero | gzip -1"],
    ["zstd", "head -c 64M /dev/zero | zstd -q -1"],
  ])("stops a %s bomb at the cap: OUTPUT_TOO_LARGE, no output, no process left", async (format, script) => {
    const input = join(dir, `bomb.${format}`);
    await sh(`${script} > ${input}`);
    const outputPath = join(dir, `bomb-out.${format}`);
    const before = await descendants();
    await expect(driver.convert({ from: format, to: "any", inputPath: input, outputPath, maxOutputBytes: MiB })).rejects.toMatchObject({
      code: "OUTPUT_TOO_LARGE",
      message: expect.stringContaining(String(MiB)),
    });
    expect(existsSync(outputPath)).toBe(false);
    const started = (await descendants()).filter((p) => !before.some((b) => b.pid === p.pid));
    expect(await stillRunning(started)).toEqual([]);
  });

  it("refuses a zip of two files, and a truncated xz, saying why", async () => {
    const two = join(dir, "two.zip");
    await sh(`cd ${dir} && cp disk.raw other.raw && zip -q ${two} disk.raw other.raw`);
    await expect(driver.convert({ from: "zip", to: "any", inputPath: two, outputPath: join(dir, "two.out") })).rejects.toThrow(/exactly one file, not 2/);
    const truncated = join(dir, "truncated.xz");
    await sh(`xz -c ${raw} > ${truncated}.whole && head -c 100000 ${truncated}.whole > ${truncated}`);
    await expect(driver.convert({ from: "xz", to: "any", inputPath: truncated, outputPath: join(dir, "truncated.out") })).rejects.toThrow(/xz failed: .+/);
    expect(existsSync(join(dir, "two.out")) || existsSync(join(dir, "truncated.out"))).toBe(false);
  });

  it("an abort midway rejects promptly and kills the decompressor", async () => {
    // 2 GiB of zeros: a small file that keeps zstd writing for seconds.
    const input = join(dir, "long.zst");
    await sh(`head -c 2G /dev/zero | zstd -q -1 > ${input}`);
    const outputPath = join(dir, "long.out");
    const before = await descendants();
    const controller = new AbortController();
    const job = driver.convert({ from: "zstd", to: "any", inputPath: input, outputPath, signal: controller.signal });
    await new Promise((resolve) => setTimeout(resolve, 150));
    const started = Date.now();
    controller.abort(new Error("cancelled by the test"));
    await expect(job).rejects.toThrow();
    expect(Date.now() - started).toBeLessThan(1500);
    expect(existsSync(outputPath)).toBe(false);
    const children = (await descendants()).filter((p) => !before.some((b) => b.pid === p.pid));
    expect(await stillRunning(children)).toEqual([]);
  });
});
