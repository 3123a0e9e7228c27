#!/usr/bin/env node
/**
 * B5 (issue 8): the control plane. How many ImportImage calls per second return a task, and
 * how soon 1,000 WatchTask streams see a task's progress change.
 *
 *   node bench/control-plane.mjs [--quick] [--json] [--runs N] [--calls N] [--in-flight N]
 *        [--watchers N] [--watch-tasks N] [--watch-chunks N] [--skip-mongo] [--watch-mongo]
 *        [--profile DIR] [--tmp-dir DIR]
 *
 * The data path is stubbed, so that only the control plane is measured: bench/plugins holds a
 * no-op store (scheme noop://: every key is 1 MiB of zeros, writes are drained and forgotten)
 * and a no-op converter (raw to raw by rename, describe() without qemu-img), loaded with
 * --plugins-dir. The noop store is the server's default store; seeds are noop://noop/seed.
 * The server runs with its defaults otherwise (maxConcurrentTasks 2), so the queued tasks run
 * through the real task runner in the background while the calls are measured.
 *
 * 1. ImportImage rate (target >= 1000 tasks/s embedded, >= 300 tasks/s MongoDB):
 *    on the embedded store (SQLite), then on MongoDB (FerretDB on a loopback port, started from
 *    ~/.cache/imagetransfer/bin/ferretdb; --skip-mongo leaves it out). After a warm-up of 200
 *    calls, each run makes --calls (2000; --quick 500) ImportImage calls (new image, raw, noop seed) with --in-flight
 *    (64) outstanding at any time over one HTTP/2 connection (Connect protocol, binary), and
 *    rate = calls / wall time. A call answered UNAVAILABLE is made again after 50 ms (counted
 *    in the result). Every call must return a task with an ID, all distinct; the first
 *    warm-up task is watched until it ends, and must SUCCEED (the stubbed pipeline really
 *    runs). The runs do not wait for the backlog of queued tasks: the runner works through it
 *    (2 at a time) while the next run's calls are measured, as a busy server would.
 *    Beside each run, alternating, as many Health.Check calls (a database read, nothing
 *    written) the same way: the floor of this server, client and machine. The target is
 *    absolute; the share of the floor that ImportImage reaches tells it from the machine's state.
 *
 * 2. WatchTask delay (target p99 < 100 ms), embedded (and MongoDB with --watch-mongo): a
 *    server with maxConcurrentTasks = --watch-tasks (100), at most 64 (the config's limit: the
 *    other tasks start, and report progress, as the first ones end), and a noop store whose reads wait for
 *    a gate file, then send --watch-chunks (50) chunks of 64 KiB, one every 100 ms (the host
 *    writes progress at most every 100 ms per task, so each chunk is a progress change).
 *    100 imports are created and claimed, 1,000 watchers attach (10 per task, spread over 10
 *    HTTP/2 connections), and once every watcher has its first snapshot the gate file opens.
 *    Every later message is a change written to the database by the server; its delay is
 *    (arrival time here, Date.now()) - (the task's update_time, set by the server's
 *    Date.now() when it wrote the change). Both clocks are this machine's, so they agree.
 *    p50 and p99 over all deliveries. Each watcher must see its task SUCCEED, and every
 *    version once, in order. The delay includes this client's own decoding, on the same 2
 *    cores as the server: an upper bound of what a remote client would see.
 *
 * --profile DIR starts the servers with `node --cpu-prof --cpu-prof-dir DIR`: one .cpuprofile
 * per server, written when it stops.
 *
 * Exit status: 0 ran (targets are reported, not asserted); 1 a correctness problem (a call
 * without a task, a task that did not succeed, a watcher that missed a change or broke off);
 * 2 the bench itself failed; 130 interrupted.
 */
import { writeFileSync } from "node:fs";
import { mkdtemp } from "node:fs/promises";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { BuildError, ensureBuilt, repoRoot } from "../scripts/ensure-built.mjs";
import { startFerretDb } from "../scripts/lib/mongo-server.mjs";
import {
  BenchError,
  loadApi,
  machineInfo,
  median,
  parseBenchArgs,
  percentile,
  say,
  setWorkRoot,
  sleep,
  stageBenchPlugins,
  startServer,
  summarize,
  targetMet,
  tmpDirOption,
  warmMemory,
} from "./common.mjs";

const TARGET_EMBEDDED = 1000;
const TARGET_MONGO = 300;
const TARGET_WATCH_P99_MS = 100;
const WARMUP_CALLS = 200;
const WATCH_CONNECTIONS = 10;
const WATCH_CHUNK_BYTES = 64 * 1024;
const WATCH_CHUNK_INTERVAL_MS = 100;
/** The most the server's config accepts for maxConcurrentTasks. */
const MAX_CONCURRENT_TASKS = 64;

/** The flags of the header comment. */
const parseArgs = () =>
  parseBenchArgs(import.meta.url, {
    json: { type: "boolean" },
    runs: { type: "count", default: 3 },
    calls: { type: "count", default: 2000, quick: 500 },
    "in-flight": { type: "count", default: 64 },
    watchers: { type: "count", default: 1000 },
    "watch-tasks": { type: "count", default: 100 },
    "watch-chunks": { type: "count", default: 50, quick: 30 },
    "skip-mongo": { type: "boolean" },
    "watch-mongo": { type: "boolean" },
    profile: { type: "string", parse: (v) => resolve(v) },
    "tmp-dir": tmpDirOption,
  });

// ---------------------------------------------------------------------------------------------
// Servers

let serverCount = 0;

/** `itx serve` with the no-op plugins, the noop store as default store, and `extra` config. */
async function startBenchServer(work, plugins, { mongodbUri, noopOptions = {}, extra = {} }) {
  const n = ++serverCount;
  const dataDir = join(work, `server-${n}`);
  const config = {
    stores: [
      { name: "local", plugin: "store-filesystem", options: { root: "images" }, staging: true },
      { name: "noop", plugin: "itx-bench-noop-store", options: noopOptions, default: true },
    ],
    ...extra,
  };
  const configPath = join(work, `config-${n}.json`);
  writeFileSync(configPath, JSON.stringify(config, null, 2));
  const args = ["--config", configPath, "--plugins-dir", plugins];
  // A fresh database per server, so that no run inherits another's backlog.
  if (mongodbUri) args.push("--mongodb-uri", `${mongodbUri}itx-bench-b5-${n}`);
  return startServer(dataDir, args, { nodeArgs: opts.profile ? ["--cpu-prof", "--cpu-prof-dir", opts.profile] : [] });
}

/** Clients over HTTP/2 (h2c), `connections` separate sessions; authenticated with the server's local admin key. */
async function clientsOver(server, connections = 1) {
  const { connect, connectNode, transfer, task } = await loadApi();
  const { readFileSync } = await import("node:fs");
  const health = await import(pathToFileURL(join(repoRoot, "dist/src/gen/grpc/health/v1/health_pb.js")).href);
  const token = readFileSync(join(server.dataDir, "admin-api-key"), "utf8").trim();
  return Array.from({ length: connections }, () => {
    const transport = connectNode.createConnectTransport({
      baseUrl: server.url,
      httpVersion: "2",
      useBinaryFormat: true,
      interceptors: [(next) => (req) => (req.header.set("authorization", `Bearer ${token}`), next(req))],
    });
    return {
      transfer: connect.createClient(transfer.TransferService, transport),
      tasks: connect.createClient(task.TaskService, transport),
      health: connect.createClient(health.Health, transport),
    };
  });
}

// ---------------------------------------------------------------------------------------------
// 1. ImportImage rate

async function importRequest() {
  const { image } = await loadApi();
  return { seedUri: "noop://noop/seed", diskFormat: image.DiskFormat.RAW, name: "b5" };
}

/** `count` Health.Check calls, `inFlight` at a time: the floor, the cheapest call the server answers. */
async function checkMany(client, count, inFlight) {
  let next = 0;
  const worker = async () => {
    while (next++ < count) await client.health.check({});
  };
  await Promise.all(Array.from({ length: Math.min(inFlight, count) }, worker));
}

/**
 * `count` ImportImage calls, `inFlight` at a time; resolves with the task IDs in call order
 * and how many calls were answered UNAVAILABLE and made again after 50 ms, as a client should.
 */
async function importMany(client, count, inFlight) {
  const { connect } = await loadApi();
  const request = await importRequest();
  const ids = new Array(count);
  let next = 0;
  let retried = 0;
  const worker = async () => {
    while (next < count) {
      const i = next++;
      for (let attempt = 1; ; attempt++) {
        try {
          const response = await client.transfer.importImage(request);
          if (!response.task?.id) throw new BenchError(`ImportImage call ${i} returned no task`);
          ids[i] = response.task.id;
          break;
        } catch (err) {
          if (!(err instanceof connect.ConnectError) || err.code !== connect.Code.Unavailable || attempt >= 20) throw err;
          retried++;
          await sleep(50);
        }
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(inFlight, count) }, worker));
  return Object.assign(ids, { retried });
}

/** Watches one task to its end; its final state's name. */
async function finalState(client, id, timeoutMs = 120_000) {
  const { task: taskPb } = await loadApi();
  const signal = AbortSignal.timeout(timeoutMs);
  let last;
  try {
    for await (const message of client.tasks.watchTask({ id }, { signal })) last = message.task;
  } catch (err) {
    return `watch failed: ${err.message}`;
  }
  if (!last) return "no snapshot";
  return last.state === taskPb.TaskState.SUCCEEDED ? "SUCCEEDED" : `${taskPb.TaskState[last.state]}${last.error ? ` (${last.error.reason}: ${last.error.message})` : ""}`;
}

async function measureImportRate(label, server, problems) {
  const [client] = await clientsOver(server, 1);
  say(`${label}: warm-up, ${WARMUP_CALLS} calls`);
  const warm = await importMany(client, WARMUP_CALLS, opts.inFlight);
  const warmState = await finalState(client, warm[0]);
  if (warmState !== "SUCCEEDED") problems.push(`${label}: a no-op import ended ${warmState}, not SUCCEEDED`);
  await checkMany(client, WARMUP_CALLS, opts.inFlight);
  const rates = [];
  const floor = [];
  let unavailable = warm.retried;
  for (let run = 1; run <= opts.runs; run++) {
    // The floor alternates with the imports, so both meet the same machine (and the same backlog of tasks).
    const measureFloor = async () => {
      const started = performance.now();
      await checkMany(client, opts.calls, opts.inFlight);
      floor.push(opts.calls / ((performance.now() - started) / 1000));
    };
    if (run % 2 === 0) await measureFloor();
    const started = performance.now();
    const ids = await importMany(client, opts.calls, opts.inFlight);
    const seconds = (performance.now() - started) / 1000;
    rates.push(opts.calls / seconds);
    if (run % 2 === 1) await measureFloor();
    unavailable += ids.retried;
    if (ids.retried > 0) say(`${label}: run ${run}: ${ids.retried} calls answered UNAVAILABLE and were made again`);
    if (new Set(ids).size !== opts.calls) problems.push(`${label}: ${opts.calls} calls returned ${new Set(ids).size} distinct task IDs`);
    say(`${label}: run ${run}/${opts.runs}: ${opts.calls} tasks in ${seconds.toFixed(2)} s = ${Math.round(rates.at(-1))} tasks/s (Health.Check: ${Math.round(floor.at(-1))} calls/s)`);
  }
  return { rates, floor, unavailable };
}

// ---------------------------------------------------------------------------------------------
// 2. WatchTask delay

async function measureWatchDelay(label, work, plugins, mongodbUri, problems) {
  const { task: taskPb } = await loadApi();
  const gateFile = join(work, `gate-${serverCount + 1}`);
  const server = await startBenchServer(work, plugins, {
    mongodbUri,
    noopOptions: { objectBytes: WATCH_CHUNK_BYTES * opts.watchChunks, chunkBytes: WATCH_CHUNK_BYTES, chunkIntervalMs: WATCH_CHUNK_INTERVAL_MS, gateFile },
    extra: { maxConcurrentTasks: Math.min(opts.watchTasks, MAX_CONCURRENT_TASKS) },
  });
  try {
    const clients = await clientsOver(server, WATCH_CONNECTIONS);
    const ids = await importMany(clients[0], opts.watchTasks, opts.inFlight);
    // Wait until the server runs as many as it may (RUNNING, their reads waiting at the gate); the rest start as those end.
    const deadline = Date.now() + 60_000;
    const runnable = Math.min(ids.length, MAX_CONCURRENT_TASKS);
    for (;;) {
      const tasks = await Promise.all(ids.map((id) => clients[0].tasks.getTask({ id })));
      const running = tasks.filter((t) => t.task.state === taskPb.TaskState.RUNNING).length;
      if (running >= runnable) break;
      if (Date.now() > deadline) throw new BenchError(`${label}: only ${running} of ${runnable} tasks were running after 60 s`);
      await sleep(200);
    }
    say(`${label}: ${ids.length} tasks running; attaching ${opts.watchers} watchers`);
    const delays = [];
    const worst = { delay: -1, what: "" };
    let snapshots = 0;
    let allAttached;
    const attached = new Promise((r) => (allAttached = r));
    const watchOne = async (w) => {
      const client = clients[w % clients.length];
      const id = ids[w % ids.length];
      let last;
      let first = true;
      try {
        for await (const { task } of client.tasks.watchTask({ id }, { signal: AbortSignal.timeout(300_000) })) {
          const arrived = Date.now();
          if (first) {
            first = false;
            if (++snapshots === opts.watchers) allAttached();
          } else {
            const written = Number(task.updateTime.seconds) * 1000 + Math.floor(task.updateTime.nanos / 1e6);
            delays.push(arrived - written);
            if (arrived - written > worst.delay) Object.assign(worst, { delay: arrived - written, what: `${taskPb.TaskState[task.state]} ${task.progress?.stage} ${task.progress?.bytesDone}/${task.progress?.bytesTotal} v${task.version} (previous v${last.version} ${last.progress?.stage})` });
            if (task.version !== last.version + 1n) problems.push(`${label}: watcher ${w} of task ${id} got version ${task.version} after ${last.version}`);
          }
          last = task;
        }
        if (last?.state !== taskPb.TaskState.SUCCEEDED) problems.push(`${label}: watcher ${w}: task ${id} ended ${last ? taskPb.TaskState[last.state] : "without a snapshot"}`);
      } catch (err) {
        problems.push(`${label}: watcher ${w} of task ${id} broke off: ${err.message}`);
        if (first && ++snapshots === opts.watchers) allAttached();
      }
    };
    const watching = Promise.all(Array.from({ length: opts.watchers }, (_, w) => watchOne(w)));
    await Promise.race([attached, sleep(120_000).then(() => { throw new BenchError(`${label}: only ${snapshots} of ${opts.watchers} watchers attached in 120 s`); })]);
    say(`${label}: all watchers attached; opening the gate (${opts.watchChunks} progress steps per task, one every ${WATCH_CHUNK_INTERVAL_MS} ms)`);
    writeFileSync(gateFile, "");
    const started = performance.now();
    await watching;
    const p50 = percentile(delays, 50);
    const p99 = percentile(delays, 99);
    say(`${label}: ${delays.length} deliveries in ${((performance.now() - started) / 1000).toFixed(1)} s: p50 ${p50} ms, p99 ${p99} ms, max ${Math.max(...delays)} ms (${worst.what})`);
    if (delays.length === 0) problems.push(`${label}: no progress change reached a watcher`);
    return { delays, p50, p99 };
  } finally {
    await server.stop();
  }
}

// ---------------------------------------------------------------------------------------------

/**
 * The target is absolute; the floor beside it tells the machine's state: the share of the
 * Health.Check rate that ImportImage reaches is what the control plane costs on top of the framework.
 */
function rateResult(name, { rates, floor, unavailable }, min) {
  const ofFloor = Math.round((median(rates) / median(floor)) * 100) / 100;
  const retried = unavailable > 0 ? `; ${unavailable} calls answered UNAVAILABLE, made again` : "";
  const label = `ImportImage to a task (${ofFloor} of Health.Check's ${Math.round(median(floor))} calls/s${retried})`;
  const result = {
    name: `${name} (${ofFloor} of Health.Check's rate)`,
    unit: "tasks/s",
    better: "higher",
    product: summarize(label, rates),
    baseline: null,
    ratio: null,
    target: { min },
    floor: summarize("Health.Check (a database read), same server and client, alternating", floor),
    ofFloor,
    unavailableCalls: unavailable,
  };
  result.met = targetMet(result);
  return result;
}

function watchResult(name, watch) {
  const product = { label: `p99 over ${watch.delays.length} deliveries (p50 ${watch.p50} ms)`, median: watch.p99, min: watch.p50, max: Math.max(...watch.delays), samples: [watch.p50, watch.p99] };
  const result = { name, unit: "ms", better: "lower", product, baseline: null, ratio: null, target: { max: TARGET_WATCH_P99_MS }, p50: watch.p50, p99: watch.p99 };
  result.met = targetMet(result);
  return result;
}

let opts;

async function main() {
  opts = parseArgs();
  await ensureBuilt({ log: say });
  await warmMemory();
  const work = await mkdtemp(join(opts.tmpDir, "itx-bench-b5-"));
  setWorkRoot(work);
  const plugins = await stageBenchPlugins(work, ["noop-store", "noop-converter"]);
  const problems = [];
  const results = [];

  const embedded = await startBenchServer(work, plugins, {});
  try {
    results.push(rateResult(`ImportImage, embedded store, ${opts.inFlight} in flight`, await measureImportRate("embedded", embedded, problems), TARGET_EMBEDDED));
  } finally {
    await embedded.stop();
  }

  let ferret;
  try {
    if (!opts.skipMongo || opts.watchMongo) ferret = await startFerretDb({ parentDir: work, label: "bench" });
    if (!opts.skipMongo) {
      const server = await startBenchServer(work, plugins, { mongodbUri: ferret.uri });
      try {
        results.push(rateResult(`ImportImage, MongoDB (FerretDB), ${opts.inFlight} in flight`, await measureImportRate("mongodb", server, problems), TARGET_MONGO));
      } finally {
        await server.stop();
      }
    }
    const watch = await measureWatchDelay("watch embedded", work, plugins, undefined, problems);
    results.push(watchResult(`WatchTask delay p99, ${opts.watchers} watchers over ${opts.watchTasks} tasks, embedded`, watch));
    if (opts.watchMongo) {
      const watchMongo = await measureWatchDelay("watch mongodb", work, plugins, ferret.uri, problems);
      results.push(watchResult(`WatchTask delay p99, ${opts.watchers} watchers over ${opts.watchTasks} tasks, MongoDB`, watchMongo));
    }
  } finally {
    await ferret?.stop();
  }

  // Long lists of the same problem help nobody: keep the first few of each kind.
  const shown = problems.slice(0, 20);
  if (problems.length > shown.length) shown.push(`... and ${problems.length - shown.length} more problems`);
  const output = { benchmark: "B5", title: "Control plane: ImportImage rate and WatchTask delay (no-op store and converter)", machine: await machineInfo(), mode: opts.quick ? "quick" : "full", results, problems: shown };
  for (const r of results) say(`${r.name}: ${r.product.median} ${r.unit} (target ${JSON.stringify(r.target)}) ${r.met ? "met" : "NOT met"}`);
  if (opts.json) process.stdout.write(JSON.stringify(output) + "\n");
  for (const p of shown) say(`problem: ${p}`);
  return problems.length > 0 ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (err) => {
    process.stderr.write(`bench: ${err instanceof BenchError || err instanceof BuildError ? err.message : err.stack}\n`);
    // bench/all.mjs shows this error in its table and report.
    if (opts?.json) process.stdout.write(JSON.stringify({ benchmark: "B5", results: [], problems: [], error: String(err.message ?? err) }) + "\n");
    process.exit(2);
  },
);
