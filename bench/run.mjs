#!/usr/bin/env node
/**
 * `npm run bench`: how long importing a qcow2 image takes through ImageTransfer, against
 * doing the same work with the plain tools, and how much memory the server needs for it.
 *
 *   npm run bench:import [-- --quick] [--runs N] [--skip-4g] [--json] [--via cli|rpc] [--size-mib M] [--big-size-mib M] [--tmp-dir DIR]
 *
 * --quick: a 256 MiB image, 3 runs, no 4 GiB run (flags given after it still apply).
 * --json prints one JSON object on stdout in the shared result shape of bench/common.mjs
 * (B1 import time against the baseline, target ratio >= 0.8 = within 1.25x; B4 peak RSS of the
 * server for both sizes, target <= 300 MiB and the big figure within 10% of the small one), with
 * the runs, per-stage times and RSS under "details"; progress stays on stderr (`npm run --silent
 * bench:import -- --json` keeps npm's banner off stdout too). --via forces the product path (default: the CLI
 * when it has `itx import`). --size-mib / --big-size-mib change the 1 GiB / 4 GiB images (for
 * quick checks). The temp dir is made under --tmp-dir, else $BENCH_TMPDIR, else the OS temp dir,
 * which needs 12 GiB free.
 *
 * Setup (not timed): a raw disk of --size-mib (default 1024), first half random, second half
 * zeros, converted to qcow2 with `qemu-img convert -f raw -O qcow2`.
 *
 * Timed, N times alternating:
 *   product   upload + import to ACTIVE: `itx import disk.qcow2 --disk-format qcow2 --wait --json`
 *             as a child process when the built CLI has an `import` command, else the same RPCs
 *             from here (CreateUploadUrl, HTTP PUT, ImportImage, WatchTask to SUCCEEDED)
 *   baseline  `qemu-img convert -f qcow2 -O raw disk.qcow2 out.raw`, then Node's sha512 of out.raw
 *             in 1 MiB reads, the way the service must hash (coreutils' sha512sum is slower)
 *
 * Memory: the server's VmHWM (peak RSS) from /proc after the runs, and the largest VmRSS
 * sampled every 100 ms during product runs. Then one product run with a 4 GiB image on a
 * fresh server (unless --skip-4g). Afterwards the data dir must hold no temporary files.
 *
 * Every product run's image must be ACTIVE and its sha512 must equal the baseline's of qemu-img's
 * raw output. With the RPC path, a WatchTask that breaks off before the task ends is re-watched
 * (so the run still gets a time) and reported as a problem.
 *
 * Exit status: 0 ran; 1 a correctness problem was seen (sha512 mismatch, temporary files left,
 * WatchTask broke off); 2 the benchmark itself failed (a product run failed, not enough disk, bad
 * arguments); 130 interrupted (Ctrl-C). Targets (time ratio, peak RSS) are reported, never asserted.
 */
import { spawnSync } from "node:child_process";
import { createReadStream, mkdirSync, readdirSync, rmSync, statSync, statfsSync } from "node:fs";
import { request as httpRequest } from "node:http";
import { request as httpsRequest } from "node:https";
import { mkdtemp } from "node:fs/promises";
import { loadavg } from "node:os";
import { join, resolve } from "node:path";
import { BuildError, cliPath, ensureBuilt, repoRoot } from "../scripts/ensure-built.mjs";
import { BenchError, clientsFor, GiB, loadApi, median, memoryOf, MiB, mib, parseBenchArgs, run, SAMPLE_MS, sampleRss, say, seconds, setWorkRoot, sha512File, sizeLabel, sleep, startServer, summarize, targetMet, tmpDirOption, warmMemory, writeRawDisk } from "./common.mjs";

const RSS_LIMIT_MIB = 300;
/** B1: within 1.25x the baseline's time, i.e. baseline/product >= 0.8. */
const TARGET_TIME_RATIO = 0.8;
/** B4: the big image's peak RSS within 10% of the small one's. */
const BIG_RSS_GROWTH = 1.1;
const MIN_FREE_BYTES = 12 * GiB;

// ---------------------------------------------------------------------------------------------
// Arguments

/** The flags of the header comment. */
const parseArgs = () =>
  parseBenchArgs(import.meta.url, {
    runs: { type: "count", default: 3 },
    "skip-4g": { type: "boolean", quick: true },
    json: { type: "boolean" },
    via: { type: "string", default: "auto", choices: ["auto", "cli", "rpc"] },
    "size-mib": { type: "count", default: 1024, quick: 256 },
    "big-size-mib": { type: "count", default: 4096 },
    "tmp-dir": tmpDirOption,
  });

let opts;
/** Progress goes to stderr, so that --json leaves stdout to the one result object. */
async function prepareQcow2(dir, sizeMib) {
  const raw = join(dir, "disk.raw");
  const qcow2 = join(dir, "disk.qcow2");
  mkdirSync(dir, { recursive: true });
  const started = Date.now();
  writeRawDisk(raw, sizeMib * MiB);
  await run("qemu-img", ["convert", "-f", "raw", "-O", "qcow2", raw, qcow2]);
  // Only the qcow2 is used from here on; the raw source would just take disk space.
  rmSync(raw);
  say(`prepared ${sizeLabel(sizeMib)} qcow2 (${mib(statSync(qcow2).size)} MiB on disk) in ${seconds(Date.now() - started)} s`);
  return qcow2;
}

// ---------------------------------------------------------------------------------------------
// Uploads

/** Streams a file to a URL with PUT and a Content-Length; rejects unless the answer is 2xx. */
function putFile(url, path, method = "PUT") {
  const size = statSync(path).size;
  return new Promise((resolvePromise, reject) => {
    const target = new URL(url);
    const send = target.protocol === "https:" ? httpsRequest : httpRequest;
    const req = send(target, { method, headers: { "Content-Length": String(size), "Content-Type": "application/octet-stream" } }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (d) => (body += d));
      res.on("end", () => {
        if (res.statusCode >= 200 && res.statusCode < 300) resolvePromise(body);
        else reject(new BenchError(`${method} ${target.pathname} answered ${res.statusCode}: ${body.trim()}`));
      });
    });
    req.on("error", reject);
    const file = createReadStream(path, { highWaterMark: MiB });
    file.on("error", (err) => req.destroy(err));
    file.pipe(req);
  });
}

/** True when the built CLI has `itx import`. */
function cliHasImport() {
  const result = spawnSync(process.execPath, [cliPath, "import", "--help"], { cwd: repoRoot, encoding: "utf8" });
  // An unknown command's --help prints the program's help (exit 0), so look for the command's own usage line.
  return result.status === 0 && /^Usage: itx import\b/m.test(result.stdout) && /--wait\b/.test(result.stdout);
}

// ---------------------------------------------------------------------------------------------
// One product run: upload + import to ACTIVE

/** The image ID in whatever `itx import --json` printed: the last JSON document that names one. */
function imageIdFromCliOutput(stdout) {
  const docs = [];
  try {
    docs.push(JSON.parse(stdout));
  } catch {
    for (const line of stdout.split("\n")) {
      try {
        if (line.trim()) docs.push(JSON.parse(line));
      } catch {
        // Not a JSON line.
      }
    }
  }
  const find = (o) => {
    if (!o || typeof o !== "object") return undefined;
    return o.result?.imageId ?? o.task?.result?.imageId ?? o.image?.id ?? o.task?.imageId ?? o.imageId;
  };
  for (const doc of docs.reverse()) {
    const id = find(doc);
    if (id) return id;
  }
  return undefined;
}

async function productViaCli(server, qcow2) {
  const started = performance.now();
  const { stdout } = await run(process.execPath, [cliPath, "import", qcow2, "--disk-format", "qcow2", "--wait", "--json", "--server", server.url, "--data-dir", server.dataDir], {
    timeoutMs: 3_600_000,
  });
  const totalMs = performance.now() - started;
  const imageId = imageIdFromCliOutput(stdout);
  if (!imageId) throw new BenchError(`itx import printed no image ID:\n${stdout.slice(0, 2000)}`);
  // With --wait --json the CLI prints the final Task: its createTime..finishTime is the import
  // task on the server; the rest is CLI start-up, CreateUploadUrl and the upload.
  let importMs;
  try {
    const task = JSON.parse(stdout);
    const ms = Date.parse(task.finishTime) - Date.parse(task.createTime);
    if (Number.isFinite(ms) && ms >= 0) importMs = ms;
  } catch {
    // Not one JSON document; the total is still measured.
  }
  return { totalMs, imageId, importMs, uploadMs: importMs !== undefined ? totalMs - importMs : undefined, watchErrors: [] };
}

async function productViaRpc(server, qcow2, sampler) {
  const { transfer, task: taskPb, image: imagePb } = await loadApi();
  const clients = await clientsFor(server);
  const started = performance.now();
  sampler.setPhase("upload");
  const upload = await clients.transfer.createUploadUrl({});
  await putFile(upload.url, qcow2, upload.method || "PUT");
  const uploadedMs = performance.now() - started;
  const imported = await clients.transfer.importImage({ seedUri: upload.seedUri, diskFormat: imagePb.DiskFormat.QCOW2, name: "bench" });
  const taskId = imported.task.id;
  sampler.setPhase("queued");
  // WatchTask until a terminal state. A watch that breaks off (an error, or an end before the
  // task ended) is recorded as a product problem and started again, so the run still gets its time.
  const terminal = new Set([taskPb.TaskState.SUCCEEDED, taskPb.TaskState.FAILED, taskPb.TaskState.CANCELED]);
  const watchErrors = [];
  let last;
  while (!last || !terminal.has(last.state)) {
    try {
      for await (const response of clients.tasks.watchTask({ id: taskId })) {
        if (response.task) last = response.task;
        sampler.setPhase(last?.progress?.stage || taskPb.TaskState[last?.state]?.toLowerCase());
      }
      if (!last || !terminal.has(last.state)) watchErrors.push("the watch ended before the task did");
    } catch (err) {
      watchErrors.push(err.message);
    }
    if (last && terminal.has(last.state)) break;
    if (watchErrors.length > 36_000) throw new BenchError(`WatchTask ${taskId} kept failing: ${watchErrors.at(-1)}`);
    await sleep(100);
  }
  const totalMs = performance.now() - started;
  if (!last || last.state !== taskPb.TaskState.SUCCEEDED) {
    const state = last ? taskPb.TaskState[last.state] : "no snapshot";
    throw new BenchError(`import task ${taskId} ended ${state}: ${last?.error?.reason ?? ""} ${last?.error?.message ?? ""}`.trim());
  }
  return { totalMs, uploadMs: uploadedMs, importMs: totalMs - uploadedMs, imageId: last.result?.imageId || imported.image?.id, watchErrors };
}

/** Times one product run while sampling the server's RSS, then checks the image is ACTIVE. */
async function productRun(server, qcow2, via) {
  const sampler = sampleRss(server.pid);
  let timing;
  try {
    timing = via === "cli" ? await productViaCli(server, qcow2) : await productViaRpc(server, qcow2, sampler);
  } catch (err) {
    sampler.stop();
    const logLines = server.log().trim();
    throw new BenchError(`product run failed: ${err.message}\n--- server log (${server.dataDir}) ---\n${logLines || "(empty)"}`);
  }
  const { maxRss, samples, byPhase, timeByPhase } = sampler.stop();
  // What the task left in work/ at the moment it was reported SUCCEEDED (informational).
  const workRightAfter = readdirSafe(join(server.dataDir, "work"));
  const { image: imagePb } = await loadApi();
  const clients = await clientsFor(server);
  const { image } = await clients.images.getImage({ id: timing.imageId });
  if (image.status !== imagePb.ImageStatus.ACTIVE) throw new BenchError(`image ${timing.imageId} is ${imagePb.ImageStatus[image.status]}, not ACTIVE`);
  return {
    ...timing,
    maxRss,
    rssSamples: samples,
    maxRssByPhaseMib: Object.fromEntries(Object.entries(byPhase).map(([k, v]) => [k, mib(v)])),
    secondsByPhase: Object.fromEntries(Object.entries(timeByPhase).map(([k, v]) => [k, seconds(v)])),
    workRightAfter,
    image: { id: image.id, size: Number(image.size), virtualSize: Number(image.virtualSize), sha512: image.osHashValue, md5: image.checksum },
  };
}

async function deleteImage(server, id) {
  try {
    const clients = await clientsFor(server);
    await clients.images.deleteImage({ id });
    return true;
  } catch (err) {
    say(`warning: DeleteImage ${id}: ${err.message}`);
    return false;
  }
}

// ---------------------------------------------------------------------------------------------
// One baseline run: qemu-img convert + Node's sha512

async function baselineRun(dir, qcow2) {
  const out = join(dir, "out.raw");
  rmSync(out, { force: true });
  const started = performance.now();
  await run("qemu-img", ["convert", "-f", "qcow2", "-O", "raw", qcow2, out]);
  const convertedMs = performance.now() - started;
  const sha512 = await sha512File(out);
  const totalMs = performance.now() - started;
  rmSync(out, { force: true });
  return { totalMs, convertMs: convertedMs, hashMs: totalMs - convertedMs, sha512 };
}

// ---------------------------------------------------------------------------------------------
// Leftovers: the data dir must hold no temporary files after the runs

const TEMP_NAME = /^\..*\.tmp-[0-9a-f]{16}$/s;

function filesUnder(dir) {
  const found = [];
  const walk = (d) => {
    let entries;
    try {
      entries = readdirSync(d, { withFileTypes: true });
    } catch (err) {
      if (err.code === "ENOENT") return;
      throw err;
    }
    for (const e of entries) {
      const full = join(d, e.name);
      if (e.isDirectory()) walk(full);
      else found.push(full);
    }
  };
  walk(dir);
  return found;
}

/**
 * Temporary files in the data dir once the server has settled: polls for up to 5 s, since a
 * task's work dir may be removed just after the task is reported as ended.
 */
async function settledLeftovers(dataDir) {
  const started = Date.now();
  let left = leftovers(dataDir);
  while (left.length > 0 && Date.now() - started < 5_000) {
    await sleep(100);
    left = leftovers(dataDir);
  }
  return left;
}

function leftovers(dataDir) {
  const work = readdirSafe(join(dataDir, "work"));
  const uploads = filesUnder(join(dataDir, "images", "uploads"));
  const storeTemps = filesUnder(join(dataDir, "images")).filter((f) => TEMP_NAME.test(f.split("/").pop()));
  const rel = (f) => f.slice(dataDir.length + 1);
  const items = [...work.map((e) => `work/${e}`), ...uploads.map(rel), ...storeTemps.map(rel)];
  return [...new Set(items)];
}

function readdirSafe(dir) {
  try {
    return readdirSync(dir);
  } catch (err) {
    if (err.code === "ENOENT") return [];
    throw err;
  }
}

// ---------------------------------------------------------------------------------------------
// Main

async function main() {
  if (process.platform !== "linux") throw new BenchError("needs Linux (/proc/PID/status for the server's RSS)");
  if (spawnSync("qemu-img", ["--version"], { stdio: "ignore" }).status !== 0) throw new BenchError("qemu-img is not installed (apt-get install qemu-utils)");

  mkdirSync(opts.tmpDir, { recursive: true });
  const fsStats = statfsSync(opts.tmpDir);
  const free = Number(fsStats.bavail) * Number(fsStats.bsize);
  const needed = MIN_FREE_BYTES;
  if (free < needed) {
    throw new BenchError(`only ${(free / GiB).toFixed(1)} GiB free in ${opts.tmpDir}; the benchmark needs ${(needed / GiB).toFixed(0)} GiB (set --tmp-dir or BENCH_TMPDIR)`);
  }

  await ensureBuilt({ log: say });
  await warmMemory();
  const via = opts.via === "auto" ? (cliHasImport() ? "cli" : "rpc") : opts.via;
  if (via === "cli" && !cliHasImport()) throw new BenchError("--via cli: the built CLI has no `itx import ... --wait` command");

  const workRoot = await mkdtemp(join(resolve(opts.tmpDir), "itx-bench-"));
  setWorkRoot(workRoot);
  say(`temp dir ${workRoot} (${(free / GiB).toFixed(0)} GiB free); product path: ${via === "cli" ? "itx import --wait (CLI)" : `RPCs from the bench ${opts.via === "rpc" ? "(--via rpc)" : "(no itx import in the built CLI)"}`}`);

  const nproc = spawnSync("nproc", [], { encoding: "utf8" }).stdout.trim();
  if (loadavg()[0] > 0.5 * (Number(nproc) || 1)) say(`warning: load average ${loadavg()[0].toFixed(2)} on ${nproc} CPUs; other work on this machine will skew the times`);
  const result = {
    machine: { cpus: Number(nproc) || undefined, loadAvgAtStart: loadavg().map((x) => Math.round(x * 100) / 100), node: process.version, qemuImg: spawnSync("qemu-img", ["--version"], { encoding: "utf8" }).stdout.split("\n")[0] },
    via,
    size: sizeLabel(opts.sizeMib),
    runs: [],
    product: {},
    baseline: {},
    ratio: undefined,
    server: {},
    big: undefined,
    leftovers: {},
    rssLimitMib: RSS_LIMIT_MIB,
    ok: true,
    problems: [],
  };

  // --- 1 GiB: N alternating runs
  const smallDir = join(workRoot, "small");
  const qcow2 = await prepareQcow2(smallDir, opts.sizeMib);
  const dataDir = join(workRoot, "data-small");
  const server = await startServer(dataDir);
  const idleRss = mib(memoryOf(server.pid)?.rss ?? 0);
  say(`server pid ${server.pid} at ${server.url} (idle RSS ${idleRss} MiB)`);
  let deleted = 0;
  let maxSampled = 0;
  try {
    for (let i = 1; i <= opts.runs; i++) {
      const product = await productRun(server, qcow2, via);
      // Each side drops its output before the next run, as the baseline removes out.raw: a kept
      // image would hold its page cache, and every later run would write into colder memory.
      if (await deleteImage(server, product.imageId)) deleted++;
      maxSampled = Math.max(maxSampled, product.maxRss);
      const baseline = await baselineRun(smallDir, qcow2);
      const hashMatches = product.image.sha512 === baseline.sha512;
      noteWatchErrors(result, `run ${i}`, product.watchErrors);
      if (!hashMatches) result.problems.push(`run ${i}: the image's sha512 ${product.image.sha512} differs from the baseline's ${baseline.sha512}`);
      result.runs.push({
        run: i,
        productS: seconds(product.totalMs),
        productUploadS: product.uploadMs !== undefined ? seconds(product.uploadMs) : undefined,
        productImportS: product.importMs !== undefined ? seconds(product.importMs) : undefined,
        baselineS: seconds(baseline.totalMs),
        baselineConvertS: seconds(baseline.convertMs),
        baselineHashS: seconds(baseline.hashMs),
        serverMaxRssMib: mib(product.maxRss),
        serverMaxRssByPhaseMib: product.maxRssByPhaseMib,
        productSecondsByPhase: product.secondsByPhase,
        watchErrors: product.watchErrors.length,
        workRightAfter: product.workRightAfter.length,
        imageId: product.imageId,
        imageSize: product.image.size,
        sha512Matches: hashMatches,
      });
      say(
        `run ${i}/${opts.runs}: itx ${seconds(product.totalMs)} s` +
          (product.uploadMs !== undefined ? ` (upload ${seconds(product.uploadMs)} s + import ${seconds(product.importMs)} s)` : "") +
          `, qemu-img+sha512 ${seconds(baseline.totalMs)} s, server RSS max ${mib(product.maxRss)} MiB, sha512 ${hashMatches ? "matches" : "DIFFERS"}`,
      );
    }
    const mem = memoryOf(server.pid);
    result.server = { idleRssMib: idleRss, peakRssMib: mib(mem?.hwm ?? 0), maxSampledRssMib: mib(maxSampled), finalRssMib: mib(mem?.rss ?? 0) };
    result.leftovers.small = await settledLeftovers(dataDir);
    result.deletedImages = deleted;
  } finally {
    await server.stop();
    rmSync(dataDir, { recursive: true, force: true });
    rmSync(smallDir, { recursive: true, force: true });
  }
  result.product = { medianS: seconds(median(result.runs.map((r) => r.productS * 1000))), runsS: result.runs.map((r) => r.productS) };
  result.baseline = { medianS: seconds(median(result.runs.map((r) => r.baselineS * 1000))), runsS: result.runs.map((r) => r.baselineS) };
  result.ratio = Math.round((result.product.medianS / result.baseline.medianS) * 100) / 100;

  // --- 4 GiB: one product run on a fresh server
  if (!opts.skip4g) {
    const bigDir = join(workRoot, "big");
    const bigQcow2 = await prepareQcow2(bigDir, opts.bigSizeMib);
    const bigData = join(workRoot, "data-big");
    const bigServer = await startServer(bigData);
    const bigIdle = mib(memoryOf(bigServer.pid)?.rss ?? 0);
    say(`fresh server pid ${bigServer.pid} for the ${sizeLabel(opts.bigSizeMib)} run (idle RSS ${bigIdle} MiB)`);
    try {
      const product = await productRun(bigServer, bigQcow2, via);
      const mem = memoryOf(bigServer.pid);
      result.big = {
        size: sizeLabel(opts.bigSizeMib),
        productS: seconds(product.totalMs),
        productUploadS: product.uploadMs !== undefined ? seconds(product.uploadMs) : undefined,
        productImportS: product.importMs !== undefined ? seconds(product.importMs) : undefined,
        peakRssMib: mib(mem?.hwm ?? 0),
        maxSampledRssMib: mib(product.maxRss),
        maxRssByPhaseMib: product.maxRssByPhaseMib,
        secondsByPhase: product.secondsByPhase,
        watchErrors: product.watchErrors.length,
        workRightAfter: product.workRightAfter.length,
        idleRssMib: bigIdle,
        imageId: product.imageId,
        imageSize: product.image.size,
      };
      noteWatchErrors(result, sizeLabel(opts.bigSizeMib), product.watchErrors);
      say(`${sizeLabel(opts.bigSizeMib)}: itx ${result.big.productS} s, server peak RSS ${result.big.peakRssMib} MiB`);
      result.leftovers.big = await settledLeftovers(bigData);
      await deleteImage(bigServer, product.imageId);
    } finally {
      await bigServer.stop();
      rmSync(bigData, { recursive: true, force: true });
      rmSync(bigDir, { recursive: true, force: true });
    }
  }

  // --- verdict
  const left = [...(result.leftovers.small ?? []), ...(result.leftovers.big ?? [])];
  if (left.length > 0) result.problems.push(`temporary files left in the data dir: ${left.join(", ")}`);
  result.machine.loadAvgAtEnd = loadavg().map((x) => Math.round(x * 100) / 100);
  result.ok = result.problems.length === 0;
  result.summary = summaryLine(result, left);
  return result;
}

/** A WatchTask that broke off is a product defect: reported with the first error, and it fails the bench. */
function noteWatchErrors(result, label, errors) {
  if (errors.length === 0) return;
  const distinct = [...new Set(errors)];
  result.problems.push(`${label}: WatchTask broke off ${errors.length} time(s) before the task ended (re-watched to finish the run): ${distinct.slice(0, 3).join(" | ")}`);
}

function summaryLine(r, left) {
  let line = `import ${r.size} qcow2: itx ${r.product.medianS} s vs qemu-img+sha512 ${r.baseline.medianS} s = ${r.ratio}x; server peak RSS ${r.server.peakRssMib} MiB (limit ${RSS_LIMIT_MIB} MiB)`;
  if (r.big) line += `; ${r.big.size}: ${r.big.productS} s, peak RSS ${r.big.peakRssMib} MiB`;
  line += `; temp files: ${left.length === 0 ? "none left" : `${left.length} left`}`;
  return line;
}

function stageLine(times = {}, rss = {}) {
  const names = [...new Set([...Object.keys(times), ...Object.keys(rss)])];
  return names.map((k) => `${k} ${times[k] ?? "-"} s / ${rss[k] ?? "-"}`).join(", ");
}

function printTable(r) {
  const rows = [["run", "itx (s)", "upload (s)", "import (s)", "qemu-img (s)", "sha512 (s)", "baseline (s)", "ratio", "server RSS max (MiB)"]];
  const dash = (v) => (v === undefined ? "-" : String(v));
  for (const x of r.runs) {
    rows.push([String(x.run), String(x.productS), dash(x.productUploadS), dash(x.productImportS), String(x.baselineConvertS), String(x.baselineHashS), String(x.baselineS), (x.productS / x.baselineS).toFixed(2), String(x.serverMaxRssMib)]);
  }
  rows.push(["median", String(r.product.medianS), "", "", "", "", String(r.baseline.medianS), r.ratio.toFixed(2), ""]);
  if (r.big) rows.push([r.big.size, String(r.big.productS), dash(r.big.productUploadS), dash(r.big.productImportS), "", "", "", "", String(r.big.maxSampledRssMib)]);
  const widths = rows[0].map((_, c) => Math.max(...rows.map((row) => row[c].length)));
  const out = rows.map((row) => row.map((cell, c) => (c === 0 ? cell.padEnd(widths[c]) : cell.padStart(widths[c]))).join("  "));
  out.splice(1, 0, widths.map((w) => "-".repeat(w)).join("  "));
  const lines = [
    `ImageTransfer import benchmark: ${r.size} qcow2 (half random, half zeros), ${r.runs.length} runs alternating, ${r.machine.cpus} CPUs, ${r.machine.qemuImg}`,
    `load average (1/5/15 min) at start ${r.machine.loadAvgAtStart.join(" ")}, at end ${r.machine.loadAvgAtEnd.join(" ")}`,
    `product: ${r.via === "cli" ? "itx import --disk-format qcow2 --wait --json" : "CreateUploadUrl + PUT + ImportImage + WatchTask (RPC)"}; baseline: qemu-img convert -f qcow2 -O raw + Node's sha512`,
    r.via === "cli" ? "columns: import = the task's createTime..finishTime on the server; upload = the rest (CLI start-up, CreateUploadUrl, PUT)" : "columns: upload = CreateUploadUrl + PUT; import = ImportImage until WatchTask reports SUCCEEDED",
    "",
    ...out,
    "",
    `server (${r.size} runs): idle RSS ${r.server.idleRssMib} MiB, VmHWM ${r.server.peakRssMib} MiB, max sampled VmRSS ${r.server.maxSampledRssMib} MiB (every ${SAMPLE_MS} ms)`,
  ];
  if (r.big) lines.push(`server (${r.big.size} run, fresh): idle RSS ${r.big.idleRssMib} MiB, VmHWM ${r.big.peakRssMib} MiB, max sampled VmRSS ${r.big.maxSampledRssMib} MiB`);
  const left = [...(r.leftovers.small ?? []), ...(r.leftovers.big ?? [])];
  const hasPhases = r.runs.some((x) => Object.keys(x.serverMaxRssByPhaseMib ?? {}).length) || Object.keys(r.big?.maxRssByPhaseMib ?? {}).length;
  if (hasPhases) lines.push("by stage, as seen from WatchTask (time s / server RSS max MiB):");
  for (const x of r.runs) if (Object.keys(x.serverMaxRssByPhaseMib ?? {}).length) lines.push(`  run ${x.run}: ${stageLine(x.productSecondsByPhase, x.serverMaxRssByPhaseMib)}`);
  if (r.big && Object.keys(r.big.maxRssByPhaseMib ?? {}).length) lines.push(`  ${r.big.size}: ${stageLine(r.big.secondsByPhase, r.big.maxRssByPhaseMib)}`);
  const early = [...r.runs.map((x) => x.workRightAfter), r.big?.workRightAfter ?? 0].filter((n) => n > 0).length;
  if (early > 0) lines.push(`note: in ${early} product run(s) the task's work/ dir still existed when the task was already reported SUCCEEDED (it is removed just after)`);
  lines.push(`data dir after the runs: ${left.length === 0 ? "work/ empty, images/uploads/ empty, no store temp files" : left.join(", ")}`);
  lines.push(`sha512 of the stored image = the baseline's of qemu-img's raw: ${r.runs.every((x) => x.sha512Matches) ? "yes, every run" : "NO"}`);
  for (const p of r.problems) lines.push(`PROBLEM: ${p}`);
  lines.push("", r.summary);
  process.stdout.write(lines.join("\n") + "\n");
}

/** The run in the shared result shape (bench/common.mjs); the details ride along. */
function sharedShape(r) {
  const results = [];
  const b1 = {
    name: `${r.size} qcow2 to an ACTIVE raw image (upload + import)`,
    unit: "s",
    better: "lower",
    product: summarize(r.via === "cli" ? "itx import --wait (CLI)" : "itx upload URL + ImportImage (RPC)", r.runs.map((x) => x.productS)),
    baseline: summarize("qemu-img convert -O raw + Node's sha512", r.runs.map((x) => x.baselineS)),
    target: { ratio: TARGET_TIME_RATIO },
  };
  b1.ratio = Math.round((b1.baseline.median / b1.product.median) * 1000) / 1000;
  results.push({ benchmark: "B1", ...b1, met: targetMet(b1) });
  const peakSmall = Math.max(r.server.peakRssMib, r.server.maxSampledRssMib);
  const b4 = {
    name: `B4: server peak RSS, ${r.size} import`,
    unit: "MiB",
    better: "lower",
    product: summarize("itx serve VmHWM", [peakSmall]),
    baseline: null,
    ratio: null,
    target: { max: RSS_LIMIT_MIB },
  };
  results.push({ benchmark: "B4", ...b4, met: targetMet(b4) });
  if (r.big) {
    const peakBig = Math.max(r.big.peakRssMib, r.big.maxSampledRssMib);
    const big = {
      name: `B4: server peak RSS, ${r.big.size} import (at most ${RSS_LIMIT_MIB} MiB and within 10% of the ${r.size} figure)`,
      unit: "MiB",
      better: "lower",
      product: summarize("itx serve VmHWM", [peakBig]),
      baseline: null,
      ratio: null,
      target: { max: Math.min(RSS_LIMIT_MIB, Math.round(peakSmall * BIG_RSS_GROWTH * 10) / 10) },
    };
    results.push({ benchmark: "B4", ...big, met: targetMet(big) });
  }
  const { problems, machine, ...details } = r;
  return {
    benchmark: "B1",
    title: "Import a qcow2 through ImageTransfer against qemu-img + sha512; the server's peak memory",
    machine: { cpus: machine.cpus, loadavg: machine.loadAvgAtStart, loadavgAtEnd: machine.loadAvgAtEnd, node: machine.node, qemuImg: machine.qemuImg },
    results,
    problems,
    details,
  };
}

try {
  opts = parseArgs();
  const result = await main();
  if (opts.json) process.stdout.write(JSON.stringify(sharedShape(result)) + "\n");
  else printTable(result);
  process.exitCode = result.ok ? 0 : 1;
} catch (err) {
  const message = err instanceof BenchError || err instanceof BuildError ? err.message : err?.stack ?? String(err);
  process.stderr.write(`bench: FAILED: ${message}\n`);
  if (opts?.json) process.stdout.write(JSON.stringify({ benchmark: "B1", title: "Import", results: [], problems: [], error: message }) + "\n");
  process.exitCode = 2;
}
