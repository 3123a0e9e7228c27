#!/usr/bin/env node
/**
 * Benchmark B7 (issue 8, optional): B1's image through OpenStack Glance, Debian 12's glance-api
 * (Zed), with the interoperable image import: create the image, stage its data (glance-direct),
 * import it with the image_conversion plugin converting to raw, until the image is `active`.
 *
 *   node bench/glance.mjs [--quick] [--json] [--runs N] [--size-mib M] [--[no-]install] [--tmp-dir DIR]
 *
 * Glance: scripts/glance.sh start (installs glance-api when missing, SQLite, no Keystone, file
 * store, all under /var/tmp/imagetransfer-glance); stopped at the end when this run started it.
 * A full run installs glance-api when it is missing (about 4 minutes); --quick does not
 * (--install makes it), so that the quick suite stays within its 5 minutes.
 * When Glance cannot be installed or started the result says "available": false with the
 * reason (also printed loudly on stderr) and the exit status is 0: B7 is optional.
 *
 * Setup (not timed): a raw disk of --size-mib (default 1024; --quick 256), first half random,
 * second half zeros, converted with `qemu-img convert -f raw -O qcow2`.
 *
 * Timed, N times alternating (default 3; --quick 2), medians with min/max:
 *   product   Glance: POST /v2/images (disk_format qcow2) -> PUT .../stage -> POST .../import
 *             (glance-direct) -> GET until `active`; time from the create to `active`, split into
 *             stage (create + PUT) and processing (import call -> active)
 *   baseline  the plain tools doing the same work: `qemu-img convert -f qcow2 -O raw` then the
 *             raw output hashed with Node's sha512 (1 MiB reads)
 * ratio = baseline / Glance (>= 1 would mean Glance is as fast as the plain tools). B1's target
 * "at least 4 x faster than Glance" is B1's product against this Glance median: the harness
 * (bench/all.mjs) puts the two side by side; this script has no target of its own.
 *
 * Memory: the sum of the glance-api processes' VmHWM (the parent and its workers) after the
 * runs, and the largest sum of their VmRSS sampled every 100 ms during the Glance runs.
 *
 * Checks: every image must end `active`, disk_format raw, its size the disk's virtual size and
 * its os_hash_value (sha512) equal to the baseline's sha512 of qemu-img's raw output.
 *
 * Exit status: 0 ran (or Glance unavailable); 1 a correctness problem; 2 the benchmark itself
 * failed; 130 interrupted.
 */
import { spawnSync } from "node:child_process";
import { createReadStream, mkdirSync, readFileSync, readdirSync, rmSync, statSync, statfsSync } from "node:fs";
import { mkdtemp } from "node:fs/promises";
import { request } from "node:http";
import { cpus, loadavg } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { BenchError, GiB, median, memoryOf, MiB, mib, parseBenchArgs, run, SAMPLE_MS, say, seconds, setWorkRoot, sha512File, sizeLabel, sleep, tmpDirOption, warmMemory, writeRawDisk } from "./common.mjs";

const repoRoot = resolve(fileURLToPath(new URL("..", import.meta.url)));
const glanceScript = join(repoRoot, "scripts/glance.sh");
const POLL_MS = 100;
const IMPORT_TIMEOUT_MS = 30 * 60_000;
/** The identity Keystone's middleware would pass on; scripts/glance.sh's pipeline trusts it (loopback only). */
const IDENTITY = { "x-identity-status": "Confirmed", "x-project-id": "imagetransfer-bench", "x-user-id": "imagetransfer-bench", "x-roles": "admin,member,reader" };

// ---------------------------------------------------------------------------------------------
// Arguments

/** The flags of the header comment. */
const parseArgs = () =>
  parseBenchArgs(import.meta.url, {
    json: { type: "boolean" },
    runs: { type: "count", default: 3, quick: 2 },
    "size-mib": { type: "count", default: 1024, quick: 256 },
    // Installing glance-api takes about 4 minutes on 2 cores: more than the whole quick run may.
    install: { type: "boolean", negatable: true, default: true, quick: false },
    "tmp-dir": tmpDirOption,
  });

// ---------------------------------------------------------------------------------------------
// Glance, through scripts/glance.sh

class GlanceUnavailable extends Error {}

let startedGlance = false;

/** Starts (or finds) the private glance-api; resolves to its URL and whether this run started it. */
async function startGlance(install) {
  if (process.platform !== "linux") throw new GlanceUnavailable("needs Linux (Debian's glance-api packages)");
  const running = spawnSync("bash", [glanceScript, "url"], { encoding: "utf8" });
  if (running.status === 0 && running.stdout.trim()) {
    say(`using the glance-api that is already running at ${running.stdout.trim()} (not stopped at the end; its VmHWM includes what it did before)`);
    return running.stdout.trim();
  }
  say(`starting glance-api (scripts/glance.sh start${install ? "; when missing it installs about 150 packages, about 4 minutes" : " --no-install"})`);
  let stdout;
  // Set before the start, so that an interrupted or failed start is cleaned up too: none ran before.
  startedGlance = true;
  try {
    ({ stdout } = await run("bash", [glanceScript, "start", ...(install ? [] : ["--no-install"])], { timeoutMs: 15 * 60_000 }));
  } catch (err) {
    if (!install && / exited with 3:/.test(err.message)) throw new GlanceUnavailable("glance-api is not installed and --quick does not install it (about 4 minutes): run `bash scripts/glance.sh install` once, or the full bench, or pass --install");
    throw new GlanceUnavailable(`scripts/glance.sh start failed: ${err.message}`);
  }
  const url = stdout.trim().split("\n").at(-1);
  if (!/^http:\/\/127\.0\.0\.1:\d+$/.test(url)) throw new GlanceUnavailable(`scripts/glance.sh start printed no URL: ${stdout.trim()}`);
  return url;
}

/** Stops glance-api when this run started it (the script stops only the PID it recorded). */
function stopGlance() {
  if (!startedGlance) return;
  startedGlance = false;
  const result = spawnSync("bash", [glanceScript, "stop"], { encoding: "utf8" });
  if (result.status !== 0) say(`warning: scripts/glance.sh stop exited with ${result.status}: ${result.stderr.trim()}`);
}
// Ctrl-C: common.mjs stops its children and exits; Glance is not one of them.
process.on("exit", stopGlance);
let signalled = false;
for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"]) process.on(signal, () => (signalled = true));

/** The glance-api processes (parent and workers; not the qemu-img they run). */
function glancePids() {
  const result = spawnSync("bash", [glanceScript, "pids"], { encoding: "utf8" });
  if (result.status !== 0) return [];
  return result.stdout.split(/\s+/).filter(Boolean).map(Number).filter((pid) => {
    try {
      return readFileSync(`/proc/${pid}/cmdline`, "utf8").includes("glance-api");
    } catch {
      return false;
    }
  });
}

function glanceVersion() {
  const result = spawnSync("dpkg-query", ["-W", "-f=${Version}", "glance-api"], { encoding: "utf8" });
  return result.status === 0 ? result.stdout.trim() : undefined;
}

/** Samples the sum of the glance-api processes' VmRSS every 100 ms until stopped. */
function sampleGlanceRss(pids) {
  let max = 0;
  const take = () => {
    let sum = 0;
    for (const pid of pids) sum += memoryOf(pid)?.rss ?? 0;
    max = Math.max(max, sum);
  };
  take();
  const timer = setInterval(take, SAMPLE_MS);
  return {
    stop() {
      clearInterval(timer);
      take();
      return max;
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Glance's image API (v2)

/** One HTTP request; the body is a Buffer, a file path to stream ({ file }) or nothing. */
function call(base, method, path, { json, file, headers = {} } = {}) {
  return new Promise((resolvePromise, reject) => {
    const url = new URL(path, base);
    const body = json !== undefined ? Buffer.from(JSON.stringify(json)) : undefined;
    const sendHeaders = { ...IDENTITY, ...headers };
    if (body) {
      sendHeaders["content-type"] = "application/json";
      sendHeaders["content-length"] = String(body.length);
    }
    if (file) {
      sendHeaders["content-type"] = "application/octet-stream";
      sendHeaders["content-length"] = String(statSync(file).size);
    }
    const req = request(url, { method, headers: sendHeaders }, (res) => {
      const chunks = [];
      res.on("data", (d) => chunks.push(d));
      res.on("end", () => {
        const text = Buffer.concat(chunks).toString("utf8");
        if (res.statusCode < 200 || res.statusCode >= 300) {
          reject(new BenchError(`Glance answered ${method} ${url.pathname} with ${res.statusCode}: ${text.trim().slice(0, 500)}`));
          return;
        }
        let parsed;
        try {
          parsed = text ? JSON.parse(text) : undefined;
        } catch {
          parsed = text;
        }
        resolvePromise(parsed);
      });
    });
    req.on("error", reject);
    if (file) {
      const stream = createReadStream(file, { highWaterMark: MiB });
      stream.on("error", (err) => req.destroy(err));
      stream.pipe(req);
    } else {
      req.end(body);
    }
  });
}

/** One Glance import: create -> stage -> import (glance-direct) -> active. */
async function glanceRun(base, qcow2, label) {
  const started = performance.now();
  const image = await call(base, "POST", "/v2/images", { json: { name: label, disk_format: "qcow2", container_format: "bare" } });
  try {
    await call(base, "PUT", `/v2/images/${image.id}/stage`, { file: qcow2 });
    const stagedMs = performance.now() - started;
    await call(base, "POST", `/v2/images/${image.id}/import`, { json: { method: { name: "glance-direct" } } });
    let current;
    for (;;) {
      current = await call(base, "GET", `/v2/images/${image.id}`);
      if (current.status === "active") break;
      // A failed import puts the image back to queued and names the store in os_glance_failed_import.
      if (["killed", "deleted", "deactivated"].includes(current.status) || current.os_glance_failed_import || (current.status === "queued" && performance.now() - started > stagedMs + 5_000)) {
        throw new BenchError(`Glance's import of image ${image.id} failed: status ${current.status}${current.os_glance_failed_import ? `, failed import to ${current.os_glance_failed_import}` : ""} (see ${glanceLog()})`);
      }
      if (performance.now() - started > IMPORT_TIMEOUT_MS) throw new BenchError(`Glance's image ${image.id} was not active after ${IMPORT_TIMEOUT_MS / 60_000} minutes (status ${current.status})`);
      await sleep(POLL_MS);
    }
    const totalMs = performance.now() - started;
    // The image is active before the import flow ends (staging clean-up, final checks, the
    // image lock): deleting it now would fail the flow, so wait for the task (not timed).
    const taskMs = await importTaskDone(base, image.id, current.os_glance_import_task, started);
    return { totalMs, stageMs: stagedMs, processingMs: totalMs - stagedMs, taskDoneMs: taskMs, image: current };
  } finally {
    await call(base, "DELETE", `/v2/images/${image.id}`).catch((err) => say(`warning: deleting Glance image ${image.id}: ${err.message}`));
  }
}

/** Waits until the image's import task has ended (GET /v2/images/ID/tasks); ms since `started`. */
async function importTaskDone(base, imageId, taskId, started) {
  const deadline = performance.now() + 120_000;
  for (;;) {
    const { tasks = [] } = (await call(base, "GET", `/v2/images/${imageId}/tasks`)) ?? {};
    const task = tasks.find((t) => t.id === taskId) ?? tasks[0];
    if (task?.status === "success") return performance.now() - started;
    if (task?.status === "failure") throw new BenchError(`Glance's import task ${task.id} for image ${imageId} failed after the image was active: ${task.message}`);
    if (performance.now() > deadline) throw new BenchError(`Glance's import task for image ${imageId} had not ended 2 minutes after the image was active (status ${task?.status ?? "none"})`);
    await sleep(POLL_MS);
  }
}

const glanceLog = () => `${process.env.GLANCE_STATE_DIR || "/var/tmp/imagetransfer-glance"}/log/glance-api.log`;

// ---------------------------------------------------------------------------------------------
// Baseline: qemu-img convert -O raw, then Node's sha512 of the output

async function baselineRun(dir, qcow2) {
  const out = join(dir, "out.raw");
  rmSync(out, { force: true });
  const started = performance.now();
  await run("qemu-img", ["convert", "-f", "qcow2", "-O", "raw", qcow2, out]);
  const convertMs = performance.now() - started;
  const sha512 = await sha512File(out);
  const totalMs = performance.now() - started;
  const size = statSync(out).size;
  rmSync(out, { force: true });
  return { totalMs, convertMs, hashMs: totalMs - convertMs, sha512, size };
}

// ---------------------------------------------------------------------------------------------
// Main

const round3 = (v) => Math.round(v * 1000) / 1000;
const summarize = (label, samples) => ({ label, median: round3(median(samples)), min: round3(Math.min(...samples)), max: round3(Math.max(...samples)), samples: samples.map(round3) });
const machine = () => ({ cpus: cpus().length, loadavg: loadavg().map((v) => Math.round(v * 100) / 100) });

function unavailable(title, reason) {
  return { benchmark: "B7", title, available: false, reason, machine: machine(), results: [], problems: [] };
}

async function main(opts) {
  const title = "Glance (glance-api, glance-direct import with image_conversion to raw)";
  for (const tool of ["qemu-img"]) {
    if (spawnSync(tool, ["--version"], { stdio: "ignore" }).status !== 0) throw new BenchError(`${tool} is not installed (apt-get install qemu-utils)`);
  }
  mkdirSync(opts.tmpDir, { recursive: true });
  const fsStats = statfsSync(opts.tmpDir);
  const free = Number(fsStats.bavail) * Number(fsStats.bsize);
  // The qcow2 and the baseline's raw here; the staged qcow2, its raw conversion and the stored image in Glance's state dir.
  const needed = 3 * opts.sizeMib * MiB + GiB;
  if (free < needed) throw new BenchError(`only ${(free / GiB).toFixed(1)} GiB free in ${opts.tmpDir}; this benchmark needs ${(needed / GiB).toFixed(1)} GiB`);
  await warmMemory();

  let base;
  try {
    base = await startGlance(opts.install);
  } catch (err) {
    if (err instanceof GlanceUnavailable) return unavailable(title, err.message);
    throw err;
  }
  const pids = glancePids();
  const idleRss = pids.reduce((sum, pid) => sum + (memoryOf(pid)?.rss ?? 0), 0);
  say(`glance-api ${glanceVersion() ?? "?"} at ${base}: processes ${pids.join(", ") || "(none found)"}, idle RSS ${mib(idleRss)} MiB`);

  const workRoot = await mkdtemp(join(resolve(opts.tmpDir), "itx-bench-glance-"));
  setWorkRoot(workRoot);
  const raw = join(workRoot, "disk.raw");
  const qcow2 = join(workRoot, "disk.qcow2");
  const prepared = performance.now();
  writeRawDisk(raw, opts.sizeMib * MiB);
  await run("qemu-img", ["convert", "-f", "raw", "-O", "qcow2", raw, qcow2]);
  rmSync(raw);
  say(`prepared ${sizeLabel(opts.sizeMib)} qcow2 (${mib(statSync(qcow2).size)} MiB on disk) in ${seconds(performance.now() - prepared)} s`);

  const problems = [];
  const runs = [];
  let maxSampledRss = 0;
  for (let i = 1; i <= opts.runs; i++) {
    const sampler = sampleGlanceRss(pids);
    let glance;
    try {
      glance = await glanceRun(base, qcow2, `bench-b7-${i}`);
    } finally {
      maxSampledRss = Math.max(maxSampledRss, sampler.stop());
    }
    const baseline = await baselineRun(workRoot, qcow2);
    const image = glance.image;
    if (image.os_hash_value !== baseline.sha512) problems.push(`run ${i}: Glance's os_hash_value (${image.os_hash_algo}) ${image.os_hash_value} differs from the sha512 of qemu-img's raw output ${baseline.sha512}`);
    if (image.disk_format !== "raw") problems.push(`run ${i}: Glance's image has disk_format ${image.disk_format}, not raw: the conversion did not happen`);
    if (image.size !== baseline.size) problems.push(`run ${i}: Glance's image is ${image.size} bytes, qemu-img's raw output ${baseline.size}`);
    runs.push({
      run: i,
      glanceS: seconds(glance.totalMs),
      glanceStageS: seconds(glance.stageMs),
      glanceProcessingS: seconds(glance.processingMs),
      glanceTaskDoneS: seconds(glance.taskDoneMs),
      baselineS: seconds(baseline.totalMs),
      baselineConvertS: seconds(baseline.convertMs),
      baselineHashS: seconds(baseline.hashMs),
      imageSize: image.size,
      diskFormat: image.disk_format,
      sha512Matches: image.os_hash_value === baseline.sha512,
    });
    say(`run ${i}/${opts.runs}: Glance ${seconds(glance.totalMs)} s (stage ${seconds(glance.stageMs)} s + processing ${seconds(glance.processingMs)} s), qemu-img+sha512 ${seconds(baseline.totalMs)} s, sha512 ${image.os_hash_value === baseline.sha512 ? "matches" : "DIFFERS"}`);
  }
  const hwm = pids.reduce((sum, pid) => sum + (memoryOf(pid)?.hwm ?? 0), 0);
  const alive = pids.filter((pid) => memoryOf(pid) !== undefined).length;
  if (alive < pids.length) say(`warning: ${pids.length - alive} of the glance-api processes went away during the runs: their peak RSS is missing from the sum`);
  rmSync(qcow2, { force: true });
  const leftover = stagingLeftovers();
  if (leftover.length > 0) problems.push(`Glance left files in its staging dir: ${leftover.join(", ")}`);

  const glanceTimes = runs.map((r) => r.glanceS);
  const baseTimes = runs.map((r) => r.baselineS);
  const size = sizeLabel(opts.sizeMib);
  const glanceLabel = "Glance glance-direct + image_conversion (create -> active)";
  const time = {
    name: `${size} qcow2 to an active raw image through Glance`,
    unit: "s",
    better: "lower",
    product: summarize(glanceLabel, glanceTimes),
    baseline: summarize("qemu-img convert -O raw + Node sha512", baseTimes),
    ratio: round3(median(baseTimes) / median(glanceTimes)),
    target: null,
    met: null,
    note: "Glance is the reference for B1 (B1's product at least 4 x faster than this median); no target of its own",
  };
  const phase = (name, key) => ({ name: `${size} through Glance: ${name}`, unit: "s", better: "lower", product: summarize(glanceLabel, runs.map((r) => r[key])), baseline: null, ratio: null, target: null, met: null });
  const memory = {
    name: `Glance's peak RSS (VmHWM summed over its ${pids.length} glance-api process${pids.length === 1 ? "" : "es"}) over the ${size} imports`,
    unit: "MiB",
    better: "lower",
    product: summarize("glance-api VmHWM sum", [mib(hwm)]),
    baseline: null,
    ratio: null,
    target: null,
    met: null,
    sampledMaxRssMib: mib(maxSampledRss),
    idleRssMib: mib(idleRss),
  };
  return {
    benchmark: "B7",
    title,
    available: true,
    machine: machine(),
    glance: { version: glanceVersion(), url: base, processes: pids.length, startedByThisRun: startedGlance },
    size,
    runs,
    results: [time, phase("stage (create + PUT /stage)", "glanceStageS"), phase("processing (import -> active)", "glanceProcessingS"), memory],
    problems,
  };
}

/** Files Glance's staging store still holds after the images were deleted. */
function stagingLeftovers() {
  const dir = join(process.env.GLANCE_STATE_DIR || "/var/tmp/imagetransfer-glance", "staging");
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

function printTable(r) {
  if (!r.available) {
    process.stdout.write(`B7 Glance: not available: ${r.reason}\n`);
    return;
  }
  const rows = [["run", "Glance (s)", "stage (s)", "processing (s)", "qemu-img (s)", "sha512 (s)", "baseline (s)", "baseline/Glance"]];
  for (const x of r.runs) rows.push([String(x.run), String(x.glanceS), String(x.glanceStageS), String(x.glanceProcessingS), String(x.baselineConvertS), String(x.baselineHashS), String(x.baselineS), (x.baselineS / x.glanceS).toFixed(2)]);
  const [time, , , memory] = r.results;
  rows.push(["median", String(time.product.median), "", "", "", "", String(time.baseline.median), time.ratio.toFixed(2)]);
  const widths = rows[0].map((_, c) => Math.max(...rows.map((row) => row[c].length)));
  const out = rows.map((row) => row.map((cell, c) => (c === 0 ? cell.padEnd(widths[c]) : cell.padStart(widths[c]))).join("  "));
  out.splice(1, 0, widths.map((w) => "-".repeat(w)).join("  "));
  const lines = [
    `B7: ${r.size} qcow2 through Glance ${r.glance.version} (glance-direct, image_conversion to raw), ${r.runs.length} runs alternating with qemu-img convert -O raw + Node sha512, ${r.machine.cpus} CPUs`,
    "",
    ...out,
    "",
    `glance-api (${r.glance.processes} process${r.glance.processes === 1 ? "" : "es"}): idle RSS ${memory.idleRssMib} MiB, VmHWM sum ${memory.product.median} MiB, max sampled VmRSS sum ${memory.sampledMaxRssMib} MiB`,
    ...r.problems.map((p) => `PROBLEM: ${p}`),
  ];
  process.stdout.write(lines.join("\n") + "\n");
}

let opts = { json: process.argv.includes("--json") };
try {
  opts = parseArgs();
  const result = await main(opts);
  // Interrupted: common.mjs is exiting with 130; a start cut short is no verdict on Glance.
  if (signalled) await new Promise(() => {});
  if (!result.available) process.stderr.write(`\nbench: *** B7 SKIPPED: Glance is not available: ${result.reason} ***\n\n`);
  if (opts.json) process.stdout.write(JSON.stringify(result) + "\n");
  else printTable(result);
  stopGlance();
  process.exitCode = result.problems.length > 0 ? 1 : 0;
} catch (err) {
  if (signalled) await new Promise(() => {});
  const message = err instanceof BenchError ? err.message : err?.stack ?? String(err);
  process.stderr.write(`bench: FAILED: ${message}\n`);
  if (opts.json) process.stdout.write(JSON.stringify({ benchmark: "B7", ok: false, error: message }) + "\n");
  stopGlance();
  process.exitCode = 2;
}
