/**
 * The decompression converter: turns a gzip, xz (or legacy lzma), zstd or single-entry zip
 * upload into the image inside it, before the host inspects it. It advertises each
 * compression as `{ from: "gzip", to: "any" }`: "any" because the output's format is
 * whatever was compressed, which the host's inspector then finds out.
 *
 * Written only against "imagetransfer/plugin-api", as a third party would write it. gzip
 * uses Node's zlib; Node 20 has no xz or zstd, so those run `xz`, `zstd` and `unzip` (Debian:
 * xz-utils, zstd, unzip) as child processes, streaming through pipes. Output bytes are
 * counted as they are written: past the job's maxOutputBytes (a decompression bomb) the work
 * stops at once, the output is removed and the job rejects with code OUTPUT_TOO_LARGE.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { createReadStream, createWriteStream, type ReadStream } from "node:fs";
import * as fs from "node:fs/promises";
import { Transform, type Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { createGunzip } from "node:zlib";
import { defineConverterPlugin, type ConversionJob } from "imagetransfer/plugin-api";

const TOOLS: Record<string, string> = { xz: "xz", zstd: "zstd", zip: "unzip" };

export default defineConverterPlugin({
  conversions: ["gzip", "xz", "zstd", "zip"].map((from) => ({ from, to: "any" })),
  async setup() {
    for (const tool of Object.values(TOOLS)) await run(tool, ["-h"]).catch(() => {
      throw new Error(`the decompression converter needs the "${tool}" command (Debian: xz-utils, zstd, unzip)`);
    });
  },
  convert,
});

async function convert(job: ConversionJob): Promise<void> {
  const { signal } = job;
  const children: ChildProcess[] = [];
  let input: ReadStream | undefined;
  try {
    signal?.throwIfAborted();
    const { size } = await fs.stat(job.inputPath);
    let read = 0;
    // Progress counts compressed bytes read, the only total known up front.
    input = createReadStream(job.inputPath).on("data", (chunk) => report(job, (read += chunk.length), size));
    let decompressed: Readable;
    if (job.from === "gzip") {
      decompressed = input.pipe(createGunzip());
    } else if (job.from === "xz" || job.from === "zstd") {
      const child = start(TOOLS[job.from]!, ["-dc"], children);
      input.pipe(child.stdin!);
      child.stdin!.on("error", () => {}); // the exit status tells why it stopped reading
      decompressed = child.stdout!;
    } else if (job.from === "zip") {
      input.destroy();
      const entries = (await run("unzip", ["-Z1", job.inputPath], signal)).split("\n").filter((name) => name !== "" && !name.endsWith("/"));
      if (entries.length !== 1) throw new Error(`a zip upload must hold exactly one file, not ${entries.length}`);
      // No stdin: an encrypted entry fails instead of waiting for a password.
      decompressed = start("unzip", ["-p", job.inputPath, entries[0]!], children, "ignore").stdout!;
    } else {
      throw new Error(`the decompression converter cannot convert ${job.from} to ${job.to}`);
    }
    input.on("error", (err) => decompressed.destroy(err));
    const processes = children.map(exited);
    for (const p of processes) p.catch(() => {}); // awaited below, after the copy's own error
    await pipeline(decompressed, capped(job.maxOutputBytes), createWriteStream(job.outputPath), { signal });
    await Promise.all(processes);
    report(job, size, size);
  } catch (err) {
    input?.destroy();
    for (const child of children) child.kill("SIGKILL");
    await Promise.all(children.map((child) => exited(child).catch(() => {})));
    await fs.rm(job.outputPath, { force: true });
    throw err;
  }
}

/** Passes bytes through until more than `limit` have gone by, then fails with OUTPUT_TOO_LARGE. */
function capped(limit = Infinity): Transform {
  let total = 0;
  return new Transform({
    transform(chunk: Buffer, _encoding, done) {
      total += chunk.length;
      if (total <= limit) return done(null, chunk);
      done(Object.assign(new Error(`the decompressed image is larger than the limit of ${limit} bytes`), { code: "OUTPUT_TOO_LARGE" }));
    },
  });
}

function report(job: ConversionJob, done: number, total: number): void {
  try {
    job.onProgress?.(done, total);
  } catch {
    // A failing progress callback does not fail the conversion.
  }
}

function start(command: string, args: string[], children: ChildProcess[], stdin: "pipe" | "ignore" = "pipe"): ChildProcess {
  const child = spawn(command, args, { stdio: [stdin, "pipe", "pipe"] });
  children.push(child);
  return child;
}

/** Resolves when the process exits 0; rejects with the last line it wrote to stderr otherwise. */
function exited(child: ChildProcess): Promise<void> {
  let stderr = "";
  child.stderr?.on("data", (chunk: Buffer) => void (stderr = (stderr + chunk.toString()).slice(-2000)));
  return new Promise((resolve, reject) => {
    if (child.exitCode !== null || child.signalCode !== null) return child.exitCode === 0 ? resolve() : reject(new Error(`${child.spawnfile} stopped`));
    child.on("error", reject);
    child.on("close", (code, signal) => {
      if (code === 0) return resolve();
      const last = stderr.trim().split("\n").at(-1);
      reject(new Error(`${child.spawnfile} failed: ${last || `exit ${code ?? signal}`}`));
    });
  });
}

/** Runs a command to its end and returns what it printed. */
async function run(command: string, args: string[], signal?: AbortSignal): Promise<string> {
  const child = spawn(command, args, { stdio: ["ignore", "pipe", "pipe"], signal });
  let stdout = "";
  child.stdout!.on("data", (chunk: Buffer) => void (stdout += chunk.toString()));
  await exited(child);
  return stdout;
}
