/**
 * A throwaway MongoDB-wire server for the tests (test/helpers/mongo-server.ts) and the benches
 * (bench/control-plane.mjs): $MONGODB_URI, else mongod from PATH, else FerretDB built by
 * scripts/ferretdb.sh, keeping its data in the machine's PostgreSQL (in a database of its own,
 * dropped on stop), or in SQLite where no PostgreSQL answers. Plain Node ESM, so that the bench
 * can import it without a TypeScript loader; mongo-server.d.mts declares it for the tests.
 */
import { execFile, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { constants as fsConstants } from "node:fs";
import { access, mkdir, mkdtemp, open, readFile, rm } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { delimiter, join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { MongoClient } from "mongodb";

const repoRoot = fileURLToPath(new URL("../../", import.meta.url));
const ferretdbScript = join(repoRoot, "scripts", "ferretdb.sh");

const readyTimeoutMs = 30_000;
const killGraceMs = 5_000;
const logTailBytes = 4_000;
// A port picked by freePort() can be taken by someone else before the server binds it.
const maxStartAttempts = 3;

/** The server the tests use: $MONGODB_URI, else mongod, else FerretDB. */
export async function startMongoServer() {
  const external = process.env.MONGODB_URI;
  if (external) {
    return { uri: external, stop: async () => {} };
  }

  const mongod = await findOnPath("mongod");
  if (mongod) {
    return startWithRetry("mongod", undefined, (dir, port) => ({
      bin: mongod,
      args: [
        "--dbpath", dir, "--bind_ip", "127.0.0.1", "--port", String(port),
        "--nounixsocket", "--quiet",
      ],
      env: process.env,
      setup: async () => {},
    }));
  }
  return startFerretDb();
}

/**
 * FerretDB alone, its temp dir under `parentDir`; `label` names its PostgreSQL database
 * (itx_<label>_<random>), so that a leftover one says who made it.
 */
export async function startFerretDb({ parentDir = tmpdir(), label = "test" } = {}) {
  const ferretdb = await buildFerretdb();
  const postgres = await postgresAvailable();
  const server = await startWithRetry("ferretdb", parentDir, (dir, port) => {
    const database = `itx_${label}_${randomBytes(6).toString("hex")}`;
    const backend = postgres
      ? {
          args: ["--handler=pg", `--postgresql-url=${postgresUrl(database)}`],
          setup: () => psql(`CREATE DATABASE ${database}`),
          teardown: () => psql(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`),
        }
      : {
          args: ["--handler=sqlite", `--sqlite-url=file:${join(dir, "data")}/`],
          // FerretDB does not create the SQLite directory itself.
          setup: () => mkdir(join(dir, "data")),
        };
    return {
      bin: ferretdb,
      args: [
        ...backend.args,
        `--state-dir=${dir}`,
        `--listen-addr=127.0.0.1:${port}`,
        // "-" disables the metrics/pprof HTTP listener, which otherwise claims port 8088.
        "--debug-addr=-",
        "--telemetry=disable",
      ],
      env: ferretdbEnv(),
      setup: backend.setup,
      teardown: backend.teardown,
    };
  });
  return { ...server, backend: postgres ? "postgresql" : "sqlite" };
}

/**
 * Where FerretDB keeps its data: PostgreSQL, which this kind of machine runs (trust auth on
 * loopback). FerretDB's SQLite backend serialises writers: with three workers on saturated
 * cores its writes stalled for minutes (issue 7), which says nothing about MongoDB.
 */
const postgresAdminUrl = process.env.ITX_TEST_POSTGRES_URL ?? "postgresql://postgres@127.0.0.1:5432/postgres";

function postgresUrl(database) {
  const url = new URL(postgresAdminUrl);
  url.pathname = `/${database}`;
  return url.href;
}

const run = promisify(execFile);

async function psql(sql) {
  await run("psql", [postgresAdminUrl, "-v", "ON_ERROR_STOP=1", "-qAtc", sql], { timeout: 30_000 });
}

let postgresChecked;

/** Whether PostgreSQL answers; starts the machine's cluster once if it does not. Without it FerretDB falls back to SQLite, loudly. */
function postgresAvailable() {
  return (postgresChecked ??= (async () => {
    const answers = () => psql("SELECT 1").then(() => true, () => false);
    if (await answers()) return true;
    const clusters = await run("bash", ["-c", "ls /etc/postgresql 2>/dev/null"]).then((r) => r.stdout.split("\n").filter(Boolean), () => []);
    for (const version of clusters) {
      await run("pg_ctlcluster", ["--skip-systemctl-redirect", version, "main", "start"], { timeout: 60_000 }).catch(() => undefined);
    }
    if (await answers()) return true;
    console.warn(`mongo-server: no PostgreSQL answers at ${postgresAdminUrl}; FerretDB falls back to SQLite, whose writers stall under concurrent load`);
    return false;
  })());
}

async function startWithRetry(name, parentDir, spec) {
  for (let attempt = 1; ; attempt++) {
    try {
      return await launch(name, parentDir, spec);
    } catch (err) {
      if (!(err instanceof EarlyExitError) || attempt >= maxStartAttempts) throw err;
    }
  }
}

class EarlyExitError extends Error {}

/**
 * Starts the server that `specFor` describes (bin, args, env, setup, teardown) in a temp dir
 * of its own under `parentDir` (default the OS temp dir) and waits until it answers a ping.
 */
async function launch(name, parentDir = tmpdir(), specFor) {
  const dir = await mkdtemp(join(parentDir, `itx-${name}-`));
  const logPath = join(dir, `${name}.log`);
  let port;
  let spec;
  let proc;
  try {
    port = await freePort();
    spec = specFor(dir, port);
    await spec.setup();
    // The child writes straight to the file so server logs stay out of the test output.
    const log = await open(logPath, "w");
    try {
      proc = spawnTracked(spec.bin, spec.args, { cwd: dir, env: spec.env, stdio: ["ignore", log.fd, log.fd] });
    } finally {
      await log.close();
    }
  } catch (err) {
    await spec?.teardown?.().catch(() => undefined);
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
  const respawn = async () => {
    const log = await open(logPath, "a");
    try {
      proc = spawnTracked(spec.bin, spec.args, { cwd: dir, env: spec.env, stdio: ["ignore", log.fd, log.fd] });
    } finally {
      await log.close();
    }
  };

  // Don't leave an orphaned server if the process exits without calling stop().
  const killOnExit = () => proc.child.kill("SIGKILL");
  process.once("exit", killOnExit);

  let stopped;
  const stop = () =>
    (stopped ??= (async () => {
      process.off("exit", killOnExit);
      if (proc.exitInfo === undefined) {
        proc.child.kill("SIGTERM");
        if (!(await settlesWithin(proc.exited, killGraceMs))) {
          proc.child.kill("SIGKILL");
          await proc.exited;
        }
      }
      await spec.teardown?.().catch(() => undefined);
      await rm(dir, { recursive: true, force: true });
    })());

  const uri = `mongodb://127.0.0.1:${port}/`;
  try {
    await waitForPing(uri, () => proc.exitInfo);
  } catch (err) {
    const tail = await readTail(logPath);
    const early = proc.exitInfo !== undefined;
    await stop();
    const reason = err instanceof Error ? err.message : String(err);
    const message = `${name} did not become ready on ${uri}: ${reason}\n--- ${name} log tail ---\n${tail}`;
    throw early ? new EarlyExitError(message) : new Error(message);
  }
  const outage = async () => {
    proc.child.kill("SIGKILL");
    await proc.exited;
    return async () => {
      await respawn();
      await waitForPing(uri, () => proc.exitInfo);
    };
  };
  const freeze = () => {
    proc.child.kill("SIGSTOP");
    return () => void proc.child.kill("SIGCONT");
  };
  return { uri, stop, outage, freeze };
}

// Listeners are attached synchronously: a server that dies at once must not exit unobserved.
function spawnTracked(bin, args, options) {
  const child = spawn(bin, args, options);
  const tracked = { child, exited: Promise.resolve(), exitInfo: undefined };
  tracked.exited = new Promise((resolve) => {
    child.once("exit", (code, signal) => {
      tracked.exitInfo = signal ? `signal ${signal}` : `code ${code}`;
      resolve();
    });
    child.on("error", (err) => {
      tracked.exitInfo ??= err.message;
      resolve();
    });
  });
  return tracked;
}

async function settlesWithin(promise, ms) {
  let timer;
  const timeout = new Promise((resolve) => (timer = setTimeout(() => resolve(false), ms)));
  try {
    return await Promise.race([promise.then(() => true), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

async function waitForPing(uri, exitInfo) {
  const deadline = Date.now() + readyTimeoutMs;
  let lastError;
  while (Date.now() < deadline) {
    const exit = exitInfo();
    if (exit !== undefined) throw new Error(`process exited (${exit})`);
    const client = new MongoClient(uri, {
      serverSelectionTimeoutMS: 1_000,
      connectTimeoutMS: 1_000,
      directConnection: true,
    });
    try {
      await client.db("admin").command({ ping: 1 });
      return;
    } catch (err) {
      lastError = err;
    } finally {
      await client.close().catch(() => {});
    }
    await sleep(100);
  }
  const detail = lastError instanceof Error ? lastError.message : String(lastError);
  throw new Error(`no ping reply within ${readyTimeoutMs} ms (last error: ${detail})`);
}

/** Runs scripts/ferretdb.sh, which prints the binary path and builds it on first use. */
function buildFerretdb() {
  return new Promise((resolve, reject) => {
    // stderr is inherited so a first-time build (a minute or more) shows progress.
    const child = spawn("bash", [ferretdbScript], { stdio: ["ignore", "pipe", "inherit"] });
    let stdout = "";
    child.stdout.setEncoding("utf8").on("data", (chunk) => (stdout += chunk));
    child.once("error", reject);
    child.once("close", (code) => {
      const bin = stdout.trim().split("\n").pop() ?? "";
      if (code === 0 && bin) resolve(bin);
      else reject(new Error(`${ferretdbScript} failed (exit code ${code}); see its stderr above`));
    });
  });
}

function ferretdbEnv() {
  // Stray FERRETDB_* variables (e.g. FERRETDB_LISTEN_UNIX) would add listeners or change the backend.
  const env = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (!key.startsWith("FERRETDB_")) env[key] = value;
  }
  env.DO_NOT_TRACK = "1";
  return env;
}

function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      const port = typeof address === "object" && address ? address.port : 0;
      server.close(() => (port ? resolve(port) : reject(new Error("no port assigned"))));
    });
  });
}

async function findOnPath(command) {
  for (const dir of (process.env.PATH ?? "").split(delimiter)) {
    if (!dir) continue;
    const candidate = join(dir, command);
    try {
      await access(candidate, fsConstants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  return undefined;
}

async function readTail(path) {
  try {
    const text = await readFile(path, "utf8");
    return text.slice(-logTailBytes);
  } catch {
    return "(no log)";
  }
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
