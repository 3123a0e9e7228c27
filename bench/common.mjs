/**
 * What the benchmarks share: argument parsing, child processes that are always cleaned up
 * (also on Ctrl-C), a temp dir removed on exit, command running, memory sampling from /proc,
 * and test disks.
 */
import { spawn } from "node:child_process";
import { createHash, randomFillSync } from "node:crypto";
import { closeSync, createReadStream, ftruncateSync, mkdirSync, openSync, readFileSync, rmSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { parseArgs as utilParseArgs } from "node:util";
import { cliPath, repoRoot } from "../scripts/ensure-built.mjs";

export const MiB = 1024 * 1024;
export const GiB = 1024 * MiB;
export const SAMPLE_MS = 100;

export const say = (line) => process.stderr.write(`bench: ${line}\n`);

export class BenchError extends Error {}

// ---------------------------------------------------------------------------------------------
// Cleanup: every child and server we start, and the temp dir, on any exit path

export const children = new Set();
let workRoot;

/** The run's temp dir, removed on any exit. */
export function setWorkRoot(dir) {
  workRoot = dir;
}
let cleanedUp = false;

export function track(child) {
  children.add(child);
  child.once("exit", () => children.delete(child));
  return child;
}

function cleanupSync() {
  if (cleanedUp) return;
  cleanedUp = true;
  for (const child of children) signalChild(child, "SIGKILL");
  if (workRoot) rmSync(workRoot, { recursive: true, force: true });
}

export function signalChild(child, signal) {
  try {
    process.kill(child.pid, signal);
  } catch {
    // Already gone.
  }
}

let interrupted = false;
for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"]) {
  process.on(signal, () => {
    if (interrupted) return;
    interrupted = true;
    say(`${signal}: stopping ${children.size} child process(es) by PID and removing ${workRoot ?? "nothing"}`);
    // SIGTERM first, so that servers shut down cleanly; whatever is left after 3 s gets SIGKILL.
    for (const child of children) signalChild(child, "SIGTERM");
    const deadline = Date.now() + 3_000;
    const check = setInterval(() => {
      if (children.size > 0 && Date.now() < deadline) return;
      clearInterval(check);
      cleanupSync();
      process.exit(signal === "SIGINT" ? 130 : 143);
    }, 50);
  });
}
process.on("exit", cleanupSync);

// ---------------------------------------------------------------------------------------------
// Arguments

/** --tmp-dir as every bench takes it: where the run's temp dir is made. */
export const tmpDirOption = { type: "string", default: process.env.BENCH_TMPDIR || tmpdir() };

/**
 * A bench's command line, read with node's util.parseArgs: `--flag value` and `--flag=value`,
 * later flags winning. `options` maps each flag to { type: "boolean" | "string" | "count" (a
 * positive integer), default, quick (the default under --quick; a flag given explicitly
 * wins, wherever it stands), negatable (also takes --no-flag), choices (the values a string
 * may take), parse (turns the value into the option's, throwing BenchError when it is
 * wrong) }; --quick itself needs no entry.
 * Returns the options in camelCase (--size-mib: sizeMib) plus `quick`. --help / -h prints
 * the script's header comment and exits 0; an unknown or malformed flag throws BenchError.
 */
export function parseBenchArgs(scriptUrl, options, argv = process.argv.slice(2)) {
  const spec = { quick: { type: "boolean" }, ...options };
  const config = { help: { type: "boolean", short: "h" } };
  for (const [name, option] of Object.entries(spec)) {
    config[name] = { type: option.type === "boolean" ? "boolean" : "string" };
    if (option.negatable) config[`no-${name}`] = { type: "boolean" };
  }
  const { tokens } = utilParseArgs({ args: argv, options: config, strict: false, allowPositionals: true, tokens: true });
  const given = {};
  for (const token of tokens) {
    if (token.kind === "positional") throw new BenchError(`unexpected argument ${token.value} (see --help)`);
    if (token.kind !== "option") continue;
    if (token.name === "help") {
      process.stdout.write(headerComment(scriptUrl));
      process.exit(0);
    }
    const negated = token.name.startsWith("no-") && spec[token.name.slice(3)]?.negatable;
    const name = negated ? token.name.slice(3) : token.name;
    const option = spec[name];
    if (!option) throw new BenchError(`unknown argument ${token.rawName} (see --help)`);
    if (option.type === "boolean") {
      if (token.inlineValue) throw new BenchError(`${token.rawName} takes no value`);
      given[name] = !negated;
      continue;
    }
    if (token.value === undefined) throw new BenchError(`${token.rawName} needs a value`);
    let value = token.value;
    if (option.type === "count") {
      value = Number(token.value);
      if (!Number.isInteger(value) || value < 1) throw new BenchError(`${token.rawName} must be a positive integer, not ${JSON.stringify(token.value)}`);
    }
    if (option.choices && !option.choices.includes(value)) throw new BenchError(`${token.rawName} must be one of ${option.choices.join(", ")}, not ${JSON.stringify(value)}`);
    given[name] = option.parse ? option.parse(value) : value;
  }
  const quick = given.quick === true;
  const opts = {};
  for (const [name, option] of Object.entries(spec)) {
    const fallback = quick && "quick" in option ? option.quick : (option.default ?? (option.type === "boolean" ? false : undefined));
    opts[name.replace(/-([a-z0-9])/g, (_, c) => c.toUpperCase())] = name in given ? given[name] : fallback;
  }
  return opts;
}

/** The script's leading /** comment without its comment markers: its usage. */
function headerComment(scriptUrl) {
  const source = readFileSync(fileURLToPath(scriptUrl), "utf8");
  return source.split("*/")[0].replace(/^#!.*\n/, "").replace(/^\/\*\*\n/, "").replace(/^ \* ?/gm, "");
}

// ---------------------------------------------------------------------------------------------
// Small helpers

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
export const seconds = (ms) => Math.round(ms / 10) / 100;
export const mib = (bytes) => Math.round((bytes / MiB) * 10) / 10;
export const sizeLabel = (m) => (m % 1024 === 0 ? `${m / 1024} GiB` : `${m} MiB`);

/**
 * The baselines' hash: Node's sha512 of a file in 1 MiB reads, as the service must hash
 * (coreutils' sha512sum is slower, and would flatter the product).
 */
export function sha512File(path) {
  return new Promise((resolvePromise, reject) => {
    const hash = createHash("sha512");
    const stream = createReadStream(path, { highWaterMark: MiB });
    stream.on("data", (chunk) => hash.update(chunk));
    stream.on("error", reject);
    stream.on("end", () => resolvePromise(hash.digest("hex")));
  });
}

export function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

/** Runs a command to completion; rejects with its stderr unless it exits 0. */
export function run(command, args, { cwd = repoRoot, timeoutMs = 3_600_000 } = {}) {
  return new Promise((resolvePromise, reject) => {
    const child = track(spawn(command, args, { cwd, stdio: ["ignore", "pipe", "pipe"] }));
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d) => (stdout += d));
    child.stderr.on("data", (d) => (stderr += d));
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    child.once("error", (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.once("close", (code, signal) => {
      clearTimeout(timer);
      if (code === 0) resolvePromise({ stdout, stderr });
      else reject(new BenchError(`${command} ${args.join(" ")} exited with ${code ?? signal}:\n${stderr.trim()}`));
    });
  });
}

/**
 * CPU seconds (user + system, with waited-for children such as qemu-img) these processes
 * have used so far, from /proc/PID/stat (clock ticks of 10 ms); a process gone meanwhile counts 0.
 */
export function cpuSeconds(pids) {
  let ticks = 0;
  for (const pid of pids) {
    try {
      const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1].split(" ");
      ticks += Number(fields[11]) + Number(fields[12]) + Number(fields[13]) + Number(fields[14]);
    } catch {
      // gone meanwhile
    }
  }
  return ticks / 100;
}

/** VmRSS and VmHWM of a process, in bytes, from /proc/PID/status; undefined once it is gone. */
export function memoryOf(pid) {
  let text;
  try {
    text = readFileSync(`/proc/${pid}/status`, "utf8");
  } catch {
    return undefined;
  }
  const field = (name) => {
    const m = new RegExp(`^${name}:\\s+(\\d+) kB`, "m").exec(text);
    return m ? Number(m[1]) * 1024 : undefined;
  };
  return { rss: field("VmRSS"), hwm: field("VmHWM") };
}

/**
 * Samples a process's VmRSS every 100 ms until stopped; returns the largest sample, overall
 * and per phase (the caller names the current phase with setPhase, e.g. the task's stage).
 */
export function sampleRss(pid) {
  let max = 0;
  let samples = 0;
  let phase;
  let phaseStarted;
  const byPhase = {};
  /** Milliseconds spent in each phase, as far as the phase changes were seen. */
  const timeByPhase = {};
  const endPhase = () => {
    if (phase) timeByPhase[phase] = (timeByPhase[phase] ?? 0) + (performance.now() - phaseStarted);
  };
  const take = () => {
    const m = memoryOf(pid);
    if (m?.rss !== undefined) {
      max = Math.max(max, m.rss);
      if (phase) byPhase[phase] = Math.max(byPhase[phase] ?? 0, m.rss);
      samples++;
    }
  };
  take();
  const timer = setInterval(take, SAMPLE_MS);
  return {
    setPhase(name) {
      if (name && name !== phase) {
        take();
        endPhase();
        phase = name;
        phaseStarted = performance.now();
      }
    },
    stop() {
      clearInterval(timer);
      take();
      endPhase();
      return { maxRss: max, samples, byPhase, timeByPhase };
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Setup: the disk images

/** A raw disk: the first half random (written in 4 MiB chunks), the second half zeros (a sparse tail). */
export function writeRawDisk(path, bytes) {
  const chunk = Buffer.allocUnsafe(4 * MiB);
  const fd = openSync(path, "w");
  try {
    let written = 0;
    const half = bytes / 2;
    while (written < half) {
      const n = Math.min(chunk.length, half - written);
      randomFillSync(chunk, 0, n);
      let off = 0;
      while (off < n) off += writeSync(fd, chunk, off, n - off, written + off);
      written += n;
    }
    ftruncateSync(fd, bytes);
  } finally {
    closeSync(fd);
  }
}

// ---------------------------------------------------------------------------------------------
// The server

/**
 * `itx serve` on a free loopback port; resolves once it says where it listens. `nodeArgs` go
 * to node itself, e.g. ["--cpu-prof", "--cpu-prof-dir", DIR] (not allowed in NODE_OPTIONS).
 */
export async function startServer(dataDir, extraArgs = [], { nodeArgs = [] } = {}) {
  mkdirSync(dataDir, { recursive: true });
  const child = track(
    spawn(process.execPath, [...nodeArgs, cliPath, "serve", "--listen", "127.0.0.1:0", "--data-dir", dataDir, "--log-level", "warn", ...extraArgs], {
      cwd: repoRoot,
      // Only the flags configure this server: no ITX_* settings or MONGODB_URI from the caller's shell.
      env: Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("ITX_") && k !== "MONGODB_URI")),
      stdio: ["ignore", "pipe", "pipe"],
    }),
  );
  let log = "";
  child.stderr.on("data", (d) => (log += d));
  const url = await new Promise((resolvePromise, reject) => {
    let stdout = "";
    const timer = setTimeout(() => reject(new BenchError(`server did not start in 30 s:\n${stdout}${log}`)), 30_000);
    child.stdout.on("data", (d) => {
      stdout += d;
      const m = /listening on (\S+)/.exec(stdout);
      if (m) {
        clearTimeout(timer);
        resolvePromise(m[1]);
      }
    });
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new BenchError(`server exited with ${code} before listening:\n${stdout}${log}`));
    });
  });
  return { url, pid: child.pid, dataDir, process: child, log: () => log, stop: () => stopServer(child) };
}

/** SIGTERM to the server's PID, SIGKILL after 10 s. */
export function stopServer(child) {
  return new Promise((resolvePromise) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolvePromise(child.exitCode);
    const kill = setTimeout(() => child.kill("SIGKILL"), 10_000);
    child.once("exit", (code) => {
      clearTimeout(kill);
      resolvePromise(code);
    });
    process.kill(child.pid, "SIGTERM");
  });
}

// ---------------------------------------------------------------------------------------------
// Clients (the generated code, built into dist/)

let api;
export async function loadApi() {
  if (api) return api;
  const connect = await import("@connectrpc/connect");
  const connectNode = await import("@connectrpc/connect-node");
  const gen = (name) => import(pathToFileURL(join(repoRoot, `dist/src/gen/imagetransfer/v1/${name}_pb.js`)).href);
  const [transfer, image, task] = await Promise.all([gen("transfer"), gen("image"), gen("task")]);
  api = { connect, connectNode, transfer, image, task };
  return api;
}

/** Clients that authenticate with the local admin key `itx serve` made in the server's data dir. */
export async function clientsFor(server) {
  const { connect, connectNode, transfer, image, task } = await loadApi();
  const token = readFileSync(join(server.dataDir, "admin-api-key"), "utf8").trim();
  const transport = connectNode.createConnectTransport({
    baseUrl: server.url,
    httpVersion: "1.1",
    useBinaryFormat: true,
    interceptors: [(next) => (req) => (req.header.set("authorization", `Bearer ${token}`), next(req))],
  });
  return {
    transfer: connect.createClient(transfer.TransferService, transport),
    images: connect.createClient(image.ImageService, transport),
    tasks: connect.createClient(task.TaskService, transport),
  };
}

// ---------------------------------------------------------------------------------------------
// The shared result shape, and the other benches' helpers
//
// With --json every bench script prints one object on stdout, which bench/all.mjs collects:
//   { benchmark: "B1" | ... | "SWIFT", title, machine: machineInfo(), mode?, results: [result], problems: [string], error? }
// and each result is
//   { name, unit, better: "lower" | "higher",
//     product: summarize(...), baseline: summarize(...) | null,
//     ratio: baseline / product time (or product / baseline rate) | null,
//     target: { ratio } | { min } | { max } | null, met: targetMet(result) | null, ...details }

/** median, min and max of samples, rounded to 3 significant decimals for the report. */
export function summarize(label, samples) {
  const round = (v) => Math.round(v * 1000) / 1000;
  return { label, median: round(median(samples)), min: round(Math.min(...samples)), max: round(Math.max(...samples)), samples: samples.map(round) };
}

/** The p-th percentile (0..100) by nearest rank. */
export function percentile(values, p) {
  const sorted = [...values].sort((a, b) => a - b);
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];
}

/** Whether a result meets its target, by the shared convention: ratio >= target.ratio, or product.median against min/max. */
export function targetMet(result) {
  const t = result.target ?? {};
  if (t.ratio !== undefined) return result.ratio !== null && result.ratio !== undefined && result.ratio >= t.ratio;
  if (t.min !== undefined) return result.product.median >= t.min;
  if (t.max !== undefined) return result.product.median <= t.max;
  return true;
}

/** The machine the numbers were measured on. */
export async function machineInfo() {
  const os = await import("node:os");
  return { cpus: os.cpus().length, loadavg: os.loadavg().map((v) => Math.round(v * 100) / 100) };
}

/**
 * Touches most of the machine's free memory once, in a child process that then exits. This VM's
 * host backs guest memory lazily and takes back memory the guest leaves free: the first touch of
 * such memory cost 2-3.5 s per GiB here (0.3-0.5 s once touched), charged to whichever process
 * touches it. A server or baseline that happened to get such pages ran up to 3x slower (B3 0.15
 * of nginx, against 0.37 right after this warm-up). Both sides of every benchmark get warm memory
 * this way; 2 GiB stay untouched for the kernel.
 */
export async function warmMemory() {
  const free = Number(/^MemFree:\s+(\d+) kB/m.exec(readFileSync("/proc/meminfo", "utf8"))?.[1] ?? 0) * 1024;
  const bytes = Math.max(0, free - 2 * GiB);
  const step = 256 * MiB;
  const started = performance.now();
  await run(process.execPath, ["-e", `const held = []; for (let left = ${bytes}; left > 0; left -= ${step}) held.push(Buffer.alloc(Math.min(left, ${step}), 1));`]);
  say(`warmed ${(bytes / GiB).toFixed(1)} GiB of free memory in ${seconds(performance.now() - started)} s`);
}

/** A TCP port on 127.0.0.1 that was free a moment ago. */
export function freePort() {
  return new Promise((resolvePromise, reject) => {
    import("node:net").then(({ createServer }) => {
      const server = createServer();
      server.once("error", reject);
      server.listen(0, "127.0.0.1", () => {
        const { port } = server.address();
        server.close(() => resolvePromise(port));
      });
    }, reject);
  });
}

/**
 * A plugins folder for `itx serve --plugins-dir`: copies of bench/plugins/<names> beside a
 * node_modules/imagetransfer link to this checkout, so that their `imagetransfer/plugin-api`
 * imports resolve to the built host (as an installed plugin's would).
 */
export async function stageBenchPlugins(dir, names) {
  const { cpSync, symlinkSync } = await import("node:fs");
  const plugins = join(dir, "plugins");
  mkdirSync(join(dir, "node_modules"), { recursive: true });
  symlinkSync(repoRoot, join(dir, "node_modules", "imagetransfer"));
  for (const name of names) cpSync(join(repoRoot, "bench", "plugins", name), join(plugins, name), { recursive: true });
  return plugins;
}
