import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { newId } from "../../src/core/ids.js";
import { TaskHub } from "../../src/core/task-hub.js";
import { newTaskRecord, type TaskRecord } from "../../src/core/task.js";
import { SqliteRepository } from "../../src/persistence/embedded/sqlite-repository.js";
import type { Repository } from "../../src/persistence/repository.js";

const newTask = () => newTaskRecord({ id: newId(), type: "import", imageId: newId(), owner: "default" }, Date.now());
const progress = (bytesDone: number) => ({ expect: ["running" as const], patch: { progress: { stage: "fetch", bytesDone, bytesTotal: 100 } } });

/** A watch that has taken its snapshot and takes nothing more until `rest()`, which resolves to all it saw, the snapshot first. */
async function attachWatch(hub: TaskHub, id: string, signal = AbortSignal.timeout(20_000)) {
  const stream = hub.watch(id, signal);
  const first = await stream.next();
  if (first.done) throw new Error("the watch ended before its snapshot");
  const rest = async () => {
    const seen: TaskRecord[] = [first.value];
    for await (const task of stream) seen.push(task);
    return seen;
  };
  return { first: first.value, rest };
}

/** A watch that has taken its snapshot and keeps taking changes as they come. */
async function startWatch(hub: TaskHub, id: string, signal?: AbortSignal) {
  const watch = await attachWatch(hub, id, signal);
  return { first: watch.first, rest: watch.rest() };
}

const versions = (seen: TaskRecord[]) => seen.map((t) => t.version);
const range = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => from + i);
const feedsOf = (hub: TaskHub) => (hub as unknown as { feeds: Map<string, unknown> }).feeds;

let dir: string;
let repository: SqliteRepository;
/** Counts change-log reads, to tell a shared feed from a read per watcher. */
let changeReads = 0;
let counted: Repository;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "itx-task-feed-"));
  repository = new SqliteRepository(dir);
  await repository.init();
  counted = new Proxy(repository, {
    get(target, name, receiver) {
      if (name === "listTaskChanges") changeReads++;
      const value = Reflect.get(target, name, receiver);
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
});
afterAll(async () => {
  await repository?.close();
  rmSync(dir, { recursive: true, force: true });
});

describe("the shared feed of a watched task", () => {
  it("gives many watchers every version once, in order, without a read per change, and catches up a late and a slow watcher", async () => {
    // No polls in this test: every change is made by this hub.
    const hub = new TaskHub(counted, { watchPollMs: 10_000 });
    const task = await hub.create(newTask());
    const watchers = await Promise.all(Array.from({ length: 20 }, () => startWatch(hub, task.id)));
    // The slow watcher takes nothing more until the task has ended: it falls far behind the feed.
    const slow = await attachWatch(hub, task.id);
    changeReads = 0;

    await hub.change(task.id, { state: "running" });
    for (let i = 1; i <= 30; i++) await hub.change(task.id, progress(i));
    const late = await startWatch(hub, task.id);
    for (let i = 31; i <= 60; i++) await hub.change(task.id, progress(i));
    const finished = await hub.change(task.id, { state: "succeeded" });

    for (const seen of await Promise.all(watchers.map((w) => w.rest))) {
      expect(versions(seen)).toEqual(range(1, finished.version));
      expect(seen.at(-1)!.state).toBe("succeeded");
    }
    expect(versions(await late.rest)).toEqual(range(late.first.version, finished.version));
    expect(late.first.version).toBeGreaterThan(1);
    expect(versions(await slow.rest())).toEqual(range(1, finished.version));
    // 62 changes to 23 watchers: the fast ones read nothing, the slow one caught up from the change log.
    expect(changeReads).toBeGreaterThan(0);
    expect(changeReads).toBeLessThan(5);
    expect(feedsOf(hub).size).toBe(0);
  });

  it("shows watchers on two hubs over one database every change either hub makes, in order", async () => {
    const [a, b] = [new TaskHub(repository, { watchPollMs: 20 }), new TaskHub(repository, { watchPollMs: 20 })];
    const task = await a.create(newTask());
    const watchers = await Promise.all([a, a, a, b, b, b].map((hub) => startWatch(hub, task.id)));

    // Changes from both sides, faster than a poll and interleaved: a change here after one
    // made by the other hub leaves a gap in this hub's feed, which a read fills.
    await b.change(task.id, { state: "running" });
    for (let i = 1; i <= 20; i++) {
      await (i % 3 === 0 ? a : b).change(task.id, progress(i));
      if (i % 5 === 0) await new Promise((r) => setTimeout(r, 30));
    }
    const finished = await b.change(task.id, { state: "succeeded" });

    for (const seen of await Promise.all(watchers.map((w) => w.rest))) {
      expect(versions(seen)).toEqual(range(1, finished.version));
      expect(seen.at(-1)!.state).toBe("succeeded");
    }
  });

  it("drops a task's feed when its last watcher leaves, and starts a new one for the next watcher", async () => {
    const hub = new TaskHub(repository, { watchPollMs: 20 });
    const task = await hub.create(newTask());
    const leaving = Array.from({ length: 3 }, () => new AbortController());
    const watchers = await Promise.all(leaving.map((abort) => startWatch(hub, task.id, abort.signal)));
    expect(feedsOf(hub).has(task.id)).toBe(true);

    leaving[0]!.abort();
    await expect(watchers[0]!.rest).rejects.toThrow();
    expect(feedsOf(hub).has(task.id)).toBe(true);
    for (const abort of leaving.slice(1)) abort.abort();
    await Promise.allSettled(watchers.map((w) => w.rest));
    expect(feedsOf(hub).has(task.id)).toBe(false);

    const next = await startWatch(hub, task.id);
    const finished = await hub.change(task.id, { state: "canceled" });
    expect(versions(await next.rest)).toEqual([1, finished.version]);
    expect(feedsOf(hub).has(task.id)).toBe(false);
  });
});
