/**
 * The inspector's fuzz target, run as a process of its own (node, on JavaScript transpiled by
 * inspector.fuzz.test.ts): argv is SEEDS_DIR OUT_DIR SECONDS RANDOM_SEED. An input fails when
 * the inspector throws, answers differently for different chunk sizes, breaks its memory bound
 * or reports an impossible size. Each failing input is written to OUT_DIR as hex; the last
 * line of stdout is the run's summary as JSON.
 */
import * as fs from "node:fs/promises";
import * as path from "node:path";
import { ImageInspector, INSPECTED_FORMATS, MAX_RETAINED_BYTES, type InspectionReport } from "../../src/inspect/index.js";
import { fuzz } from "./coverage-fuzzer.js";

/** Inspects `input` in `chunkSize` pieces and checks the invariants every verdict must keep. */
function inspect(input: Uint8Array, chunkSize: number): InspectionReport {
  const inspector = new ImageInspector();
  for (let at = 0; at < input.length; at += chunkSize) {
    inspector.write(input.subarray(at, at + chunkSize));
    if (inspector.retainedBytes > MAX_RETAINED_BYTES) throw new Error(`retained ${inspector.retainedBytes} bytes`);
  }
  const report = inspector.finish();
  if (!INSPECTED_FORMATS.includes(report.format)) throw new Error(`unknown format ${report.format}`);
  if (report.size !== input.length) throw new Error("size differs from the input's");
  if (report.virtualSize !== undefined && (!Number.isSafeInteger(report.virtualSize) || report.virtualSize < 0)) {
    throw new Error(`impossible virtual size ${report.virtualSize}`);
  }
  return report;
}

let chunkChoice = 0;
function target(input: Uint8Array): void {
  const whole = JSON.stringify(inspect(input, Math.max(input.length, 1)));
  // Tiny chunks only for small inputs: 17-byte pieces of megabytes would cost the run most of its time.
  const sizes = input.length <= 64 * 1024 ? [17, 512, 4093] : [4093, 65536, 333_333];
  const chunkSize = sizes[chunkChoice++ % sizes.length]!;
  const chunked = JSON.stringify(inspect(input, chunkSize));
  if (whole !== chunked) throw new Error(`the verdict depends on the chunk size (${chunkSize}): ${whole} vs ${chunked}`);
}

const [seedsDir, outDir, seconds, randomSeed] = process.argv.slice(2);
const seeds = await Promise.all((await fs.readdir(seedsDir!)).sort().map((name) => fs.readFile(path.join(seedsDir!, name))));
const result = await fuzz({
  seeds,
  target,
  seconds: Number(seconds),
  coverageOf: "/src/inspect/",
  maxInputBytes: Math.max(...seeds.map((s) => s.length)),
  dictionary: ["QFI\xfb", "KDMV", "# Disk DescriptorFile\n", 'createType="monolithicSparse"\n', 'RW 8 FLAT "/etc/passwd" 0\n', 'parentFileNameHint="x"\n',
    "conectix", "cxsparse", "vhdxfile", "head", "regi", "metadata", "<<< ", "\x7f\x10\xda\xbe", "QED\0", "LUKS\xba\xbe\0\x02", "CD001", "\x01CD001\x01", "EFI PART", "\x55\xaa"],
  randomSeed: Number(randomSeed),
});
const failures: string[] = [];
for (const [i, crash] of result.crashes.entries()) {
  const file = path.join(outDir!, `crash-${i}.hex`);
  await fs.writeFile(file, Buffer.from(crash.input).toString("hex"));
  const error = crash.error as Error;
  failures.push(`${file}: ${error.message ?? String(crash.error)} ${(error.cause as Error | undefined)?.stack ?? ""}`);
}
console.log(JSON.stringify({ executions: result.executions, queue: result.queue, features: result.features, failures }));
