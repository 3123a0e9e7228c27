#!/usr/bin/env node
/**
 * `npm run bench:swift` (also run by `npm run bench`): import from Swift and export to Swift
 * through ImageTransfer, side by side with curl moving the same bytes against the same Swift
 * (the store's own ceiling), and the server's memory with an image over Swift's 5 GiB limit.
 *
 *   npm run bench:swift [-- --runs N] [--size-mib M] [--big-size-mib M] [--skip-big] [--json] [--tmp-dir DIR]
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
 * fast as curl; the target is 0.8 or more. Reported, not asserted.
 *
 * Big (unless --skip-big): a --big-size-mib (default 6144) raw disk as qcow2 goes up through
 * a TempURL, is imported (stored raw: over 5 GiB, so an SLO), exported as qcow2, downloaded
 * through a TempURL and compared with the source by `qemu-img compare`; the server's peak
 * RSS must stay under 300 MiB.
 *
 * Exit status: 0 ok; 1 the RSS limit was exceeded or the big image came back different;
 * 2 the benchmark itself failed; 130 interrupted.
 */
import { readFileSync, rmSync, statfsSync, writeFileSync } from "node:fs";
import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { BuildError, ensureBuilt, repoRoot } from "../scripts/ensure-built.mjs";
import { BenchError, clientsFor, GiB, loadApi, median, memoryOf, MiB, mib, run, sampleRss, say, seconds, setWorkRoot, sizeLabel, startServer, writeRawDisk } from "./common.mjs";

const RSS_LIMIT_MIB = 300;
const TARGET_RATIO = 0.8;
const swiftScript = join(repoRoot, "scripts/swift.sh");

function parseArgs(argv) {
  const opts = { runs: 3, sizeMib: 2048, bigSizeMib: 6144, skipBig: false, json: false, tmpDir: process.env.BENCH_TMPDIR || tmpdir() };
  for (let i = 0; i < argv.length; i++) {
    const [flag, inline] = argv[i].includes("=") ? argv[i].split(/=(.*)/s) : [argv[i], undefined];
    const take = () => {
      const value = inline ?? argv[++i];
      if (value === undefined) throw new BenchError(`${flag} needs a value`);
      return value;
    };
    const count = () => {
      const n = Number(take());
      if (!Number.isInteger(n) || n <= 0) throw new BenchError(`${flag} must be a positive integer`);
      return n;
    };
    switch (flag) {
      case "--runs": opts.runs = count(); break;
      case "--size-mib": opts.sizeMib = count(); break;
      case "--big-size-mib": opts.bigSizeMib = count(); break;
      case "--skip-big": opts.skipBig = true; break;
      case "--json": opts.json = true; break;
      case "--tmp-dir": opts.tmpDir = take(); break;
      case "-h": case "--help":
        process.stdout.write(readFileSync(new URL(import.meta.url), "utf8").split("*/")[0].replace(/^#!.*\n\/\*\*\n/, "").replace(/^ \* ?/gm, ""));
        process.exit(0);
      default: throw new BenchError(`unknown argument ${argv[i]} (see --help)`);
    }
  }
  return opts;
}

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

async function main(opts) {
  await ensureBuilt();
  const workRoot = await mkdtemp(join(resolve(opts.tmpDir), "itx-bench-swift-"));
  setWorkRoot(workRoot);
  const need = (opts.skipBig ? 3 * opts.sizeMib : 3 * opts.bigSizeMib) * MiB;
  const { bavail, bsize } = statfsSync(workRoot);
  if (bavail * bsize < need) throw new BenchError(`${workRoot} has ${(bavail * bsize / GiB).toFixed(1)} GiB free; this run needs about ${(need / GiB).toFixed(1)} GiB (use --tmp-dir)`);

  const swift = await startSwift();
  // An interrupted run (Ctrl-C skips the clean-up below) leaves its container: remove those first.
  const containers = await (await swiftCall(swift, "GET", "?format=json&prefix=itx-bench-")).json();
  for (const { name } of containers.filter((c) => !c.name.endsWith("_segments"))) await removeContainer(swift, name);
  const container = `itx-bench-${process.pid}`;
  await swiftCall(swift, "PUT", container);
  const dataDir = join(workRoot, "data");
  const config = join(workRoot, "config.json");
  const storeOptions = { authUrl: swift.env.SWIFT_AUTH_URL, user: swift.env.SWIFT_USER, key: swift.env.SWIFT_KEY, container, tempUrlKey: `bench-${process.pid}` };
  writeFileSync(config, JSON.stringify({ stores: [{ name: "swift", plugin: "store-swift", default: true, staging: true, options: storeOptions }] }));
  const { image: imagePb } = await loadApi();
  let server;
  const result = { size: sizeLabel(opts.sizeMib), runs: opts.runs, import: [], export: [], problems: [] };
  try {
    server = await startServer(dataDir, ["--config", config]);
    const clients = await clientsFor(server);
    const sampler = sampleRss(server.pid);

    const seed = join(workRoot, "seed.raw");
    writeRawDisk(seed, opts.sizeMib * MiB);
    await curl(swift, ["-T", seed, `${swift.storageUrl}/${container}/bench/seed.raw`]);
    say(`seed: ${sizeLabel(opts.sizeMib)} raw in swift://swift/bench/seed.raw`);

    const object = (key) => `${swift.storageUrl}/${container}/${key}`;
    const copy = join(workRoot, "copy");
    /** curl moving what a step moves: GET `from` to a file, then PUT `put` (that file by default). */
    const curlSteps = async (from, put = copy) => {
      const started = performance.now();
      await curl(swift, ["-o", copy, object(from)]);
      await curl(swift, ["-T", put, object("bench/copy")]);
      return performance.now() - started;
    };
    for (let i = 1; i <= opts.runs; i++) {
      sampler.setPhase("import");
      const imported = await importSeed(clients, "swift://swift/bench/seed.raw", imagePb.DiskFormat.RAW);
      const id = imported.task.imageId;
      sampler.setPhase("export");
      const exported = await exportImage(clients, id, imagePb.DiskFormat.QCOW2);
      sampler.setPhase("idle");
      const exportCopy = join(workRoot, "export.qcow2");
      await curl(swift, ["-o", exportCopy, object(`exports/${id}.qcow2`)]);
      result.import.push({ product: imported.ms, curl: await curlSteps("bench/seed.raw") });
      result.export.push({ product: exported.ms, curl: await curlSteps(`images/${id}`, exportCopy) });
      await clients.images.deleteImage({ id });
      rmSync(copy);
      rmSync(exportCopy);
      const [im, ex] = [result.import.at(-1), result.export.at(-1)];
      say(`run ${i}/${opts.runs}: import ${seconds(im.product)} s (curl ${seconds(im.curl)} s), export qcow2 ${seconds(ex.product)} s (curl ${seconds(ex.curl)} s)`);
    }
    rmSync(seed);
    const sampled = sampler.stop();
    result.rssMib = { peak: mib(memoryOf(server.pid).hwm), import: mib(sampled.byPhase.import ?? 0), export: mib(sampled.byPhase.export ?? 0) };
    for (const step of ["import", "export"]) {
      const product = median(result[step].map((r) => r.product));
      const baseline = median(result[step].map((r) => r.curl));
      result[step] = { productS: seconds(product), curlS: seconds(baseline), ratio: Math.round((baseline / product) * 100) / 100, runs: result[step] };
    }

    if (!opts.skipBig) result.big = await bigImage(opts, workRoot, server, clients, swift, container);
  } finally {
    if (server) await server.stop();
    await removeContainer(swift, container).catch((err) => say(`could not remove container ${container}: ${err.message}`));
    await run("bash", [swiftScript, "release", String(process.pid)]).catch((err) => say(err.message));
  }
  if (result.rssMib.peak > RSS_LIMIT_MIB) result.problems.push(`peak RSS ${result.rssMib.peak} MiB is over ${RSS_LIMIT_MIB} MiB`);
  if (result.big && result.big.peakRssMib > RSS_LIMIT_MIB) result.problems.push(`peak RSS with ${result.big.size} is ${result.big.peakRssMib} MiB, over ${RSS_LIMIT_MIB} MiB`);
  if (result.big && !result.big.identical) result.problems.push(`the ${result.big.size} image came back different: ${result.big.compare}`);
  if (opts.json) process.stdout.write(`${JSON.stringify(result)}\n`);
  else report(result);
  return result.problems.length > 0 ? 1 : 0;
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

function report(r) {
  const lines = [
    "",
    `Swift: ${r.size} raw image, ${r.runs} runs; medians; ratio = curl time / product time (1.0 = as fast as curl; target >= ${TARGET_RATIO})`,
    `  import from Swift to Swift  ${r.import.productS} s   curl GET + PUT of the same bytes ${r.import.curlS} s   ratio ${r.import.ratio}`,
    `  export as qcow2 to Swift    ${r.export.productS} s   curl GET + PUT of the same bytes ${r.export.curlS} s   ratio ${r.export.ratio}`,
    `  server peak RSS ${r.rssMib.peak} MiB (import ${r.rssMib.import}, export ${r.rssMib.export})`,
  ];
  if (r.big) lines.push(`  ${r.big.size} through Swift: import ${r.big.importS} s, export qcow2 ${r.big.exportS} s, peak RSS ${r.big.peakRssMib} MiB, ${r.big.identical ? "identical" : "DIFFERENT"} after download`);
  for (const p of r.problems) lines.push(`  PROBLEM: ${p}`);
  process.stdout.write(`${lines.join("\n")}\n`);
}

Promise.resolve()
  .then(() => main(parseArgs(process.argv.slice(2))))
  .then((code) => {
    process.exitCode = code;
  })
  .catch((err) => {
    say(err instanceof BenchError || err instanceof BuildError ? err.message : err.stack);
    process.exitCode = 2;
  });
