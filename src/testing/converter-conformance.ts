/**
 * The converter conformance suite: vitest suites that hold a converter plugin to the
 * contract in plugin-api.ts with real images made by qemu-img, outputs checked by the host's
 * inspector and `qemu-img compare`. A plugin author calls {@link runConverterConformance}
 * from a test file of their own. Needs qemu-img (Debian: qemu-utils) and Linux (/proc).
 */
import { existsSync } from "node:fs";
import * as fs from "node:fs/promises";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { apiVersionProblem } from "../plugins/loader.js";
import { PLUGIN_API_VERSION, type ConverterDriver, type ConverterPluginDefinition, type FormatName } from "../plugins/plugin-api.js";
import { BUILDABLE_FORMATS, buildImage, compareImages, inspectOutput, virtualSizeOf } from "./disk-images.js";
import { descendants, stillRunning, type ProcessId } from "./processes.js";
import { registerForTest } from "./register.js";
import { ABORT_DEADLINE_MS } from "./store-conformance.js";

export interface Conversion {
  from: FormatName;
  to: FormatName;
}

export interface ConverterConformanceOptions {
  /** The suite's title. */
  name: string;
  /** The plugin entry module's default export. */
  plugin: ConverterPluginDefinition;
  /**
   * The pairs to test; default every pair the converter advertises. The suite builds
   * raw, qcow2, vmdk, vhd, vhdx, vdi and iso sources; other formats need their own tests.
   */
  conversions?: Conversion[];
  /** The disk size of the test images, a multiple of 1 MiB; default 4 MiB. */
  imageBytes?: number;
  /**
   * The disk size of the image whose conversion is aborted midway: large enough that the
   * conversion is still running when the abort comes. Default 256 MiB, all random data.
   */
  cancelImageBytes?: number;
  /** The pair converted and aborted; default the first tested pair between two formats. */
  cancelConversion?: Conversion;
}

const MiB = 1024 * 1024;

/**
 * Declares the conformance suites for one converter plugin: every (from, to) pair converted
 * and verified, progress, cancellation, and describe() and findHoles() when the converter has them.
 */
export function runConverterConformance(options: ConverterConformanceOptions): void {
  const imageBytes = options.imageBytes ?? 4 * MiB;
  const cancelImageBytes = options.cancelImageBytes ?? 256 * MiB;
  for (const size of [imageBytes, cancelImageBytes]) {
    if (!Number.isSafeInteger(size) || size <= 0 || size % MiB !== 0) throw new Error(`image sizes must be whole MiB, not ${size}`);
  }

  // Async: the pairs to test are those the plugin registers.
  describe(`converter conformance: ${options.name}`, async () => {
    const driver = await registerConverterDriver(options.plugin);
    const conversions = options.conversions ?? driver.conversions;
    for (const { from, to } of conversions) {
      if (!driver.conversions.some((c) => c.from === from && c.to === to)) throw new Error(`the converter does not advertise ${from} -> ${to}`);
      for (const format of [from, to]) {
        if (!BUILDABLE_FORMATS.includes(format)) throw new Error(`the suite cannot build or compare ${format} images; leave ${from} -> ${to} out of "conversions"`);
      }
    }
    if (conversions.length === 0) throw new Error("no conversions to test");
    const cancelConversion = options.cancelConversion ?? conversions.find((c) => c.from !== c.to) ?? conversions[0]!;

    let work: string;
    /** The source image of each format, built once; conversions get a copy, which they may move. */
    const sources = new Map<FormatName, string>();
    let jobNumber = 0;

    beforeAll(async () => {
      work = await fs.mkdtemp(path.join(tmpdir(), "itx-converter-conformance-"));
      for (const format of new Set(conversions.map((c) => c.from))) {
        const file = path.join(work, `source.${format}`);
        await buildImage(file, format, imageBytes, 0.5);
        sources.set(format, file);
      }
    }, 120_000);

    afterAll(async () => {
      if (work !== undefined) await fs.rm(work, { recursive: true, force: true });
    });

    /** A fresh folder with a copy of the `from` source as input and a path for the output. */
    async function newJob(from: FormatName, to: FormatName, source = sources.get(from)!) {
      const dir = path.join(work, `job-${++jobNumber}`);
      await fs.mkdir(path.join(dir, "out"), { recursive: true });
      const inputPath = path.join(dir, `input.${from}`);
      await fs.copyFile(source, inputPath);
      return { from, to, inputPath, outputPath: path.join(dir, "out", `output.${to}`), outDir: path.join(dir, "out") };
    }

    /** The output is `to` to the host's inspector, holds the source's disk, and stands alone in its folder. */
    async function expectFaithful(source: string, job: { from: FormatName; to: FormatName; outputPath: string; outDir: string }) {
      expect(await fs.readdir(job.outDir), "the output folder holds the output alone").toEqual([path.basename(job.outputPath)]);
      const { report, refusal } = await inspectOutput(job.outputPath, job.to);
      expect(refusal, "the host's inspector refuses the output").toBeUndefined();
      expect(report.virtualSize ?? report.size, "the output's disk size").toBe(await virtualSizeOf(source, job.from));
      expect(await compareImages(source, job.from, job.outputPath, job.to), "qemu-img compare of source and output").toBeUndefined();
    }

    describe("registration", () => {
      it("targets a plugin API this host loads and advertises well-formed pairs", () => {
        expect(apiVersionProblem(options.plugin.apiVersion, PLUGIN_API_VERSION)).toBeUndefined();
        expect(driver.conversions.length).toBeGreaterThan(0);
        for (const { from, to } of driver.conversions) {
          expect(from, "format names are lower case").toMatch(/^[a-z0-9]+$/);
          expect(to, "format names are lower case").toMatch(/^[a-z0-9]+$/);
        }
      });
    });

    describe("conversions", () => {
      it.each(conversions.map((c) => [`${c.from} -> ${c.to}`, c] as const))("converts %s faithfully, with sane progress", async (_title, { from, to }) => {
        const job = await newJob(from, to);
        const progress: Array<[number, number]> = [];
        await driver.convert({ ...job, onProgress: (done, total) => void progress.push([done, total]) });
        await expectFaithful(sources.get(from)!, job);
        expectSaneProgress(progress);
      });
    });

    if (driver.describe) {
      const describeImage = driver.describe.bind(driver);
      describe("describe()", () => {
        it.each([...new Set(conversions.map((c) => c.from))])("reads the disk size of a %s image", async (format) => {
          const description = await describeImage(sources.get(format)!, format);
          expect(description.virtualSize).toBe(await virtualSizeOf(sources.get(format)!, format));
          expect(description.backingFile).toBeUndefined();
          expect(description.dataFile).toBeUndefined();
          expect(description.externalFiles ?? []).toEqual([]);
        });
      });
    }

    if (driver.findHoles) {
      const findHoles = driver.findHoles.bind(driver);
      describe("findHoles()", () => {
        it("finds a sparse file's holes and never calls data a hole", async () => {
          // 1 MiB of data, a 3 MiB hole, 64 KiB of data, a 2 MiB hole to the end.
          const file = path.join(work, "sparse");
          const handle = await fs.open(file, "w");
          await handle.write(Buffer.alloc(MiB, 0xa5), 0, MiB, 0);
          await handle.write(Buffer.alloc(64 * 1024, 0x5a), 0, 64 * 1024, 4 * MiB);
          await handle.truncate(4 * MiB + 64 * 1024 + 2 * MiB);
          await handle.close();
          const holes = await findHoles(file);
          const found = (from: number, to: number) => holes.some((h) => h.offset <= from && h.offset + h.length >= to);
          expect(found(MiB, 4 * MiB), "the 3 MiB hole").toBe(true);
          expect(found(4 * MiB + 64 * 1024, 6 * MiB + 64 * 1024), "the hole at the end").toBe(true);
          const data = [[0, MiB], [4 * MiB, 4 * MiB + 64 * 1024]] as const;
          for (const hole of holes) {
            for (const [start, end] of data) expect(hole.offset >= end || hole.offset + hole.length <= start, `${JSON.stringify(hole)} covers data`).toBe(true);
          }
        });

        it("finds none in a file without holes", async () => {
          const file = path.join(work, "dense");
          await fs.writeFile(file, Buffer.alloc(2 * MiB, 1));
          expect(await findHoles(file)).toEqual([]);
        });
      });
    }

    describe(`cancellation (${cancelConversion.from} -> ${cancelConversion.to})`, () => {
      it("an already aborted job rejects, writes no output and leaves no process", async () => {
        const job = await newJob(cancelConversion.from, cancelConversion.to);
        const before = await descendants();
        await expect(driver.convert({ ...job, signal: AbortSignal.abort(new Error("cancelled by the conformance suite")) })).rejects.toThrow();
        expect(existsSync(job.outputPath), "an output file was left").toBe(false);
        expect(await fs.readdir(job.outDir)).toEqual([]);
        expect(await runningAfterGrace(await newProcesses(before))).toEqual([]);
      });

      it(`a job aborted midway rejects within ${ABORT_DEADLINE_MS} ms, kills its processes and leaves no output`, async (ctx) => {
        const { from, to } = cancelConversion;
        const large = path.join(work, `large.${from}`);
        await buildImage(large, from, cancelImageBytes, 1);
        const job = await newJob(from, to, large);
        const before = await descendants();
        const controller = new AbortController();
        let aborting = false;
        let abortedAt: number | undefined;
        let workDone = false;
        let settled = false;
        let spawned: ProcessId[] = [];
        const abort = async (done: boolean) => {
          if (aborting) return;
          aborting = true;
          // Which processes the job runs right now: each must be gone once it has rejected.
          spawned = await newProcesses(before);
          if (settled) return;
          workDone = done;
          abortedAt = performance.now();
          controller.abort(new Error("cancelled by the conformance suite"));
        };
        // Abort at the first progress report, or after 50 ms for converters that report none.
        const timer = setTimeout(() => void abort(false), 50);
        const converting = driver
          .convert({ ...job, signal: controller.signal, onProgress: (done, total) => void abort(done >= total) })
          .then(
            () => "resolved" as const,
            () => "rejected" as const,
          )
          .finally(() => (settled = true));
        const outcome = await converting;
        const settledAt = performance.now();
        clearTimeout(timer);

        if (outcome === "resolved" && (abortedAt === undefined || workDone)) {
          // The abort came after all the work was done (or never came): the output must be whole.
          ctx.annotate(abortedAt === undefined ? "finished before the abort" : "aborted after the last progress report");
          await expectFaithful(large, job);
        } else {
          expect(outcome, "a conversion aborted while running must reject").toBe("rejected");
          expect(settledAt - abortedAt!, "milliseconds from abort to rejection").toBeLessThan(ABORT_DEADLINE_MS);
          ctx.annotate(`rejected ${Math.round(settledAt - abortedAt!)} ms after the abort; ${spawned.length} process(es) were running`);
          expect(existsSync(job.outputPath), "an output file was left").toBe(false);
          expect(await fs.readdir(job.outDir), "files left beside the output").toEqual([]);
        }
        expect(await runningAfterGrace(spawned), "processes the job ran are still running").toEqual([]);
        expect(await runningAfterGrace(await newProcesses(before)), "new processes are still running").toEqual([]);
        await fs.rm(large, { force: true });
      }, 120_000);
    });
  });
}

/** Registers the plugin as the host would and returns its one converter driver. */
async function registerConverterDriver(plugin: ConverterPluginDefinition): Promise<ConverterDriver> {
  if (plugin?.kind !== "converter") throw new Error(`not a converter plugin definition (kind ${String(plugin?.kind)})`);
  const { stores, converters } = await registerForTest(plugin);
  if (stores.length !== 0 || converters.length !== 1) {
    throw new Error(`a converter plugin registers exactly one converter driver; this one registered ${converters.length} converters and ${stores.length} stores`);
  }
  return converters[0]!;
}

/** Progress reports: at least one, whole and finite, done never decreasing nor above total, ending done. */
function expectSaneProgress(progress: Array<[number, number]>): void {
  expect(progress.length, "no progress was reported").toBeGreaterThan(0);
  let previous = 0;
  for (const [done, total] of progress) {
    expect(Number.isFinite(done) && Number.isFinite(total), `progress (${done}, ${total})`).toBe(true);
    expect(total, "progress total").toBeGreaterThan(0);
    expect(done, "progress done").toBeGreaterThanOrEqual(previous);
    expect(done, "progress done").toBeLessThanOrEqual(total);
    previous = done;
  }
  const [done, total] = progress.at(-1)!;
  expect(done, "the last progress report is complete").toBe(total);
}

/** This process's descendants that were not among `before`. */
async function newProcesses(before: readonly ProcessId[]): Promise<ProcessId[]> {
  const known = new Set(before.map((p) => `${p.pid}/${p.startTime}`));
  return (await descendants()).filter((p) => !known.has(`${p.pid}/${p.startTime}`));
}

/** Those of `processes` still running after up to the abort deadline, allowed for them to exit. */
async function runningAfterGrace(processes: readonly ProcessId[]): Promise<ProcessId[]> {
  const deadline = performance.now() + ABORT_DEADLINE_MS;
  for (;;) {
    const running = await stillRunning(processes);
    if (running.length === 0 || performance.now() > deadline) return running;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}
