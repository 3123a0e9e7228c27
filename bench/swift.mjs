#!/usr/bin/env node
/**
 * `npm run bench:swift` (also run by `npm run bench`): import from Swift and export to Swift
 * through ImageTransfer, side by side with curl moving the same bytes against the same Swift
 * (the store's own ceiling), and the server's memory with an image over Swift's 5 GiB limit.
 *
 *   npm run bench:swift [-- --quick] [--runs N] [--size-mib M] [--big-size-mib M] [--skip-big] [--json] [--tmp-dir DIR]
 *
 * --quick: a 512 MiB seed, 2 runs, no big image. --json: one object on stdout in the shared
 * result shape of bench/common.mjs, benchmark "SWIFT"; progress goes to stderr.
 *
 * Swift: scripts/swift.sh (started when not running, released at the end). One `itx serve`
 * with a store-swift store (1 GiB segments) as its staging and default store.
 *
 * Setup (not timed): a raw disk of --size-mib (default 2048), first half random, second half
 * zeros, PUT into Swift with curl as the seed object.
 *
 * Timed, N times alternating (medians reported):
 *   import     ImportImage of the seed (raw) to SUCCEEDED: the server GETs the seed, inspects
 *              and hashes it, and PUTs it back as the image (a Static Large Object)
 *              baseline: curl GETs the seed to a file and PUTs that file back
 *   export     ExportImage of that image as qcow2 to Swift: GET, qemu-img convert, PUT
 *              baseline: curl GETs the image's object to a file and PUTs the same qcow2 bytes
 * Task times are the server's (createTime to finishTime). ratio = curl / product: 1.0 is as
 * fast as curl; the target is 0.8 or more. Reported, not asserted. A second reference, the
 * plain tools doing the work the step must do beside the bytes it moves, shows how much of
 * the gap that work itself costs on this machine (toolsRatio = tools / product):
 *   import     curl GET to a file, then curl PUT with `openssl dgst` md5 and sha512 beside it
 *   export     curl GET to a file, `openssl dgst -sha512` (the check of the stored copy) beside
 *              `qemu-img convert -O qcow2` and the curl PUT of its output With each result: the
 * median seconds of each task stage (the server's itx_pipeline_stage_duration_seconds), and
 * the CPU seconds Swift's own processes and the server (with its qemu-img children) spent
 * during the product's runs and during curl's.
 *
 * Big (unless --skip-big): a --big-size-mib (default 6144) raw disk as qcow2 goes up through
 * a TempURL, is imported (stored raw: over 5 GiB, so an SLO), exported as qcow2, downloaded
 * through a TempURL and compared with the source by `qemu-img compare`; the server's peak
 * RSS must stay under 300 MiB.
 *
 * Exit status: 0 ok; 1 the RSS limit was exceeded or the big image came back different;
 * 2 the benchmark itself failed; 130 interrupted.
 */
import { readdirSync, readFileSync, rmSync, statfsSync, writeFileSync } from "node:fs";
import { mkdtemp } from "node:fs/promises";
import { join, resolve } from "node:path";
import { BuildError, ensureBuilt, repoRoot } from "../scripts/ensure-built.mjs";
import {
  BenchError, clientsFor, cpuSeconds, freePort, GiB, loadApi, machineInfo, median, memoryOf, MiB, mib, parseBenchArgs, run, sampleRss, say, seconds, setWorkRoot, sizeLabel,
  startServer, summarize, targetMet, tmpDirOption, warmMemory, writeRawDisk,
} from "./common.mjs";

const RSS_LIMIT_MIB = 300;
const TARGET_RATIO = 0.8;
const swiftScript = join(repoRoot, "scripts/swift.sh");

/** The flags of the header comment. */
const parseArgs = () =>
  parseBenchArgs(import.meta.url, {
    runs: { type: "count", default: 3, quick: 2 },
    "size-mib": { type: "count", default: 2048, quick: 512 },
    "big-size-mib": { type: "count", default: 6144 },
    "skip-big": { type: "boolean", quick: true },
    json: { type: "boolean" },
    "tmp-dir": tmpDirOption,
  });

// ---------------------------------------------------------------------------------------------
// Swift, as the tests get it

async function startSwift() {
  await run("bash", [swiftScript, "start", "--for", String(process.pid)], { timeoutMs: 600_000 });
  const { stdout } = await run("bash", [swiftScript, "env"]);
  const env = Object.fromEntries([...stdout.matchAll(/^export ([A-Z0-9_]+)=(.*)$/gm)].map((m) => [m[1], m[2]]));
  const login = await fetch(env.SWIFT_AUTH_URL, { headers: { "x-auth-user": env.SWIFT_USER, "x-auth-key": env.SWIFT_KEY } });
  const token = login.headers.get("x-auth-token");
  if (!login.ok || !token) throw new BenchError(`tempauth login to ${env.SWIFT_AUTH_URL} failed: HTTP ${login.status}`);
  return { env, token, storageUrl: login.headers.get("x-storage-url") };
}

async function swiftCall(swift, method, path) {
  const response = await fetch(`${swift.storageUrl}/${path}`, { method, headers: { "x-auth-token": swift.token } });
  if (!response.ok && response.status !== 404) throw new BenchError(`${method} ${path} answered ${response.status}`);
  return response;
}

function alive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return err.code === "EPERM";
  }
}

/** Removes a container, its objects and its segments container. */
async function removeContainer(swift, container) {
  for (const name of [container, `${container}_segments`]) {
    for (;;) {
      const list = await swiftCall(swift, "GET", `${name}?format=json`);
      const objects = list.status === 200 ? await list.json() : [];
      if (objects.length === 0) break;
      for (const o of objects) await swiftCall(swift, "DELETE", `${name}/${encodeURIComponent(o.name)}`);
    }
    await swiftCall(swift, "DELETE", name);
  }
}

const curl = (swift, args) => run("curl", ["-sS", "--fail", "-H", `X-Auth-Token: ${swift.token}`, ...args]);

// ---------------------------------------------------------------------------------------------
// Product runs: one task each, timed by the server

async function runTask(clients, start) {
  const { task: taskPb } = await loadApi();
  const { task } = await start();
  let last = task;
  for await (const response of clients.tasks.watchTask({ id: task.id })) last = response.task;
  if (last.state !== taskPb.TaskState.SUCCEEDED) {
    throw new BenchError(`task ${task.id} ended ${taskPb.TaskState[last.state]}: ${last.error?.reason ?? ""} ${last.error?.message ?? ""}`);
  }
  const ms = (t) => Number(t.seconds) * 1000 + t.nanos / 1e6;
  return { task: last, ms: ms(last.finishTime) - ms(last.createTime) };
}

const importSeed = (clients, seedUri, diskFormat) =>
  runTask(clients, () => clients.transfer.importImage({ seedUri, diskFormat }));

const exportImage = (clients, imageId, diskFormat) =>
  runTask(clients, () => clients.transfer.exportImage({ imageId, diskFormat, store: "swift" }));

// ---------------------------------------------------------------------------------------------

/** The PIDs of Swift's servers (their python processes, workers included). */
function swiftPids() {
  return readdirSync("/proc").filter((pid) => {
    if (!/^\d+$/.test(pid)) return false;
    try {
      return /swift-(proxy|object|container|account)-server/.test(readFileSync(`/proc/${pid}/cmdline`, "utf8"));
    } catch {
      return false;
    }
  });
}

/** Runs `step`, with the CPU seconds Swift and the itx server spent meanwhile. */
async function withCpu(serverPid, step) {
  const pids = swiftPids();
  const [swift0, server0] = [cpuSeconds(pids), cpuSeconds([serverPid])];
  const value = await step();
  return { value, swiftCpu: cpuSeconds(pids) - swift0, serverCpu: cpuSeconds([serverPid]) - server0 };
}

/** Seconds spent so far in each task stage, from the server's itx_pipeline_stage_duration_seconds. */
async function stageSeconds(metricsUrl) {
  const text = await (await fetch(metricsUrl)).text();
  const sums = {};
  for (const m of text.matchAll(/^itx_pipeline_stage_duration_seconds_sum\{[^}]*stage="([^"]+)"[^}]*\} (\S+)$/gm)) sums[m[1]] = Number(m[2]);
  return sums;
}

/** A task's seconds per stage: the difference of two stageSeconds() readings. */
function stagesBetween(before, after) {
  return Object.fromEntries(Object.entries(after).map(([stage, sum]) => [stage, sum - (before[stage] ?? 0)]).filter(([, s]) => s > 0));
}

async function main(opts) {
  await ensureBuilt();
  await warmMemory();
  const workRoot = await mkdtemp(join(resolve(opts.tmpDir), "itx-bench-swift-"));
  setWorkRoot(workRoot);
  const need = (opts.skipBig ? 3 * opts.sizeMib : 3 * opts.bigSizeMib) * MiB;
  const { bavail, bsize } = statfsSync(workRoot);
  if (bavail * bsize < need) throw new BenchError(`${workRoot} has ${(bavail * bsize / GiB).toFixed(1)} GiB free; this run needs about ${(need / GiB).toFixed(1)} GiB (use --tmp-dir)`);

  const swift = await startSwift();
  // An interrupted run (Ctrl-C skips the clean-up below) leaves its container: remove those
  // first, but not those of another run still going (the PID in the name is alive).
  const containers = await (await swiftCall(swift, "GET", "?format=json&prefix=itx-bench-")).json();
  const stale = containers.filter((c) => /^itx-bench-\d+$/.test(c.name) && !alive(Number(c.name.slice("itx-bench-".length))));
  for (const { name } of stale) await removeContainer(swift, name);
  const container = `itx-bench-${process.pid}`;
  await swiftCall(swift, "PUT", container);
  const dataDir = join(workRoot, "data");
  const config = join(workRoot, "config.json");
  const storeOptions = { authUrl: swift.env.SWIFT_AUTH_URL, user: swift.env.SWIFT_USER, key: swift.env.SWIFT_KEY, container, tempUrlKey: `bench-${process.pid}` };
  writeFileSync(config, JSON.stringify({ stores: [{ name: "swift", plugin: "store-swift", default: true, staging: true, options: storeOptions }] }));
  const { image: imagePb } = await loadApi();
  let server;
  const size = sizeLabel(opts.sizeMib);
  const samples = { import: [], export: [] };
  const problems = [];
  let rss;
  let big;
  try {
    const metricsListen = `127.0.0.1:${await freePort()}`;
    const metricsUrl = `http://${metricsListen}/metrics`;
    server = await startServer(dataDir, ["--config", config, "--metrics-listen", metricsListen]);
    const clients = await clientsFor(server);
    const sampler = sampleRss(server.pid);

    const seed = join(workRoot, "seed.raw");
    writeRawDisk(seed, opts.sizeMib * MiB);
    await curl(swift, ["-T", seed, `${swift.storageUrl}/${container}/bench/seed.raw`]);
    say(`seed: ${size} raw in swift://swift/bench/seed.raw`);

    const object = (key) => `${swift.storageUrl}/${container}/${key}`;
    const copy = join(workRoot, "copy");
    /** curl moving what a step moves: GET `from` to a file, then PUT `put` (that file by default). */
    const curlSteps = async (from, put = copy) => {
      const started = performance.now();
      await curl(swift, ["-o", copy, object(from)]);
      await curl(swift, ["-T", put, object("bench/copy")]);
      return performance.now() - started;
    };
    const converted = join(workRoot, "converted.qcow2");
    const hash = (algorithm, file) => run("openssl", ["dgst", `-${algorithm}`, file]);
    /** The plain tools doing an import's work: the bytes moved as curl moves them, hashed beside the PUT. */
    const toolsImport = async () => {
      const started = performance.now();
      await curl(swift, ["-o", copy, object("bench/seed.raw")]);
      await Promise.all([curl(swift, ["-T", copy, object("bench/copy")]), hash("md5", copy), hash("sha512", copy)]);
      return performance.now() - started;
    };
    /** The plain tools doing an export's work: the fetched copy checked beside its conversion and upload. */
    const toolsExport = async (id) => {
      const started = performance.now();
      await curl(swift, ["-o", copy, object(`images/${id}`)]);
      const checked = hash("sha512", copy);
      await run("qemu-img", ["convert", "-f", "raw", "-O", "qcow2", copy, converted]);
      await Promise.all([curl(swift, ["-T", converted, object("bench/copy")]), checked]);
      return performance.now() - started;
    };
    /** A task, with its stages and the CPU it and Swift used. */
    const task = async (start) => {
      const before = await stageSeconds(metricsUrl);
      const { value, swiftCpu, serverCpu } = await withCpu(server.pid, start);
      return { ...value, stages: stagesBetween(before, await stageSeconds(metricsUrl)), swiftCpu, serverCpu };
    };
    for (let i = 1; i <= opts.runs; i++) {
      sampler.setPhase("import");
      const imported = await task(() => importSeed(clients, "swift://swift/bench/seed.raw", imagePb.DiskFormat.RAW));
      const id = imported.task.imageId;
      sampler.setPhase("export");
      const exported = await task(() => exportImage(clients, id, imagePb.DiskFormat.QCOW2));
      sampler.setPhase("idle");
      const exportCopy = join(workRoot, "export.qcow2");
      await curl(swift, ["-o", exportCopy, object(`exports/${id}.qcow2`)]);
      const curlImport = await withCpu(server.pid, () => curlSteps("bench/seed.raw"));
      const curlExport = await withCpu(server.pid, () => curlSteps(`images/${id}`, exportCopy));
      const tools = { import: await toolsImport(), export: await toolsExport(id) };
      samples.import.push({ product: imported, curl: curlImport, tools: tools.import });
      samples.export.push({ product: exported, curl: curlExport, tools: tools.export });
      await clients.images.deleteImage({ id });
      for (const file of [copy, exportCopy, converted]) rmSync(file);
      const stages = (t) => Object.entries(t.stages).map(([s, v]) => `${s} ${v.toFixed(1)}`).join(", ");
      say(`run ${i}/${opts.runs}: import ${seconds(imported.ms)} s [${stages(imported)}] (curl ${seconds(curlImport.value)} s, tools ${seconds(tools.import)} s), export qcow2 ${seconds(exported.ms)} s [${stages(exported)}] (curl ${seconds(curlExport.value)} s, tools ${seconds(tools.export)} s)`);
    }
    rmSync(seed);
    const sampled = sampler.stop();
    rss = { peak: mib(memoryOf(server.pid).hwm), import: mib(sampled.byPhase.import ?? 0), export: mib(sampled.byPhase.export ?? 0) };
    if (!opts.skipBig) big = await bigImage(opts, workRoot, server, clients, swift, container);
  } finally {
    if (server) await server.stop();
    await removeContainer(swift, container).catch((err) => say(`could not remove container ${container}: ${err.message}`));
    await run("bash", [swiftScript, "release", String(process.pid)]).catch((err) => say(err.message));
  }
  if (rss.peak > RSS_LIMIT_MIB) problems.push(`peak RSS ${rss.peak} MiB is over ${RSS_LIMIT_MIB} MiB`);
  if (big && big.peakRssMib > RSS_LIMIT_MIB) problems.push(`peak RSS with ${big.size} is ${big.peakRssMib} MiB, over ${RSS_LIMIT_MIB} MiB`);
  if (big && !big.identical) problems.push(`the ${big.size} image came back different: ${big.compare}`);

  const step = (name, label, toolsLabel, runs) => {
    const product = summarize(label, runs.map((r) => r.product.ms / 1000));
    const baseline = summarize("curl GET + PUT of the same bytes", runs.map((r) => r.curl.value / 1000));
    const tools = summarize(toolsLabel, runs.map((r) => r.tools / 1000));
    const stageNames = [...new Set(runs.flatMap((r) => Object.keys(r.product.stages)))];
    const result = {
      name,
      unit: "s",
      better: "lower",
      product,
      baseline,
      ratio: Math.round((baseline.median / product.median) * 100) / 100,
      target: { ratio: TARGET_RATIO },
      tools,
      toolsRatio: Math.round((tools.median / product.median) * 100) / 100,
      // Where the product's time goes, and what Swift and the server burnt meanwhile (CPU seconds, medians).
      stages: Object.fromEntries(stageNames.map((s) => [s, Math.round(median(runs.map((r) => r.product.stages[s] ?? 0)) * 100) / 100])),
      cpu: {
        swift: { product: seconds(median(runs.map((r) => r.product.swiftCpu)) * 1000), baseline: seconds(median(runs.map((r) => r.curl.swiftCpu)) * 1000) },
        server: { product: seconds(median(runs.map((r) => r.product.serverCpu)) * 1000) },
      },
    };
    return { ...result, met: targetMet(result) };
  };
  const results = [
    step(`import ${size} raw from Swift to Swift`, "itx ImportImage (task time)", "curl GET, then curl PUT beside openssl md5 and sha512", samples.import),
    step(`export ${size} as qcow2 to Swift`, "itx ExportImage (task time)", "curl GET, then openssl sha512 beside qemu-img convert and curl PUT", samples.export),
    rssResult(`server peak RSS, ${size} imports and exports`, rss.peak),
  ];
  if (big) {
    results.push(rssResult(`server peak RSS, ${big.size} through Swift (import ${big.importS} s, export ${big.exportS} s)`, big.peakRssMib));
  }
  const output = { benchmark: "SWIFT", title: "Import from and export to Swift against curl", machine: await machineInfo(), results, problems };
  if (opts.json) process.stdout.write(`${JSON.stringify(output)}\n`);
  else report(output);
  return problems.length > 0 ? 1 : 0;
}

function rssResult(name, peak) {
  const result = { name, unit: "MiB", better: "lower", product: summarize("itx serve", [peak]), baseline: null, ratio: null, target: { max: RSS_LIMIT_MIB } };
  return { ...result, met: targetMet(result) };
}

/** The big image: upload through a TempURL, import, export as qcow2, download, compare. */
async function bigImage(opts, workRoot, server, clients, swift, container) {
  const { image: imagePb } = await loadApi();
  // A fresh server, so its peak RSS is this image's alone.
  await server.stop();
  const big = await startServer(join(workRoot, "data"), ["--config", join(workRoot, "config.json")]);
  try {
    const bigClients = await clientsFor(big);
    const raw = join(workRoot, "big.raw");
    const qcow2 = join(workRoot, "big.qcow2");
    writeRawDisk(raw, opts.bigSizeMib * MiB);
    await run("qemu-img", ["convert", "-f", "raw", "-O", "qcow2", raw, qcow2]);
    const { url, seedUri } = await bigClients.transfer.createUploadUrl({});
    await run("curl", ["-sS", "--fail", "-T", qcow2, url]);
    rmSync(qcow2);
    say(`big: ${sizeLabel(opts.bigSizeMib)} disk uploaded as qcow2 through a TempURL`);
    const imported = await importSeed(bigClients, seedUri, imagePb.DiskFormat.QCOW2);
    const exported = await exportImage(bigClients, imported.task.imageId, imagePb.DiskFormat.QCOW2);
    const { url: downloadUrl } = await bigClients.transfer.createDownloadUrl({ imageId: imported.task.imageId, diskFormat: imagePb.DiskFormat.QCOW2 });
    const back = join(workRoot, "back.qcow2");
    await run("curl", ["-sS", "--fail", "-o", back, downloadUrl]);
    const compare = await run("qemu-img", ["compare", "-f", "raw", "-F", "qcow2", raw, back]).then(
      (r) => ({ identical: true, text: r.stdout.trim() }),
      (err) => ({ identical: false, text: err.message }),
    );
    const peak = mib(memoryOf(big.pid).hwm);
    say(`big: import ${seconds(imported.ms)} s, export ${seconds(exported.ms)} s, peak RSS ${peak} MiB, ${compare.text}`);
    await bigClients.images.deleteImage({ id: imported.task.imageId });
    return { size: sizeLabel(opts.bigSizeMib), importS: seconds(imported.ms), exportS: seconds(exported.ms), peakRssMib: peak, identical: compare.identical, compare: compare.text };
  } finally {
    await big.stop();
  }
}

function report(output) {
  const lines = ["", `${output.title}: medians; ratio = curl time / product time (1.0 = as fast as curl; target >= ${TARGET_RATIO})`];
  for (const r of output.results) {
    if (r.baseline) {
      lines.push(`  ${r.name}: ${r.product.median} s, curl ${r.baseline.median} s, ratio ${r.ratio}${r.met ? "" : " (below target)"}`);
      lines.push(`    plain tools doing the same work (${r.tools.label}): ${r.tools.median} s, ratio to them ${r.toolsRatio}`);
      lines.push(`    stages: ${Object.entries(r.stages).map(([s, v]) => `${s} ${v} s`).join(", ")}`);
      lines.push(`    CPU s: Swift ${r.cpu.swift.product} (curl: ${r.cpu.swift.baseline}), itx server ${r.cpu.server.product}`);
    } else lines.push(`  ${r.name}: ${r.product.median} ${r.unit} (limit ${r.target.max})`);
  }
  for (const p of output.problems) lines.push(`  PROBLEM: ${p}`);
  process.stdout.write(`${lines.join("\n")}\n`);
}

Promise.resolve()
  .then(() => main(parseArgs()))
  .then((code) => {
    process.exitCode = code;
  })
  .catch((err) => {
    say(err instanceof BenchError || err instanceof BuildError ? err.message : err.stack);
    process.exitCode = 2;
  });
