import { randomBytes } from "node:crypto";
import { createClient, ConnectError, Code } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { newId } from "../../src/core/ids.js";
import { TaskHub } from "../../src/core/task-hub.js";
import { newTaskRecord, type TaskRecord } from "../../src/core/task.js";
import { TaskService, TaskState, type Task } from "../../src/gen/imagetransfer/v1/task_pb.js";
import { MongoRepository } from "../../src/persistence/mongo/mongo-repository.js";
import type { Repository } from "../../src/persistence/repository.js";
import { Tokens } from "../../src/tokens.js";
import { ensureBuilt, spawnServer, type ServerProcess } from "../helpers/built-cli.js";
import { startMongoServer, type MongoServer } from "../helpers/mongo-server.js";
import { withDatabase } from "../helpers/mongo-uri.js";
import { startTestService, type TestService } from "../helpers/service.js";

const newTask = () => newTaskRecord({ id: newId(), type: "import", imageId: newId(), owner: "default" }, Date.now());

async function collect(stream: AsyncIterable<{ task?: Task }>): Promise<Task[]> {
  const seen: Task[] = [];
  for await (const { task } of stream) seen.push(task!);
  return seen;
}

/**
 * Watches that have sent their first snapshot, so that changes made next are changes they
 * must show (a fixed sleep was not enough on loaded machines: a late watch began at a later version).
 */
async function startedWatches(streams: AsyncIterable<{ task?: Task }>[]): Promise<Promise<Task[]>[]> {
  const started = await Promise.all(
    streams.map(async (stream) => {
      const chunks = stream[Symbol.asyncIterator]();
      const first = await chunks.next();
      if (first.done) throw new Error("the watch ended before its first snapshot");
      return { rest: collect({ [Symbol.asyncIterator]: () => chunks }), first: first.value.task! };
    }),
  );
  return started.map(({ first, rest }) => rest.then((seen) => [first, ...seen]));
}

/** Versions arrive one by one, none skipped, none repeated. */
function expectEveryChangeInOrder(seen: Task[], final: number) {
  expect(seen.map((t) => Number(t.version))).toEqual(Array.from({ length: final }, (_, i) => i + 1));
}

describe("WatchTask in one process", () => {
  let service: TestService;
  let hub: TaskHub;
  let client: ReturnType<typeof createClient<typeof TaskService>>;

  beforeAll(async () => {
    // The test plays the worker: this server only serves, so no runner claims the tasks made here.
    service = await startTestService({ role: "api" });
    hub = service.container.resolve(TaskHub);
    client = createClient(TaskService, createGrpcTransport({ baseUrl: service.url }));
  });
  afterAll(() => service?.stop());

  it("sends the snapshot, then every change in order, to each of several watchers, and ends at the terminal state", async () => {
    const task = await hub.create(newTask());
    const watchers = await startedWatches(Array.from({ length: 3 }, () => client.watchTask({ id: task.id })));

    await hub.change(task.id, { state: "running", patch: { attempts: 1 } });
    for (let done = 0; done <= 1000; done += 100) {
      hub.reportProgress(task.id, { stage: "fetch", bytesDone: done, bytesTotal: 1000 });
      await new Promise((r) => setTimeout(r, 30));
    }
    const finished = await hub.change(task.id, { state: "succeeded", patch: { result: { imageId: task.imageId, storeUris: [] } } });

    for (const seen of await Promise.all(watchers)) {
      expectEveryChangeInOrder(seen, finished.version);
      expect(seen[0]!.state).toBe(TaskState.PENDING);
      expect(seen.at(-1)!.state).toBe(TaskState.SUCCEEDED);
      const progress = seen.map((t) => Number(t.progress?.bytesDone ?? 0));
      expect(progress).toEqual([...progress].sort((a, b) => a - b));
      // The last progress reported is written before the terminal state, never lost.
      expect(progress.at(-1)).toBe(1000);
    }
  });

  it("coalesces progress writes to about ten a second while never losing the terminal state", async () => {
    const task = await hub.create(newTask());
    await hub.change(task.id, { state: "running" });
    const started = Date.now();
    for (let i = 1; i <= 2000; i++) {
      hub.reportProgress(task.id, { stage: "convert", bytesDone: i, bytesTotal: 2000 });
      if (i % 100 === 0) await new Promise((r) => setTimeout(r, 25));
    }
    const elapsed = Date.now() - started;
    const finished = await hub.change(task.id, { state: "failed", patch: { error: { reason: "TEST", message: "done" } } });
    const repository = service.container.resolve(Tokens.Repository);
    const changes = await repository.listTaskChanges(task.id, 0);
    const progressWrites = changes.filter((c) => c.state === "running").length - 1;
    expect(progressWrites).toBeGreaterThan(0);
    expect(progressWrites).toBeLessThanOrEqual(Math.ceil(elapsed / 100) + 2);
    expect(finished.state).toBe("failed");
    expect(changes.at(-1)).toMatchObject({ state: "failed", progress: { bytesDone: 2000 } });
  });

  it("gives a watcher that comes after the end the final snapshot, then ends", async () => {
    const task = await hub.create(newTask());
    await hub.change(task.id, { state: "canceled", patch: { error: { reason: "CANCELED", message: "by test" } } });
    const seen = await collect(client.watchTask({ id: task.id }));
    expect(seen).toHaveLength(1);
    expect(seen[0]).toMatchObject({ state: TaskState.CANCELED, error: { reason: "CANCELED" } });
  });

  it("ends a watch with NOT_FOUND for an unknown task and INVALID_ARGUMENT for a malformed id", async () => {
    await expect(collect(client.watchTask({ id: newId() }))).rejects.toMatchObject({ code: Code.NotFound });
    await expect(collect(client.watchTask({ id: "42" }))).rejects.toMatchObject({ code: Code.InvalidArgument });
  });

  it("cancels a pending task and refuses to cancel it twice", async () => {
    const task = await hub.create(newTask());
    const watcher = collect(client.watchTask({ id: task.id }));
    const { task: canceled } = await client.cancelTask({ id: task.id });
    expect(canceled).toMatchObject({ state: TaskState.CANCELED, error: { reason: "CANCELED" } });
    expect((await watcher).map((t) => t.state)).toEqual([TaskState.PENDING, TaskState.CANCELED]);
    const again = await client.cancelTask({ id: task.id }).catch((e: unknown) => e);
    expect(again).toBeInstanceOf(ConnectError);
    expect(again).toMatchObject({ code: Code.FailedPrecondition, rawMessage: expect.stringContaining("CANCELED") });
  });

  it("stops the server-side watch when the client hangs up", async () => {
    const task = await hub.create(newTask());
    const abort = new AbortController();
    const stream = client.watchTask({ id: task.id }, { signal: abort.signal });
    const first = await stream[Symbol.asyncIterator]().next();
    expect(first.value?.task?.state).toBe(TaskState.PENDING);
    abort.abort();
    // The hub keeps a feed per watched task; once the last call is gone it is dropped.
    await new Promise((r) => setTimeout(r, 300));
    expect((hub as unknown as { feeds: Map<string, unknown> }).feeds.has(task.id)).toBe(false);
  });
});

describe("WatchTask across two server processes sharing MongoDB", () => {
  let mongo: MongoServer;
  let uri: string;
  let a: ServerProcess;
  let b: ServerProcess;
  let worker: Repository;

  beforeAll(async () => {
    await ensureBuilt();
    mongo = await startMongoServer();
    uri = withDatabase(mongo.uri, `itx_watch_${randomBytes(4).toString("hex")}`);
    [a, b] = await Promise.all([spawnServer(["--mongodb-uri", uri, "--role", "api"]), spawnServer(["--mongodb-uri", uri, "--role", "api"])]);
    // This test process plays the worker: a third process writing to the same database.
    worker = new MongoRepository({ uri });
    await worker.init();
  });
  afterAll(async () => {
    await worker?.close();
    await Promise.all([a?.stop(), b?.stop()]);
    await mongo?.stop();
  });

  it("shows watchers on both processes every change made elsewhere, in order", async () => {
    const task: TaskRecord = newTask();
    await worker.insertTask(task);
    const clientA = createClient(TaskService, createGrpcTransport({ baseUrl: a.url }));
    const clientB = createClient(TaskService, createGrpcTransport({ baseUrl: b.url }));
    const watchers = await startedWatches([clientA, clientA, clientB, clientB].map((c) => c.watchTask({ id: task.id })));

    // Changes faster than the watchers poll: none may be lost.
    let last = await worker.updateTask(task.id, { state: "running" });
    for (let i = 1; i <= 5; i++) {
      last = await worker.updateTask(task.id, { expect: ["running"], patch: { progress: { stage: "fetch", bytesDone: i, bytesTotal: 5 } } });
    }
    last = await worker.updateTask(task.id, { state: "succeeded" });

    for (const seen of await Promise.all(watchers)) {
      expectEveryChangeInOrder(seen, last.version);
      expect(seen.at(-1)!.state).toBe(TaskState.SUCCEEDED);
    }
  });

  it("lets a cancel on one process end a watch on the other", async () => {
    const task = newTask();
    await worker.insertTask(task);
    await worker.updateTask(task.id, { state: "running" });
    const clientA = createClient(TaskService, createGrpcTransport({ baseUrl: a.url }));
    const clientB = createClient(TaskService, createGrpcTransport({ baseUrl: b.url }));
    const [watcher] = await startedWatches([clientA.watchTask({ id: task.id })]);
    await clientB.cancelTask({ id: task.id });
    const seen = await watcher;
    expect(seen.map((t) => t.state)).toEqual([TaskState.RUNNING, TaskState.CANCELED]);
    // The worker's next conditional write learns that the task is no longer its to run.
    await expect(worker.updateTask(task.id, { expect: ["running"], patch: { attempts: 2 } })).rejects.toMatchObject({
      kind: "failed-precondition",
    });
  });
});
