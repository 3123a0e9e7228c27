/**
 * Scale-out: three built `itx serve` processes share one MongoDB-wire database (a real
 * FerretDB) and one filesystem store root (shared storage, as Swift or S3 would be in
 * production). Any process accepts any process's upload URLs, imports are spread over
 * the processes by their task runners, and when one process dies with SIGKILL in the
 * middle of its work the others take its tasks over once its leases lapse.
 *
 * FerretDB keeps its data in PostgreSQL here (test/helpers/mongo-server.ts): on its SQLite
 * backend, with both cores saturated, single writes waited for minutes and imports seemed to stall.
 */
import { createHash, randomBytes } from "node:crypto";
import { once } from "node:events";
import { createReadStream } from "node:fs";
import { mkdir, mkdtemp, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, expect, it } from "vitest";
import { DiskFormat, ImageService, ImageStatus, type Image } from "../../src/gen/imagetransfer/v1/image_pb.js";
import { TaskService, TaskState, TaskType, type Task } from "../../src/gen/imagetransfer/v1/task_pb.js";
import { TransferService } from "../../src/gen/imagetransfer/v1/transfer_pb.js";
import { ensureBuilt, spawnServer, type ServerProcess } from "../helpers/built-cli.js";
import { buildImage, buildSourceRaw, listFiles, MiB } from "../helpers/disk-images.js";
import { startMongoServer, type MongoServer } from "../helpers/mongo-server.js";
import { withDatabase } from "../helpers/mongo-uri.js";
import { putFile } from "../helpers/transfer.js";

const PROCESSES = 3;
const FIRST_BATCH = 30;
const SECOND_BATCH = 10;
// Long enough that three servers, FerretDB and the test sharing two loaded cores do not miss renewals.
const LEASE_SECONDS = 5;
/** The filesystem store's temporary names: `.NAME.tmp-<16 hex>`. */
const TEMP_FILE = /(^|\/)\.[^/]*\.tmp-[0-9a-f]{16}$/;

interface Node {
  name: string;
  server: ServerProcess;
  transfer: Client<typeof TransferService>;
  tasks: Client<typeof TaskService>;
  images: Client<typeof ImageService>;
  killed: boolean;
}

let dir: string;
let storeRoot: string;
let mongo: MongoServer | undefined;
const nodes: Node[] = [];
let raw: string;
let qcow2: string;
let rawSha512: string;

beforeAll(async () => {
  await ensureBuilt();
  dir = await mkdtemp(join(tmpdir(), "itx-scale-out-"));
  storeRoot = join(dir, "shared-store");
  await mkdir(storeRoot);
  mongo = await startMongoServer();
  const uri = withDatabase(mongo.uri, `itx_scale_${randomBytes(4).toString("hex")}`);

  const config = join(dir, "itx.yaml");
  await writeFile(
    config,
    [
      `leaseSeconds: ${LEASE_SECONDS}`,
      "maxConcurrentTasks: 2",
      `urlSigningKey: "${randomBytes(32).toString("hex")}"`,
      "stores:",
      "  - name: local",
      "    plugin: store-filesystem",
      `    options: { root: ${JSON.stringify(storeRoot)} }`,
      "    default: true",
      "    staging: true",
      "",
    ].join("\n"),
  );

  raw = await buildSourceRaw(join(dir, "disk.raw"), 8 * MiB);
  qcow2 = await buildImage(raw, "qcow2", join(dir, "disk.qcow2"));
  rawSha512 = await sha512(raw);

  const servers = await Promise.allSettled(
    Array.from({ length: PROCESSES }, (_, i) =>
      spawnServer(["--mongodb-uri", uri, "--config", config, "--data-dir", join(dir, `data-${i}`)]),
    ),
  );
  servers.forEach((s, i) => {
    if (s.status === "fulfilled") nodes.push(node(`server-${i}`, s.value));
  });
  const failed = servers.find((s) => s.status === "rejected");
  if (failed) throw (failed as PromiseRejectedResult).reason;
});

afterAll(async () => {
  await Promise.all(nodes.map((n) => n.server.stop()));
  await mongo?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

function node(name: string, server: ServerProcess): Node {
  const transport = createGrpcTransport({ baseUrl: server.url });
  return {
    name,
    server,
    transfer: createClient(TransferService, transport),
    tasks: createClient(TaskService, transport),
    images: createClient(ImageService, transport),
    killed: false,
  };
}

function alive(): Node[] {
  return nodes.filter((n) => !n.killed);
}

async function sha512(file: string): Promise<string> {
  const hash = createHash("sha512");
  for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer);
  return hash.digest("hex");
}

/**
 * Creates an upload URL on one process and PUTs the file to another (the URL's path and
 * query, on the other process's origin): with a shared signing key and shared storage,
 * any process accepts the URL and the object lands where every process sees it.
 */
async function uploadAcross(createOn: Node, putTo: Node, file: string): Promise<string> {
  const { url, seedUri } = await createOn.transfer.createUploadUrl({});
  const signed = new URL(url);
  const target = new URL(signed.pathname + signed.search, putTo.server.url);
  await putFile(target, file);
  return seedUri;
}

/** Uploads `count` copies of the qcow2 round-robin over the live processes and submits every import at once; returns the task ids. */
async function uploadAndImport(count: number): Promise<string[]> {
  const live = alive();
  const seeds = await Promise.all(
    Array.from({ length: count }, (_, i) => uploadAcross(live[i % live.length]!, live[(i + 1) % live.length]!, qcow2)),
  );
  const responses = await Promise.all(
    seeds.map((seedUri, i) => live[(i + 2) % live.length]!.transfer.importImage({ seedUri, diskFormat: DiskFormat.QCOW2 })),
  );
  return responses.map((r) => r.task!.id);
}

async function allImportTasks(via: Node): Promise<Map<string, Task>> {
  const { tasks, nextPageToken } = await via.tasks.listTasks({ pageSize: 1000, type: TaskType.IMPORT });
  expect(nextPageToken).toBe("");
  return new Map(tasks.map((t) => [t.id, t]));
}

const TERMINAL = new Set([TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELED]);

/** Polls until every one of `ids` is terminal; one ListTasks per poll rather than a watch stream per task. */
async function waitForEnd(ids: string[], timeoutMs: number): Promise<Map<string, Task>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const all = await allImportTasks(alive()[0]!);
    const open = ids.filter((id) => !TERMINAL.has(all.get(id)?.state ?? TaskState.UNSPECIFIED));
    if (open.length === 0) return new Map(ids.map((id) => [id, all.get(id)!]));
    if (Date.now() > deadline) {
      throw new Error(`${open.length} tasks not finished after ${timeoutMs} ms: ${JSON.stringify(open.map((id) => all.get(id)), bigintSafe)}`);
    }
    await sleep(250);
  }
}

interface LogLine {
  msg?: string;
  taskId?: string;
  attempt?: number;
  level?: number;
  [key: string]: unknown;
}

/** The server's JSON log lines (a line still being written is skipped). */
function logLines(n: Node): LogLine[] {
  const lines: LogLine[] = [];
  for (const line of n.server.log().split("\n")) {
    if (!line.startsWith("{")) continue;
    try {
      lines.push(JSON.parse(line) as LogLine);
    } catch {
      // incomplete
    }
  }
  return lines;
}

/** Every "task started" line of every process (killed ones included), with the process that wrote it. */
function starts(): { node: Node; taskId: string; attempt: number; time: number }[] {
  return nodes
    .flatMap((n) =>
      logLines(n)
        .filter((l) => l.msg === "task started")
        .map((l) => ({ node: n, taskId: l.taskId!, attempt: l.attempt!, time: Number(l.time) })),
    )
    .sort((a, b) => a.attempt - b.attempt || a.time - b.time);
}

/** Every log line about one task, per process: the evidence when a task ran more than once. */
function history(taskId: string): string {
  return nodes
    .map((n) => `${n.name} (pid ${n.server.process.pid}): ${JSON.stringify(logLines(n).filter((l) => l.taskId === taskId))}`)
    .join("\n");
}

/**
 * The process that holds a running task's lease: the one whose log says it started this
 * task as this attempt. Its workerId (`host-pid-random`) must name that process's pid.
 */
function holderOf(task: Task): Node | undefined {
  const start = starts().find((s) => s.taskId === task.id && s.attempt === task.attempts);
  if (!start) return undefined;
  expect(task.leaseOwner, `lease owner of ${task.id} started by ${start.node.name}`).toContain(`-${start.node.server.process.pid}-`);
  return start.node;
}

async function checkImages(tasks: Map<string, Task>): Promise<Image[]> {
  const via = alive()[0]!;
  const imageIds = [...tasks.values()].map((t) => t.imageId);
  expect(new Set(imageIds).size, "one image per task").toBe(imageIds.length);
  const images = await Promise.all(imageIds.map(async (id) => (await via.images.getImage({ id })).image!));
  for (const image of images) {
    expect(image, image.id).toMatchObject({ status: ImageStatus.ACTIVE, osHashAlgo: "sha512", osHashValue: rawSha512, size: BigInt(8 * MiB) });
    expect(image.locations.map((l) => l.store), image.id).toEqual(["local"]);
  }
  // Nothing ACTIVE beyond these images: no import made a second image.
  const { images: active, nextPageToken } = await via.images.listImages({ pageSize: 1000, status: ImageStatus.ACTIVE });
  expect(nextPageToken).toBe("");
  expect(active.map((i) => i.id).sort()).toEqual([...imageIds].sort());
  return images;
}

function bigintSafe(_key: string, value: unknown): unknown {
  return typeof value === "bigint" ? value.toString() : value;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

const firstBatch: string[] = [];

it("spreads 30 imports over three processes sharing one database and one store, each run exactly once", async () => {
  const started = Date.now();
  firstBatch.push(...(await uploadAndImport(FIRST_BATCH)));
  const uploaded = Date.now();
  const tasks = await waitForEnd(firstBatch, 150_000);
  const finished = Date.now();

  for (const task of tasks.values()) {
    expect(task.state, `${task.id}: ${JSON.stringify(task.error)}`).toBe(TaskState.SUCCEEDED);
    expect(task.attempts, `${task.id}\n${history(task.id)}`).toBe(1);
    expect(task.leaseOwner, task.id).toBe("");
  }
  await checkImages(tasks);

  // Each task started exactly once over the union of the logs, and it finished where it started.
  const all = starts();
  for (const id of firstBatch) {
    expect(all.filter((s) => s.taskId === id).map((s) => s.attempt), `${id}\n${history(id)}`).toEqual([1]);
  }
  const succeeded = nodes.flatMap((n) => logLines(n).filter((l) => l.msg === "task succeeded").map((l) => `${n.name} ${l.taskId}`));
  expect(succeeded.sort()).toEqual(all.map((s) => `${s.node.name} ${s.taskId}`).sort());
  const perProcess = nodes.map((n) => all.filter((s) => s.node === n).length);
  expect(perProcess.filter((c) => c > 0).length, `tasks per process: ${perProcess.join(", ")}`).toBeGreaterThanOrEqual(2);
  expect(perProcess.reduce((a, b) => a + b, 0)).toBe(FIRST_BATCH);

  // Every staged upload was removed after its import; only the 30 images are left in the shared store.
  const files = await listFiles(storeRoot);
  expect(files.filter((f) => f.startsWith("uploads/"))).toEqual([]);
  expect(files.length).toBe(FIRST_BATCH);

  console.log(
    `scale-out: ${FIRST_BATCH} uploads+imports submitted in ${uploaded - started} ms, all done ${finished - uploaded} ms later; ` +
      `tasks per process ${perProcess.join("/")}`,
  );
}, 240_000);

it("hands the tasks of a process killed with SIGKILL to the others once their leases lapse", async () => {
  const observer = nodes[0]!;
  const victim = nodes[PROCESSES - 1]!;
  const startsBefore = starts().length;
  const second = await uploadAndImport(SECOND_BATCH);
  const submitted = Date.now();

  // Every snapshot of every task, from WatchTask, which replays the task's change log in order:
  // it shows each claim, even one whose writer died before the task record itself was updated.
  const snapshots = new Map<string, Task[]>(second.map((id) => [id, []]));
  // A watchdog, not a timing check: the full suite runs Swift and other servers beside this test.
  const deadline = AbortSignal.timeout(150_000);
  const watched = Promise.all(
    second.map(async (id) => {
      for await (const { task } of observer.tasks.watchTask({ id }, { signal: deadline })) snapshots.get(id)!.push(task!);
    }),
  );
  watched.catch(() => undefined); // awaited below; a failure here must not go unhandled meanwhile

  // Wait until the victim holds a running task (its workerId known from its own log), then kill it.
  let victimWorker: string | undefined;
  while (!victimWorker) {
    if (deadline.aborted) throw new Error(`${victim.name} never ran a task of the second batch`);
    for (const task of [...snapshots.values()].map((s) => s.at(-1)).filter((t) => t?.state === TaskState.RUNNING)) {
      if (holderOf(task!) === victim) victimWorker = task!.leaseOwner;
    }
    if (!victimWorker) await sleep(25);
  }
  // "close" comes after the process's stdio is drained, so its log is complete when we read it.
  const closed = once(victim.server.process, "close");
  victim.server.process.kill("SIGKILL");
  await closed;
  await victim.server.stop();
  victim.killed = true;
  const killedAt = Date.now();

  await watched.catch(async (err: unknown) => {
    // Say which tasks were still open, as the database and as the watch streams saw them.
    const all = await allImportTasks(alive()[0]!);
    const open = second.map((id) => ({ id, db: all.get(id), watched: snapshots.get(id)!.at(-1) })).filter((t) => !TERMINAL.has(t.watched?.state ?? TaskState.UNSPECIFIED));
    throw new Error(`watch streams did not all end (${String(err)}); open as watched: ${JSON.stringify(open, bigintSafe)}`);
  });
  const finished = Date.now();
  const final = new Map(second.map((id) => [id, snapshots.get(id)!.at(-1)!]));
  const all = starts();
  const survivors = alive();
  const leasedTo = (t: Task) => (t.state === TaskState.RUNNING ? t.leaseOwner : "");
  const takenOver: string[] = [];
  for (const id of second) {
    const task = final.get(id)!;
    const evidence = `${id}\n${history(id)}\n${JSON.stringify(snapshots.get(id)!.map((t) => [t.version, TaskState[t.state], t.attempts, t.leaseOwner]), bigintSafe)}`;
    expect(task.state, `${evidence}\n${JSON.stringify(task.error)}`).toBe(TaskState.SUCCEEDED);
    const runs = all.filter((s) => s.taskId === id);
    const heldByVictim = snapshots.get(id)!.some((t) => leasedTo(t) === victimWorker);
    if (heldByVictim && task.attempts === 2) {
      // Taken over: the victim's claim, then a survivor's, no earlier than the victim's lease ran out.
      takenOver.push(id);
      const running = snapshots.get(id)!.filter((t) => t.state === TaskState.RUNNING);
      const lastByVictim = running.filter((t) => t.leaseOwner === victimWorker).at(-1)!;
      const claim = running.find((t) => t.attempts === 2)!;
      expect(survivors.some((n) => claim.leaseOwner.includes(`-${n.server.process.pid}-`)), evidence).toBe(true);
      expect(timestampMs(claim.updateTime!), evidence).toBeGreaterThanOrEqual(timestampMs(lastByVictim.leaseExpireTime!));
      // The victim may have died between committing its claim and logging it; the survivor's start is always logged.
      expect(runs.filter((s) => s.node !== victim).map((s) => s.attempt), evidence).toEqual([2]);
      expect(runs.filter((s) => s.node === victim).every((s) => s.attempt === 1), evidence).toBe(true);
    } else {
      // Finished by whoever claimed it first (the victim too, if it got that far before it died).
      expect(task.attempts, evidence).toBe(1);
      expect(runs.map((s) => s.attempt), evidence).toEqual([1]);
      if (!heldByVictim) expect(runs[0]!.node, evidence).not.toBe(victim);
    }
  }
  expect(takenOver.length, `${victim.name} (${victimWorker}) was killed holding no unfinished task`).toBeGreaterThanOrEqual(1);
  // Nothing else was started meanwhile: no task of the first batch ran again.
  const earlier = new Set(firstBatch);
  const later = all.filter((s) => earlier.has(s.taskId));
  expect(later.length, later.map((s) => history(s.taskId)).join("\n")).toBe(startsBefore);

  // No image is ACTIVE twice or missing, over both batches.
  const everything = await allImportTasks(observer);
  expect(everything.size).toBe(FIRST_BATCH + SECOND_BATCH);
  await checkImages(everything);
  const files = await listFiles(storeRoot);
  const images = files.filter((f) => f.startsWith("images/") && !TEMP_FILE.test(f));
  expect(images.length).toBe(FIRST_BATCH + SECOND_BATCH);
  // The survivors' own temporary task folders are gone.
  for (const n of survivors) expect(await readdir(join(dir, `data-${nodes.indexOf(n)}`, "work")).catch(() => []), n.name).toEqual([]);

  const leftovers = files.filter((f) => !images.includes(f));
  console.log(
    `scale-out: killed ${victim.name} (${victimWorker}) ${killedAt - submitted} ms after submitting ${SECOND_BATCH} imports; ` +
      `${takenOver.length} task(s) taken over; all done ${finished - killedAt} ms after the kill; ` +
      `files left in the shared store besides images: ${JSON.stringify(leftovers)}`,
  );
}, 240_000);
