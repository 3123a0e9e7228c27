/**
 * The built-in qemu-img converter: converts between raw, qcow2, vmdk, vhd, vhdx (and reads
 * vdi and iso) by running `qemu-img convert`, describes images with `qemu-img info`, and
 * finds a file's holes with `qemu-img map`.
 * qemu-img comes from Debian's qemu-utils package.
 *
 * qemu-img always runs from an argument array (never a shell), is always told the format
 * (`-f`; it never probes), and gets absolute paths, so a file name can neither be taken for an
 * option ("-x") nor for a protocol or JSON spec ("nbd:...", "json:{...}").
 *
 * Format names map to qemu's: vhd is "vpc", iso is read as "raw", the rest keep their names.
 * Exports: vhd is written dynamic with `force_size=on` (the footer's size is exactly the
 * virtual size instead of a CHS-rounded one), vmdk is written streamOptimized (the
 * compressed, single-file variant that VMware and OVF tooling import).
 *
 * Progress: `qemu-img convert -p` prints "(NN.NN/100%)"; job.onProgress gets
 * (percent, 100), so its units are percent, not bytes, ending with (100, 100).
 *
 * Cache mode: the default (qemu-img convert writes through the page cache and does not
 * flush). `-t none` (O_DIRECT) was measured on a 1 GiB image (768 MiB random) on ext4: the
 * conversion itself took the same time within noise (0.4-0.6 s either way, including a sync),
 * but reading the result back afterwards (which the host does next, to hash and store it)
 * was 15-30% slower, because O_DIRECT left nothing in the page cache. So no `-t none`.
 */
import { execFile, spawn } from "node:child_process";
import * as fs from "node:fs/promises";
import * as path from "node:path";
import { promisify } from "node:util";
import {
  defineConverterPlugin,
  type CallOptions,
  type ConversionJob,
  type FileRange,
  type FormatName,
  type ImageDescription,
  type RegistrationContext,
} from "../../src/plugins/plugin-api.js";

const QEMU_IMG = "qemu-img";

/** Our format names and qemu-img's. */
const QEMU_FORMAT = new Map<FormatName, string>([
  ["raw", "raw"],
  ["qcow2", "qcow2"],
  ["vmdk", "vmdk"],
  ["vhd", "vpc"],
  ["vhdx", "vhdx"],
  ["vdi", "vdi"],
  ["iso", "raw"],
]);

/** Creation options (`-o`) per target format. */
const EXPORT_OPTIONS = new Map<FormatName, string>([
  ["vhd", "subformat=dynamic,force_size=on"],
  ["vmdk", "subformat=streamOptimized"],
]);

const SOURCES: FormatName[] = ["raw", "qcow2", "vmdk", "vhd", "vhdx", "vdi"];
const TARGETS: FormatName[] = ["raw", "qcow2", "vmdk", "vhd", "vhdx"];

/** Every (from, to) with from != to; same-format pairs belong to the passthrough converter. */
const CONVERSIONS = [
  ...SOURCES.flatMap((from) => TARGETS.filter((to) => to !== from).map((to) => ({ from, to }))),
  { from: "iso", to: "raw" },
];

/** How much of qemu-img's stderr is kept while it runs, and how much an error message quotes. */
const STDERR_KEEP = 8192;
const STDERR_QUOTE = 500;
/** The most `qemu-img info` JSON we accept. */
const MAX_INFO_BYTES = 4 * 1024 * 1024;

export default defineConverterPlugin({
  conversions: CONVERSIONS,
  setup,
  convert,
  describe,
  measure,
  findHoles,
});

async function setup(context: RegistrationContext): Promise<void> {
  let version: string;
  try {
    const { stdout } = await promisify(execFile)(QEMU_IMG, ["--version"], { timeout: 10_000 });
    version = stdout.split("\n", 1)[0]!.trim();
  } catch (err) {
    throw new Error("qemu-img not found: install Debian's qemu-utils", { cause: err });
  }
  context.logger.info("using qemu-img", { version });
}

async function convert(job: ConversionJob): Promise<void> {
  const { from, to, signal } = job;
  try {
    if (!CONVERSIONS.some((c) => c.from === from && c.to === to)) {
      throw new Error(`the qemu-img converter cannot convert ${from} to ${to}`);
    }
    const options = EXPORT_OPTIONS.get(to);
    const args = [
      "convert",
      "-p",
      "-f",
      QEMU_FORMAT.get(from)!,
      "-O",
      QEMU_FORMAT.get(to)!,
      ...(options === undefined ? [] : ["-o", options]),
      path.resolve(job.inputPath),
      path.resolve(job.outputPath),
    ];
    let reported = -1;
    const report = (percent: number) => {
      if (percent <= reported) return;
      reported = percent;
      try {
        job.onProgress?.(percent, 100);
      } catch {
        // A failing progress callback must not break the conversion (nor crash the process).
      }
    };
    await runQemuImg("convert", args, { signal, onStdout: progressParser(report), limits: CONVERT_LIMITS });
    report(100);
  } catch (err) {
    await fs.rm(job.outputPath, { force: true }).catch(() => {});
    throw err;
  }
}

async function describe(file: string, format: FormatName, options?: CallOptions): Promise<ImageDescription> {
  const qemuFormat = QEMU_FORMAT.get(format);
  if (qemuFormat === undefined) throw new Error(`the qemu-img converter cannot describe ${format} images`);
  const stdout = await runQemuImg("info", ["info", "--output=json", "-f", qemuFormat, path.resolve(file)], {
    signal: options?.signal,
    collectStdout: true,
    limits: HEADER_LIMITS,
  });
  let info: QemuImgInfo;
  try {
    info = JSON.parse(stdout) as QemuImgInfo;
  } catch (err) {
    throw new Error("qemu-img info printed something other than JSON", { cause: err });
  }
  const virtualSize = info["virtual-size"];
  if (typeof virtualSize !== "number" || !Number.isSafeInteger(virtualSize) || virtualSize < 0) {
    throw new Error(`qemu-img info reported no usable virtual size (${String(virtualSize)})`);
  }
  const description: ImageDescription = { virtualSize };
  const backingFile = info["backing-filename"] ?? info["full-backing-filename"];
  if (typeof backingFile === "string" && backingFile !== "") description.backingFile = backingFile;
  const dataFile = info["format-specific"]?.data?.["data-file"];
  if (typeof dataFile === "string" && dataFile !== "") description.dataFile = dataFile;
  // A VMDK's extents may name any file on the host (a descriptor pointing at /etc/shadow);
  // only the image file itself is allowed.
  const self = path.resolve(file);
  const extents = info["format-specific"]?.data?.extents ?? [];
  const external = extents
    .map((extent) => extent.filename)
    .filter((name): name is string => typeof name === "string" && path.resolve(path.dirname(self), name) !== self);
  if (external.length > 0) description.externalFiles = external;
  return description;
}

/** Output formats `qemu-img measure` can size. */
const MEASURABLE = new Set<FormatName>(["raw", "qcow2"]);

/** `qemu-img measure`: the bytes a conversion will write, so a too-large result is refused before any work. */
async function measure(file: string, from: FormatName, to: FormatName, options?: CallOptions): Promise<number | undefined> {
  const qemuFrom = QEMU_FORMAT.get(from);
  if (qemuFrom === undefined || !MEASURABLE.has(to)) return undefined;
  const stdout = await runQemuImg("measure", ["measure", "--output=json", "-f", qemuFrom, "-O", to, path.resolve(file)], {
    signal: options?.signal,
    collectStdout: true,
    limits: HEADER_LIMITS,
  });
  const required = (JSON.parse(stdout) as { required?: unknown }).required;
  return typeof required === "number" && Number.isSafeInteger(required) ? required : undefined;
}

/**
 * `qemu-img map` of the file read as raw: the extents that are zero and hold no data are the
 * file system's holes (qemu asks it with SEEK_DATA/SEEK_HOLE), whatever format the file is in.
 */
async function findHoles(file: string, options?: CallOptions): Promise<FileRange[]> {
  const stdout = await runQemuImg("map", ["map", "--output=json", "-f", "raw", path.resolve(file)], {
    signal: options?.signal,
    collectStdout: true,
    limits: HEADER_LIMITS,
  });
  const holes: FileRange[] = [];
  for (const extent of JSON.parse(stdout) as QemuImgExtent[]) {
    if (extent.data !== false || extent.zero !== true) continue;
    const last = holes.at(-1);
    if (last && last.offset + last.length === extent.start) last.length += extent.length;
    else holes.push({ offset: extent.start, length: extent.length });
  }
  return holes;
}

/** One entry of `qemu-img map --output=json`. */
interface QemuImgExtent {
  start: number;
  length: number;
  data: boolean;
  zero: boolean;
}

/** The parts of `qemu-img info --output=json` we read. */
interface QemuImgInfo {
  "virtual-size"?: unknown;
  "backing-filename"?: unknown;
  "full-backing-filename"?: unknown;
  "format-specific"?: { data?: { "data-file"?: unknown; extents?: Array<{ filename?: unknown }> } };
}

/** Resource limits qemu-img runs under, through prlimit. */
interface Limits {
  cpuSeconds?: number;
  addressSpaceBytes?: number;
  /** RLIMIT_DATA: heap and writable private mappings, i.e. memory actually used (not reserved). */
  dataBytes?: number;
}

/**
 * info and measure: 30 s of CPU and 1 GiB of address space. Parsing a hostile header must
 * not be able to exhaust the host, as OpenStack limits its qemu-img info too.
 */
const HEADER_LIMITS: Limits = { cpuSeconds: 30, addressSpaceBytes: 1024 ** 3 };
/**
 * convert: 1 GiB of data memory (it needs tens of MiB). No CPU limit: its CPU time grows with
 * the disk, and the task's wall-clock limit bounds it. No address-space limit either: glibc's
 * per-thread arenas reserve address space by the core count (a 1 GiB cap broke vmdk output here).
 */
const CONVERT_LIMITS: Limits = { dataBytes: 1024 ** 3 };

interface RunOptions {
  signal?: AbortSignal;
  limits?: Limits;
  onStdout?(chunk: string): void;
  collectStdout?: boolean;
}

/**
 * Runs qemu-img with `args` and resolves with its stdout (when collected) once it exits 0.
 * Aborting `signal` SIGKILLs it and rejects with an AbortError once it has exited; a non-zero
 * exit rejects with "qemu-img SUBCOMMAND failed: " and the end of its stderr.
 */
function runQemuImg(subcommand: string, args: string[], options: RunOptions): Promise<string> {
  const { signal } = options;
  return new Promise<string>((resolve, reject) => {
    if (signal?.aborted) {
      reject(abortError(signal));
      return;
    }
    const failed = (detail: string) => new Error(`qemu-img ${subcommand} failed: ${detail}`);
    const { limits } = options;
    const [command, commandArgs] = limits
      ? [
          "prlimit",
          [
            ...(limits.cpuSeconds ? [`--cpu=${limits.cpuSeconds}`] : []),
            ...(limits.addressSpaceBytes ? [`--as=${limits.addressSpaceBytes}`] : []),
            ...(limits.dataBytes ? [`--data=${limits.dataBytes}`] : []),
            "--",
            QEMU_IMG,
            ...args,
          ],
        ]
      : [QEMU_IMG, args];
    const child = spawn(command, commandArgs, { stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    let tooMuchOutput = false;
    let aborted = false;
    let settled = false;

    const onAbort = () => {
      aborted = true;
      child.kill("SIGKILL");
    };
    const settle = (error: Error | undefined) => {
      if (settled) return;
      settled = true;
      signal?.removeEventListener("abort", onAbort);
      if (error) reject(error);
      else resolve(stdout);
    };
    signal?.addEventListener("abort", onAbort, { once: true });

    child.stdout.setEncoding("utf8");
    child.stderr.setEncoding("utf8");
    child.stdout.on("data", (chunk: string) => {
      options.onStdout?.(chunk);
      if (!options.collectStdout || tooMuchOutput) return;
      stdout += chunk;
      if (stdout.length > MAX_INFO_BYTES) {
        tooMuchOutput = true;
        child.kill("SIGKILL");
      }
    });
    child.stderr.on("data", (chunk: string) => {
      stderr = (stderr + chunk).slice(-STDERR_KEEP);
    });
    child.on("error", (err) => {
      // Spawning failed (no process to wait for); errors of a running child end in "close".
      if (child.pid === undefined) settle(failed(err.message));
    });
    child.once("close", (code, signalName) => {
      if (aborted && signal) return settle(abortError(signal));
      if (tooMuchOutput) return settle(failed(`it printed more than ${MAX_INFO_BYTES} bytes`));
      if (code === 0) return settle(undefined);
      const tail = stderrTail(stderr);
      if (tail !== "") return settle(failed(tail));
      settle(failed(signalName ? `killed by ${signalName}` : `exit code ${String(code)}`));
    });
  });
}

/** Parses `qemu-img -p` output ("    (12.50/100%)\r" ...) and reports each percentage. */
function progressParser(report: (percent: number) => void): (chunk: string) => void {
  let pending = "";
  return (chunk) => {
    pending += chunk;
    const pieces = pending.split(/[\r\n]/);
    pending = pieces.pop()!.slice(-256);
    for (const piece of pieces) {
      const match = /\((\d{1,3}(?:\.\d+)?)\/100%\)/.exec(piece);
      if (match) report(Math.min(100, Number(match[1])));
    }
  };
}

/** The last lines of `stderr`, trimmed, at most STDERR_QUOTE characters. */
function stderrTail(stderr: string): string {
  const lines = stderr
    .split(/\r?\n/)
    .map((line) => line.trim())
    .filter((line) => line !== "");
  let tail = "";
  for (let i = lines.length - 1; i >= 0; i--) {
    const line = lines[i]!;
    const longer = tail === "" ? line : `${line}\n${tail}`;
    if (longer.length > STDERR_QUOTE) {
      if (tail === "") tail = `...${line.slice(-(STDERR_QUOTE - 3))}`;
      break;
    }
    tail = longer;
  }
  return tail;
}

/** The error for an aborted call, shaped like Node's own AbortError (the signal's reason is its cause). */
function abortError(signal: AbortSignal): Error {
  const err = new Error("The operation was aborted", { cause: signal.reason });
  err.name = "AbortError";
  return Object.assign(err, { code: "ABORT_ERR" });
}
