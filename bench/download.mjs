#!/usr/bin/env node
/**
 * Issue 8, B2 and B3: how fast an image leaves ImageTransfer, against nginx serving the same file.
 *
 *   node bench/download.mjs [--quick] [--runs N] [--size-mib M] [--json] [--tmp-dir DIR]
 *                           [--grpc-window BYTES] [--profile b2,grpc-js,connect] [--profile-runs N] [--profile-dir DIR]
 *
 * Setup (not timed): a raw disk of --size-mib (default 2048; --quick 512), first half random,
 * second half zeros, uploaded through CreateUploadUrl (curl PUT) and imported as RAW on one
 * `itx serve`. CreateDownloadUrl names the image's object; nginx (Debian's nginx-light, installed
 * with apt-get when missing and run as root) is started on a free loopback port with a generated
 * config, its pid, logs and temp files under the bench's temp dir, serving the store's directory.
 * The file is read once to warm the page cache, and every path downloads once untimed (warm-up)
 * and once more while its bytes are hashed and compared with the file's sha256.
 *
 * Timed, --runs times (default 5; --quick 3), alternating in each repetition:
 *   nginx      curl -o /dev/null of the file from nginx (curl's own %{speed_download})
 *   B2         curl -o /dev/null of the download URL from CreateDownloadUrl
 *   B3 grpc-js DownloadImageData to a @grpc/grpc-js client built from the .proto files, with the
 *              channel option grpc-node.flow_control_window = --grpc-window (default 16 MiB;
 *              grpc-js's own default is 64 KiB)
 *   B3 connect DownloadImageData to a Connect client (createGrpcTransport, HTTP/2)
 *              Both gRPC clients run in this process with V8's old-generation limit at 3x the live
 *              heap after a full collection, as the server runs (src/cli/serve.ts) and as the
 *              README advises clients that stream GiBs: without it they spent 2.0-2.4 CPU-s per
 *              GiB here instead of 1.2.
 * B2's target is 0.9 x nginx and B3's 0.4 x nginx, against the same run's nginx median.
 *
 * --profile NAMES: afterwards, for each named path, restarts the server under `node --cpu-prof`,
 * downloads through that one path --profile-runs times (default 2), stops the server and prints
 * where its CPU time went after start-up (self time by function, GC share, inclusive time of the
 * store read wrappers) to stderr and into the JSON ("profiles"). Every run also records the
 * server's CPU seconds per GiB (from /proc) and, for the gRPC clients, which run in this
 * process, the client's ("cpuSecondsPerGiB").
 *
 * --json prints one JSON object (the shared shape of issue 8; "benchmark": "B2+B3", and each
 * result names its own "benchmark") on stdout; progress goes to stderr. Exit status: 0 ran (targets reported, not
 * asserted); 1 a correctness problem (wrong bytes or size); 2 the bench failed; 130 interrupted.
 */
import { spawn, spawnSync } from "node:child_process";
import { setFlagsFromString } from "node:v8";
import { createHash } from "node:crypto";
import { createReadStream, mkdirSync, readdirSync, readFileSync, rmSync, statSync, statfsSync, writeFileSync } from "node:fs";
import { mkdtemp } from "node:fs/promises";
import net from "node:net";
import { loadavg } from "node:os";
import { dirname, join, resolve } from "node:path";
import { pipeline } from "node:stream/promises";
import { BuildError, cliPath, ensureBuilt, repoRoot } from "../scripts/ensure-built.mjs";
import { BenchError, clientsFor, cpuSeconds, loadApi, median, MiB, parseBenchArgs, run, say, setWorkRoot, signalChild, sizeLabel, sleep, startServer, stopServer, tmpDirOption, track, warmMemory, writeRawDisk } from "./common.mjs";

setFlagsFromString("--heap-growing-percent=200");

const TARGET_B2 = 0.9;
const TARGET_B3 = 0.4;
const DEFAULT_GRPC_WINDOW = 16 * MiB;

// ---------------------------------------------------------------------------------------------
// Arguments

/** The flags of the header comment. */
const parseArgs = () =>
  parseBenchArgs(import.meta.url, {
    runs: { type: "count", default: 5, quick: 3 },
    "size-mib": { type: "count", default: 2048, quick: 512 },
    json: { type: "boolean" },
    "tmp-dir": tmpDirOption,
    "grpc-window": { type: "count", default: DEFAULT_GRPC_WINDOW },
    profile: {
      type: "string",
      parse: (value) => {
        const names = value.split(",");
        if (!names.every((p) => PATHS.includes(p))) throw new BenchError(`--profile takes a comma-separated list of ${PATHS.join(", ")}`);
        return names;
      },
    },
    "profile-dir": { type: "string", parse: (v) => resolve(v) },
    "profile-runs": { type: "count", default: 2 },
  });

const PATHS = ["b2", "grpc-js", "connect"];

// ---------------------------------------------------------------------------------------------
// nginx: our own instance on loopback, never the system's service

function ensureNginx() {
  const found = () => spawnSync("nginx", ["-v"], { stdio: "ignore" }).status === 0;
  if (found()) return;
  if (process.getuid?.() !== 0) throw new BenchError("nginx is not installed; as root: apt-get install -y nginx-light");
  say("nginx is not installed: apt-get install -y nginx-light (its service is not started)");
  const env = { ...process.env, DEBIAN_FRONTEND: "noninteractive" };
  let r = spawnSync("apt-get", ["install", "-y", "nginx-light"], { stdio: ["ignore", "ignore", "pipe"], env });
  if (r.status !== 0) {
    spawnSync("apt-get", ["update"], { stdio: "ignore", env });
    r = spawnSync("apt-get", ["install", "-y", "nginx-light"], { stdio: ["ignore", "ignore", "pipe"], env });
  }
  if (r.status !== 0 || !found()) throw new BenchError(`cannot install nginx-light: ${String(r.stderr).trim()}`);
}

function freePort() {
  return new Promise((resolvePromise, reject) => {
    const s = net.createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolvePromise(port));
    });
  });
}

/** nginx in the foreground (so its master is our child), serving `root` on a free loopback port. */
async function startNginx(dir, root) {
  mkdirSync(join(dir, "temp"), { recursive: true });
  const port = await freePort();
  const temp = (name) => `${name}_temp_path ${join(dir, "temp", name)};`;
  const conf = [
    "daemon off;",
    "master_process on;",
    "worker_processes 1;",
    // As root, workers would run as nobody, who may not read the store's files.
    process.getuid?.() === 0 ? "user root;" : "",
    `pid ${join(dir, "nginx.pid")};`,
    `error_log ${join(dir, "error.log")} warn;`,
    "events { worker_connections 64; }",
    "http {",
    "  access_log off;",
    `  ${temp("client_body")} ${temp("proxy")} ${temp("fastcgi")} ${temp("uwsgi")} ${temp("scgi")}`,
    "  sendfile on; tcp_nopush on;",
    "  default_type application/octet-stream;",
    `  server { listen 127.0.0.1:${port}; root ${root}; location / { } }`,
    "}",
  ].join("\n");
  const confPath = join(dir, "nginx.conf");
  writeFileSync(confPath, conf + "\n");
  const child = track(spawn("nginx", ["-p", dir, "-c", confPath, "-e", join(dir, "error.log")], { stdio: ["ignore", "ignore", "pipe"] }));
  let stderr = "";
  child.stderr.on("data", (d) => (stderr += d));
  const deadline = Date.now() + 10_000;
  for (;;) {
    if (child.exitCode !== null) throw new BenchError(`nginx exited with ${child.exitCode}: ${stderr.trim()} ${readFileSafe(join(dir, "error.log"))}`);
    if (await canConnect(port)) break;
    if (Date.now() > deadline) throw new BenchError(`nginx did not listen on 127.0.0.1:${port} in 10 s`);
    await sleep(50);
  }
  return {
    url: `http://127.0.0.1:${port}`,
    stop: () =>
      new Promise((resolvePromise) => {
        if (child.exitCode !== null || child.signalCode !== null) return resolvePromise();
        child.once("exit", () => resolvePromise());
        signalChild(child, "SIGQUIT"); // nginx's graceful shutdown
        setTimeout(() => signalChild(child, "SIGKILL"), 5_000).unref();
      }),
  };
}

function canConnect(port) {
  return new Promise((resolvePromise) => {
    const s = net.connect(port, "127.0.0.1");
    s.once("connect", () => (s.destroy(), resolvePromise(true)));
    s.once("error", () => resolvePromise(false));
  });
}

function readFileSafe(path) {
  try {
    return readFileSync(path, "utf8").trim();
  } catch {
    return "";
  }
}

// ---------------------------------------------------------------------------------------------
// The image

async function importImage(server, rawPath) {
  const { image: imagePb, task: taskPb } = await loadApi();
  const clients = await clientsFor(server);
  const upload = await clients.transfer.createUploadUrl({});
  await run("curl", ["-sS", "--fail", "-X", upload.method || "PUT", "-T", rawPath, "-o", "/dev/null", upload.url]);
  const imported = await clients.transfer.importImage({ seedUri: upload.seedUri, diskFormat: imagePb.DiskFormat.RAW, name: "bench-download" });
  const terminal = new Set([taskPb.TaskState.SUCCEEDED, taskPb.TaskState.FAILED, taskPb.TaskState.CANCELED]);
  let last;
  for (let tries = 0; !last || !terminal.has(last.state); tries++) {
    try {
      for await (const response of clients.tasks.watchTask({ id: imported.task.id })) if (response.task) last = response.task;
    } catch (err) {
      if (tries > 100) throw err;
      await sleep(200);
    }
  }
  if (last.state !== taskPb.TaskState.SUCCEEDED) throw new BenchError(`import ended ${taskPb.TaskState[last.state]}: ${last.error?.reason ?? ""} ${last.error?.message ?? ""}`);
  return last.result?.imageId || imported.image?.id;
}

/** The download URL, and the file behind it in the filesystem store (root "images" in the data dir). */
async function downloadTarget(server, imageId) {
  const clients = await clientsFor(server);
  const made = await clients.transfer.createDownloadUrl({ imageId, expiresInSeconds: 24 * 3600 });
  const path = new URL(made.url).pathname; // /v1/data/STORE/KEY
  const m = /^\/v1\/data\/([^/]+)\/(.+)$/.exec(path);
  if (!m) throw new BenchError(`unexpected download URL ${made.url}`);
  const key = decodeURIComponent(m[2]);
  const file = join(server.dataDir, "images", key);
  if (statSync(file).size !== Number(made.size)) throw new BenchError(`${file} is not the image's object (${statSync(file).size} != ${made.size} bytes)`);
  return { url: made.url, size: Number(made.size), file, key };
}

// ---------------------------------------------------------------------------------------------
// The clients

/** curl -o /dev/null: curl's own average speed (bytes/s) and time. */
async function curlDownload(url, size) {
  const { stdout } = await run("curl", ["-sS", "--fail", "-o", "/dev/null", "-w", "%{speed_download} %{time_total} %{size_download} %{http_code}", url]);
  const [speed, time, bytes, code] = stdout.trim().split(/\s+/).map(Number);
  if (bytes !== size || code !== 200) throw new BenchError(`curl ${url.split("?")[0]}: ${bytes} bytes, HTTP ${code} (expected ${size}, 200)`);
  return { mbps: speed / 1e6, seconds: time };
}

/** The same download's bytes hashed (untimed check). */
async function curlSha256(url) {
  const child = track(spawn("curl", ["-sS", "--fail", url], { stdio: ["ignore", "pipe", "inherit"] }));
  const hash = createHash("sha256");
  await pipeline(child.stdout, hash);
  return hash.digest("hex");
}

let grpcModules;
async function grpcJsClient(serverUrl, token, window) {
  grpcModules ??= { grpc: await import("@grpc/grpc-js"), loader: await import("@grpc/proto-loader") };
  const { grpc, loader } = grpcModules;
  const def = loader.loadSync(["imagetransfer/v1/transfer.proto"], { includeDirs: [join(repoRoot, "proto")], longs: String, enums: String, defaults: true });
  const Transfer = grpc.loadPackageDefinition(def).imagetransfer.v1.TransferService;
  const options = window === undefined ? {} : { "grpc-node.flow_control_window": window };
  const client = new Transfer(new URL(serverUrl).host, grpc.credentials.createInsecure(), options);
  return {
    download(imageId, onChunk) {
      const metadata = new grpc.Metadata();
      metadata.set("authorization", `Bearer ${token}`);
      return new Promise((resolvePromise, reject) => {
        const call = client.downloadImageData({ imageId }, metadata);
        let bytes = 0;
        call.on("data", (m) => {
          bytes += m.chunk.length;
          onChunk?.(m.chunk);
        });
        call.on("error", reject);
        call.on("end", () => resolvePromise(bytes));
      });
    },
    close: () => client.close(),
  };
}

/**
 * A Connect gRPC client over HTTP/2. With `window`, its stream and connection flow-control
 * windows are raised to that (Node's http2 client has 64 KiB for both by default).
 */
async function connectClient(serverUrl, token, window) {
  const { connect, connectNode, transfer } = await loadApi();
  let sessionManager;
  if (window !== undefined) {
    const tuned = new WeakSet();
    sessionManager = new (class extends connectNode.Http2SessionManager {
      async request(...args) {
        const stream = await super.request(...args);
        if (!tuned.has(stream.session)) {
          tuned.add(stream.session);
          stream.session.setLocalWindowSize(window);
        }
        return stream;
      }
    })(serverUrl, {}, { settings: { initialWindowSize: window } });
  }
  const transport = connectNode.createGrpcTransport({
    baseUrl: serverUrl,
    sessionManager,
    interceptors: [(next) => (req) => (req.header.set("authorization", `Bearer ${token}`), next(req))],
  });
  const client = connect.createClient(transfer.TransferService, transport);
  return {
    async download(imageId, onChunk) {
      let bytes = 0;
      for await (const { chunk } of client.downloadImageData({ imageId })) {
        bytes += chunk.length;
        onChunk?.(chunk);
      }
      return bytes;
    },
    close() {},
  };
}

async function timed(size, fn) {
  const started = performance.now();
  const bytes = await fn();
  const ms = performance.now() - started;
  if (bytes !== size) throw new BenchError(`received ${bytes} bytes, expected ${size}`);
  return { mbps: size / 1e3 / ms, seconds: ms / 1000 };
}

/** `itx serve` under `node --cpu-prof` (not allowed in NODE_OPTIONS), on the same data dir. */
async function startProfiledServer(dataDir, profileDir) {
  const child = track(
    spawn(process.execPath, ["--cpu-prof", `--cpu-prof-dir=${profileDir}`, cliPath, "serve", "--listen", "127.0.0.1:0", "--data-dir", dataDir, "--log-level", "warn"], {
      cwd: repoRoot,
      env: Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("ITX_") && k !== "MONGODB_URI")),
      stdio: ["ignore", "pipe", "pipe"],
    }),
  );
  let output = "";
  child.stderr.on("data", (d) => (output += d));
  const url = await new Promise((resolvePromise, reject) => {
    const timer = setTimeout(() => reject(new BenchError(`profiled server did not start in 30 s:\n${output}`)), 30_000);
    child.stdout.on("data", (d) => {
      output += d;
      const m = /listening on (\S+)/.exec(output);
      if (m) {
        clearTimeout(timer);
        resolvePromise(m[1]);
      }
    });
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new BenchError(`profiled server exited with ${code}:\n${output}`));
    });
  });
  return { url, pid: child.pid, dataDir, process: child, stop: () => stopServer(child) };
}

// ---------------------------------------------------------------------------------------------
// CPU profiles: self time by function, GC share, and the read wrappers' inclusive time

function summarizeProfile(file, skipMs = 0) {
  const profile = JSON.parse(readFileSync(file, "utf8"));
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const selfUs = new Map();
  let at = 0;
  for (let i = 0; i < profile.samples.length; i++) {
    const id = profile.samples[i];
    at += profile.timeDeltas[i] ?? 0;
    if (at < skipMs * 1000) continue;
    selfUs.set(id, (selfUs.get(id) ?? 0) + (profile.timeDeltas[i] ?? 0));
  }
  const label = (n) => {
    const f = n.callFrame;
    const where = f.url ? `${f.url.replace(/^file:\/\//, "").replace(repoRoot, "").replace(/^.*node_modules\//, "")}:${f.lineNumber + 1}` : "";
    return `${f.functionName || "(anonymous)"}${where ? ` ${where}` : ""}`;
  };
  const total = [...selfUs.values()].reduce((a, b) => a + b, 0);
  const self = new Map();
  for (const [id, us] of selfUs) {
    const key = label(byId.get(id));
    self.set(key, (self.get(key) ?? 0) + us);
  }
  // Inclusive time per function (each sample counted once per function on its stack).
  const parent = new Map();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const inclusive = new Map();
  for (const [id, us] of selfUs) {
    const seen = new Set();
    for (let cur = id; cur !== undefined; cur = parent.get(cur)) {
      const key = label(byId.get(cur));
      if (seen.has(key)) continue;
      seen.add(key);
      inclusive.set(key, (inclusive.get(key) ?? 0) + us);
    }
  }
  const pct = (us) => Math.round((us / total) * 1000) / 10;
  const idle = self.get("(idle)") ?? 0;
  const busy = total - idle;
  const pctBusy = (us) => Math.round((us / busy) * 1000) / 10;
  const top = [...self.entries()].filter(([k]) => k !== "(idle)").sort((a, b) => b[1] - a[1]).slice(0, 20).map(([fn, us]) => ({ fn, ms: Math.round(us / 1000), pctOfBusy: pctBusy(us) }));
  const wrappers = /guardedChunks|resumingRead|nextChunk|traceStore|store-retry|guard\.js|tracing\.js|downloadImageData|Buffer\.concat|concat /;
  const inclusiveOfInterest = [...inclusive.entries()].filter(([k]) => wrappers.test(k)).sort((a, b) => b[1] - a[1]).slice(0, 15).map(([fn, us]) => ({ fn, ms: Math.round(us / 1000), pctOfBusy: pctBusy(us) }));
  return {
    file,
    totalMs: Math.round(total / 1000),
    idlePct: pct(idle),
    gcPctOfBusy: pctBusy(self.get("(garbage collector)") ?? 0),
    programPctOfBusy: pctBusy(self.get("(program)") ?? 0),
    top,
    inclusiveOfInterest,
  };
}

// ---------------------------------------------------------------------------------------------

const stats = (label, samples) => ({ label, median: round(median(samples)), min: round(Math.min(...samples)), max: round(Math.max(...samples)), samples: samples.map(round) });
const round = (x) => Math.round(x * 10) / 10;

function resultOf(id, name, product, baseline, target) {
  const ratio = Math.round((product.median / baseline.median) * 100) / 100;
  return { benchmark: id, name, unit: "MB/s", better: "higher", product, baseline, ratio, target: { ratio: target }, met: ratio >= target };
}

async function main(opts) {
  if (process.platform !== "linux") throw new BenchError("needs Linux");
  if (spawnSync("curl", ["--version"], { stdio: "ignore" }).status !== 0) throw new BenchError("curl is not installed (apt-get install curl)");
  ensureNginx();
  mkdirSync(opts.tmpDir, { recursive: true });
  const fsStats = statfsSync(opts.tmpDir);
  const free = Number(fsStats.bavail) * Number(fsStats.bsize);
  if (free < 2.2 * opts.sizeMib * MiB) throw new BenchError(`only ${Math.round(free / MiB)} MiB free in ${opts.tmpDir}; need ${Math.ceil(2.2 * opts.sizeMib)} MiB`);
  await ensureBuilt({ log: say });
  await warmMemory();

  const workRoot = await mkdtemp(join(resolve(opts.tmpDir), "itx-bench-download-"));
  setWorkRoot(workRoot);
  const size = opts.sizeMib * MiB;
  const result = {
    benchmark: "B2+B3",
    title: "Download URL (B2) and DownloadImageData (B3) against nginx",
    machine: { cpus: Number(spawnSync("nproc", [], { encoding: "utf8" }).stdout.trim()) || undefined, loadavg: loadavg().map((x) => round(x)), node: process.version },
    size: sizeLabel(opts.sizeMib),
    runs: opts.runs,
    grpcJsFlowControlWindow: opts.grpcWindow,
    results: [],
    problems: [],
  };

  const raw = join(workRoot, "disk.raw");
  writeRawDisk(raw, size);
  const dataDir = join(workRoot, "data");
  let server = await startServer(dataDir);
  say(`server pid ${server.pid} at ${server.url}; importing the ${sizeLabel(opts.sizeMib)} raw image`);
  const imageId = await importImage(server, raw);
  rmSync(raw);
  const target = await downloadTarget(server, imageId);
  const nginx = await startNginx(join(workRoot, "nginx"), dirname(target.file));
  const nginxUrl = `${nginx.url}/${target.file.split("/").pop()}`;
  const token = readFileSync(join(dataDir, "admin-api-key"), "utf8").trim();
  say(`image ${imageId} (${target.size} bytes) at ${target.file}; nginx at ${nginx.url}`);

  try {
    // Warm the page cache, and learn the file's hash for the correctness checks.
    const expected = createHash("sha256");
    await pipeline(createReadStream(target.file, { highWaterMark: 4 * MiB }), expected);
    const sha = expected.digest("hex");

    let grpcJs = await grpcJsClient(server.url, token, opts.grpcWindow);
    let connect = await connectClient(server.url, token, opts.grpcWindow);
    const paths = {
      nginx: () => curlDownload(nginxUrl, target.size),
      b2: () => curlDownload(target.url, target.size),
      "grpc-js": () => timed(target.size, () => grpcJs.download(imageId)),
      connect: () => timed(target.size, () => connect.download(imageId)),
    };

    // Correctness (untimed) and warm-up: every path's bytes hashed once.
    const hashed = async (client) => {
      const h = createHash("sha256");
      await client.download(imageId, (chunk) => h.update(chunk));
      return h.digest("hex");
    };
    const checks = { nginx: await curlSha256(nginxUrl), b2: await curlSha256(target.url), "grpc-js": await hashed(grpcJs), connect: await hashed(connect) };
    for (const [name, got] of Object.entries(checks)) if (got !== sha) result.problems.push(`${name}: the downloaded bytes' sha256 ${got} differs from the file's ${sha}`);

    const samples = { nginx: [], b2: [], "grpc-js": [], connect: [] };
    // CPU seconds per GiB moved, of the server and (for the in-process gRPC clients) of the client.
    const cpu = { b2: { server: [] }, "grpc-js": { server: [], client: [] }, connect: { server: [], client: [] } };
    const perGiB = (cpuS) => cpuS * (2 ** 30 / target.size);
    for (let i = 1; i <= opts.runs; i++) {
      const line = [];
      for (const name of Object.keys(samples)) {
        const serverBefore = cpuSeconds([server.pid]);
        const clientBefore = process.cpuUsage();
        const r = await paths[name]();
        const clientUsed = process.cpuUsage(clientBefore);
        if (cpu[name]) {
          cpu[name].server.push(perGiB(cpuSeconds([server.pid]) - serverBefore));
          cpu[name].client?.push(perGiB((clientUsed.user + clientUsed.system) / 1e6));
        }
        samples[name].push(r.mbps);
        line.push(`${name} ${Math.round(r.mbps)} MB/s`);
      }
      say(`run ${i}/${opts.runs}: ${line.join(", ")}`);
    }
    result.cpuSecondsPerGiB = Object.fromEntries(
      Object.entries(cpu).map(([name, c]) => [name, Object.fromEntries(Object.entries(c).map(([side, v]) => [side, Math.round(median(v) * 100) / 100]))]),
    );
    say(`CPU seconds per GiB (medians): ${JSON.stringify(result.cpuSecondsPerGiB)}`);
    grpcJs.close();
    connect.close();

    const base = stats("nginx (curl)", samples.nginx);
    result.results.push(resultOf("B2", `${sizeLabel(opts.sizeMib)} through a download URL (curl)`, stats("itx download URL (curl)", samples.b2), base, TARGET_B2));
    result.results.push(
      resultOf("B3", `${sizeLabel(opts.sizeMib)} DownloadImageData to @grpc/grpc-js (flow_control_window ${opts.grpcWindow} bytes; default 64 KiB)`, stats("itx DownloadImageData, grpc-js client", samples["grpc-js"]), base, TARGET_B3),
    );
    result.results.push(resultOf("B3", `${sizeLabel(opts.sizeMib)} DownloadImageData to a Connect gRPC client (HTTP/2)`, stats("itx DownloadImageData, Connect client", samples.connect), base, TARGET_B3));

    for (const path of opts.profile ?? []) {
      await server.stop();
      const profileDir = join(opts.profileDir ?? join(workRoot, "profile"), path);
      mkdirSync(profileDir, { recursive: true });
      const spawned = performance.now();
      server = await startProfiledServer(dataDir, profileDir);
      grpcJs = await grpcJsClient(server.url, token, opts.grpcWindow);
      connect = await connectClient(server.url, token, opts.grpcWindow);
      const url = (await downloadTarget(server, imageId)).url;
      const one = { b2: () => curlDownload(url, target.size), "grpc-js": paths["grpc-js"], connect: paths.connect }[path];
      const profiled = [];
      const skipMs = performance.now() - spawned; // start-up and set-up are not what is measured
      for (let i = 0; i < opts.profileRuns; i++) profiled.push((await one()).mbps);
      grpcJs.close();
      await server.stop();
      const files = readdirSync(profileDir).filter((f) => f.endsWith(".cpuprofile")).map((f) => join(profileDir, f));
      if (files.length === 0) throw new BenchError(`the server wrote no CPU profile into ${profileDir}`);
      const summary = { path, mbpsUnderProfiler: profiled.map(round), ...summarizeProfile(files[0], skipMs) };
      (result.profiles ??= []).push(summary);
      printProfile(summary);
    }
  } finally {
    await nginx.stop();
    await server.stop();
  }
  result.machine.loadavgAtEnd = loadavg().map((x) => round(x));
  return result;
}

function printProfile(p) {
  say(`CPU profile of the server (${p.path}; ${p.mbpsUnderProfiler.join(", ")} MB/s under the profiler): ${p.totalMs} ms, idle ${p.idlePct}%, GC ${p.gcPctOfBusy}% of busy, (program) ${p.programPctOfBusy}%`);
  for (const t of p.top) say(`  self ${String(t.pctOfBusy).padStart(5)}%  ${String(t.ms).padStart(6)} ms  ${t.fn}`);
  say("  inclusive time of the read path:");
  for (const t of p.inclusiveOfInterest) say(`  incl ${String(t.pctOfBusy).padStart(5)}%  ${String(t.ms).padStart(6)} ms  ${t.fn}`);
}

function printTable(r) {
  const rows = [["id", "what", "product MB/s (min-max)", "nginx MB/s", "ratio", "target", "met"]];
  for (const x of r.results) {
    rows.push([x.benchmark, x.product.label, `${x.product.median} (${x.product.min}-${x.product.max})`, String(x.baseline.median), String(x.ratio), `>= ${x.target.ratio}`, x.met ? "yes" : "no"]);
  }
  const widths = rows[0].map((_, c) => Math.max(...rows.map((row) => row[c].length)));
  const out = rows.map((row) => row.map((cell, c) => cell.padEnd(widths[c])).join("  "));
  out.splice(1, 0, widths.map((w) => "-".repeat(w)).join("  "));
  const lines = [`${r.title}: ${r.size} raw image, ${r.runs} runs alternating, ${r.machine.cpus} CPUs, load ${r.machine.loadavg.join(" ")}`, "", ...out];
  for (const p of r.problems) lines.push(`PROBLEM: ${p}`);
  process.stdout.write(lines.join("\n") + "\n");
}

let opts;
try {
  opts = parseArgs();
  const result = await main(opts);
  if (opts.json) process.stdout.write(JSON.stringify(result) + "\n");
  else printTable(result);
  process.exitCode = result.problems.length === 0 ? 0 : 1;
} catch (err) {
  const message = err instanceof BenchError || err instanceof BuildError ? err.message : err?.stack ?? String(err);
  process.stderr.write(`bench: FAILED: ${message}\n`);
  if (opts?.json) process.stdout.write(JSON.stringify({ benchmark: "B2+B3", ok: false, error: message, results: [], problems: [message] }) + "\n");
  process.exitCode = 2;
}
