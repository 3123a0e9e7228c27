/**
 * `itx tasks watch` end to end: the BUILT CLI watches tasks that this test moves
 * through their states by writing to the running server's embedded database directly
 * (SQLite in WAL mode allows a second process), since no RPC creates tasks yet.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { randomUUID } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { newTaskRecord, type TaskProgress } from "../../src/core/task.js";
import { SqliteRepository } from "../../src/persistence/embedded/sqlite-repository.js";
import { cliPath, ensureBuilt, repoRoot, runCli, runCliJson, spawnServer, type ServerProcess } from "../helpers/built-cli.js";

/** The built CLI, pointed at this file's server through ITX_SERVER as a user's environment would. */
const itx = (args: string[]) => runCli(args, { env: { ITX_SERVER: server?.url } });
const itxJson = (args: string[]) => runCliJson(args, { env: { ITX_SERVER: server?.url } });

/** A running `itx tasks watch`, read line by line while it runs. */
interface Watch {
  child: ChildProcess;
  stdoutLines: () => string[];
  stderr: () => string;
  /** Resolves once stdout has at least `n` lines. */
  lines(n: number): Promise<string[]>;
  exit: Promise<number | null>;
}

function watch(id: string, ...extra: string[]): Watch {
  const child = spawn(process.execPath, [cliPath, "tasks", "watch", id, ...extra], {
    cwd: repoRoot,
    env: { ...process.env, ITX_SERVER: server?.url },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  const waiters = new Set<() => void>();
  const complete = () => stdout.split("\n").slice(0, -1);
  child.stdout!.on("data", (d: Buffer) => {
    stdout += d.toString();
    for (const w of waiters) w();
  });
  child.stderr!.on("data", (d: Buffer) => (stderr += d.toString()));
  const timer = setTimeout(() => child.kill("SIGKILL"), 30_000);
  const exit = new Promise<number | null>((resolve) =>
    child.once("close", (code) => {
      clearTimeout(timer);
      for (const w of waiters) w();
      resolve(code);
    }),
  );
  return {
    child,
    stdoutLines: complete,
    stderr: () => stderr,
    exit,
    lines: (n) =>
      new Promise((resolve, reject) => {
        const check = () => {
          if (complete().length >= n) {
            waiters.delete(check);
            resolve(complete());
          } else if (child.exitCode !== null || child.signalCode !== null) {
            waiters.delete(check);
            reject(new Error(`watch exited before printing ${n} lines:\n${stdout}\n${stderr}`));
          }
        };
        waiters.add(check);
        check();
      }),
  };
}

interface PlainLine {
  time: string;
  state: string;
  stage: string;
  done: number;
  total: number;
}

function parsePlain(line: string): PlainLine {
  const match = /^(\S+) (\S+) (\S+) (\d+)\/(\d+)$/.exec(line);
  if (!match) throw new Error(`not a watch line: ${JSON.stringify(line)}`);
  expect(new Date(match[1]!).toISOString()).toBe(match[1]);
  return { time: match[1]!, state: match[2]!, stage: match[3]!, done: Number(match[4]), total: Number(match[5]) };
}

/** Consecutive duplicates removed: the order in which states were seen. */
function stateOrder(lines: PlainLine[]): string[] {
  return lines.map((l) => l.state).filter((s, i, all) => i === 0 || all[i - 1] !== s);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------

let server: ServerProcess | undefined;
let dataDir: string;
let repository: SqliteRepository;

beforeAll(async () => {
  await ensureBuilt();
  dataDir = mkdtempSync(path.join(tmpdir(), "itx-watch-e2e-"));
  // role "api": the test plays the worker, writing the tasks it watches.
  server = await spawnServer(["--data-dir", dataDir, "--log-level", "warn", "--role", "api"]);
  // The server created the database; this second connection shares it (WAL).
  repository = new SqliteRepository(dataDir);
  await repository.init();
}, 300_000);

afterAll(async () => {
  await repository?.close();
  await server?.stop();
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
}, 30_000);

async function insertTask(): Promise<string> {
  const id = randomUUID();
  await repository.insertTask(newTaskRecord({ id, type: "import", imageId: randomUUID(), owner: "default" }, Date.now()));
  return id;
}

const progress = (stage: string, bytesDone: number, bytesTotal = 4096): TaskProgress => ({ stage, bytesDone, bytesTotal });

describe("itx tasks watch (built, not a TTY)", { timeout: 30_000 }, () => {
  it("prints one line per change, PENDING -> RUNNING -> SUCCEEDED, and exits 0", async () => {
    const id = await insertTask();
    const w = watch(id);
    // The first snapshot proves the watch is connected before anything changes.
    expect(parsePlain((await w.lines(1))[0]!)).toMatchObject({ state: "pending", stage: "-", done: 0, total: 0 });

    await repository.updateTask(id, { state: "running", patch: { progress: progress("fetch", 0) } });
    for (const done of [1024, 2048, 3072, 4096]) {
      await sleep(40);
      await repository.updateTask(id, { expect: ["running"], patch: { progress: progress(done < 3072 ? "fetch" : "store", done) } });
    }
    await repository.updateTask(id, { state: "succeeded", patch: { result: { imageId: randomUUID(), storeUris: [] } } });

    expect(await w.exit).toBe(0);
    expect(w.stderr()).toBe("");
    const lines = w.stdoutLines().map(parsePlain);
    // One line per version: the snapshot, RUNNING, four progress writes, SUCCEEDED.
    expect(lines).toHaveLength(7);
    expect(stateOrder(lines)).toEqual(["pending", "running", "succeeded"]);
    expect(lines.map((l) => l.done)).toEqual([0, 0, 1024, 2048, 3072, 4096, 4096]);
    expect(lines.map((l) => l.stage)).toEqual(["-", "fetch", "fetch", "fetch", "store", "store", "store"]);
    expect(lines.slice(1).every((l) => l.total === 4096)).toBe(true);
    const times = lines.map((l) => Date.parse(l.time));
    expect(times).toEqual([...times].sort((a, b) => a - b));

    const task = await itxJson(["tasks", "get", id]);
    expect(task.task).toMatchObject({ id, state: "TASK_STATE_SUCCEEDED", progress: { bytesDone: "4096", bytesTotal: "4096" } });
  });

  it("exits 3 and prints the reason when the task FAILS", async () => {
    const id = await insertTask();
    const w = watch(id);
    await w.lines(1);
    await repository.updateTask(id, { state: "running", patch: { progress: progress("fetch", 512) } });
    await sleep(40);
    await repository.updateTask(id, {
      state: "failed",
      patch: { error: { reason: "SOURCE_NOT_FOUND", message: "swift://store/c/o does not exist" } },
    });

    expect(await w.exit).toBe(3);
    expect(stateOrder(w.stdoutLines().map(parsePlain))).toEqual(["pending", "running", "failed"]);
    expect(w.stderr()).toMatch(/^itx: task_failed: .*SOURCE_NOT_FOUND: swift:\/\/store\/c\/o does not exist\n$/);

    const get = await itx(["tasks", "get", id]);
    expect(get.code).toBe(0);
    expect(get.stdout).toMatch(/^state:\s+failed$/m);
    expect(get.stdout).toMatch(/^error:\s+SOURCE_NOT_FOUND: swift:\/\/store\/c\/o does not exist$/m);
  });

  it("prints JSON Lines with --json and exits 4 when `itx tasks cancel` cancels the task", async () => {
    const id = await insertTask();
    await repository.updateTask(id, { state: "running", patch: { progress: progress("fetch", 100) } });
    const w = watch(id, "--json");
    const [first] = await w.lines(1);
    expect(JSON.parse(first!).task).toMatchObject({ id, state: "TASK_STATE_RUNNING", type: "TASK_TYPE_IMPORT" });

    const running = await itxJson(["tasks", "list", "--state", "running"]);
    expect(running.tasks.map((t: { id: string }) => t.id)).toContain(id);

    const cancel = await itxJson(["tasks", "cancel", id]);
    expect(cancel.task).toMatchObject({ id, state: "TASK_STATE_CANCELED", error: { reason: "CANCELED" } });

    expect(await w.exit).toBe(4);
    const snapshots = w.stdoutLines().map((l) => JSON.parse(l).task);
    expect(snapshots.map((t) => t.state)).toEqual(["TASK_STATE_RUNNING", "TASK_STATE_CANCELED"]);
    expect(snapshots.map((t) => Number(t.version))).toEqual([2, 3]);
    expect(w.stderr()).toMatch(/^itx: task_canceled: .*CANCELED/);

    // Canceling again is refused: the task has ended.
    const again = await itx(["tasks", "cancel", id]);
    expect(again.code).toBe(1);
    expect(again.stderr).toMatch(/^itx: failed_precondition: /);
  });

  it("stops on Ctrl-C (SIGINT) with exit code 130 without canceling the task", async () => {
    const id = await insertTask();
    const w = watch(id);
    await w.lines(1);
    w.child.kill("SIGINT");
    expect(await w.exit).toBe(130);
    expect(w.stderr()).toMatch(/^itx: interrupted: .*not canceled/);
    expect((await repository.findTask(id))?.state).toBe("pending");
  });
});
