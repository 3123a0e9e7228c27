/**
 * Scale-out: three built `itx serve` processes share one MongoDB-wire database (a real
 * FerretDB) and one filesystem store root (shared storage, as Swift or S3 would be in
 * production). Any process accepts any process's upload URLs, imports are spread over
 * the processes by their task runners, and when one process dies with SIGKILL in the
 * middle of its work the others take its tasks over once its leases lapse.
 */
import { createHash, randomBytes } from "node:crypto";
import { once } from "node:events";
import { createReadStream } from "node:fs";
import { mkdir, mkdtemp, readdir, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable } from "node:stream";
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

const PROCESSES = 3;
const FIRST_BATCH = 30;
const SECOND_BATCH = 10;
const LEASE_SECONDS = 2;

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
  diagUri = uri; // DIAG

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
  const put = await fetch(target, {
    method: "PUT",
    body: Readable.toWeb(createReadStream(file)) as ReadableStream,
    headers: { "content-length": String((await stat(file)).size) },
    duplex: "half",
  } as RequestInit);
  expect(put.status, `PUT ${target.pathname} to ${putTo.name}: ${await put.clone().text()}`).toBe(201);
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

// DIAG-BEGIN
import { MongoClient } from "mongodb";
let diagUri = "";
async function diag(ids: string[]): Promise<void> {
  const client = new MongoClient(diagUri, { directConnection: true });
  try {
    const db = client.db(new URL(diagUri.replace(/^mongodb:/, "http:")).pathname.slice(1));
    for (const id of ids) {
      const docs = await db.collection("task_changes").find({ recordId: id }).sort({ version: 1 }).toArray();
      const t0 = docs[0]?.record.createTime ?? 0;
      console.log(`DIAG ${id}\n` + docs.map((d: any) => {
        const r = d.record;
        return `  v${r.version} ${r.state} att=${r.attempts} owner=${r.lease?.owner ?? "-"} exp=${r.lease ? r.lease.expireTime - t0 : "-"} upd=${r.updateTime - t0} exp-upd=${r.lease ? r.lease.expireTime - r.updateTime : "-"} stage=${r.progress?.stage ?? "-"}`;
      }).join("\n"));
      const doc = await db.collection("tasks").findOne({ _id: id as any });
      console.log(`  doc v${doc?.version} ${doc?.state} owner=${doc?.lease?.owner}`);
    }
    console.log("DIAG logs\n" + ids.map(history).join("\n"));
  } finally {
    await client.close();
  }
}
// DIAG-END

const firstBatch: string[] = [];

it("spreads 30 imports over three processes sharing one database and one store, each run exactly once", async () => {
  const started = Date.now();
  firstBatch.push(...(await uploadAndImport(FIRST_BATCH)));
  const uploaded = Date.now();
  const tasks = await waitForEnd(firstBatch, 60_000);
  const finished = Date.now();
  await diag([...tasks.values()].filter((t) => t.attempts !== 1).map((t) => t.id)); // DIAG

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
}, 120_000);

it("hands the tasks of a process killed with SIGKILL to the others once their leases lapse", async () => {
  const second = await uploadAndImport(SECOND_BATCH);
  const submitted = Date.now();

  // Wait until some process holds a running task of this batch, then kill that process.
  let victim: Node | undefined;
  let observer: Node | undefined;
  let heldAtKill: Task[] = [];
  const deadline = Date.now() + 30_000;
  while (!victim) {
    if (Date.now() > deadline) throw new Error("no task of the second batch was seen running");
    observer = alive()[0]!;
    const all = await allImportTasks(observer);
    const running = second.map((id) => all.get(id)!).filter((t) => t.state === TaskState.RUNNING);
    for (const task of running) {
      const holder = holderOf(task);
      if (holder) {
        victim = holder;
        heldAtKill = running.filter((t) => t.leaseOwner === task.leaseOwner);
        break;
      }
    }
    if (!victim) await sleep(50);
  }
  const victimWorker = heldAtKill[0]!.leaseOwner;
  // "close" comes after the process's stdio is drained, so its log is complete when we read it.
  const closed = once(victim.server.process, "close");
  victim.server.process.kill("SIGKILL");
  await closed;
  await victim.server.stop();
  victim.killed = true;
  const killedAt = Date.now();

  // After the kill, the tasks still running under the dead worker's lease are the orphans.
  const afterKill = await allImportTasks(alive()[0]!);
  const orphans = second.filter((id) => {
    const t = afterKill.get(id)!;
    return t.state === TaskState.RUNNING && t.leaseOwner === victimWorker;
  });
  expect(orphans.length, `${victim.name} (${victimWorker}) held ${heldAtKill.map((t) => t.id).join(", ")} when killed`).toBeGreaterThanOrEqual(1);

  const tasks = await waitForEnd(second, 60_000);
  const finished = Date.now();
  await diag([...tasks.values()].filter((t) => t.attempts !== (orphans.includes(t.id) ? 2 : 1) || orphans.includes(t.id)).map((t) => t.id)); // DIAG
  for (const task of tasks.values()) {
    expect(task.state, `${task.id}: ${JSON.stringify(task.error)}`).toBe(TaskState.SUCCEEDED);
    expect(task.attempts, `${task.id}\n${history(task.id)}`).toBe(orphans.includes(task.id) ? 2 : 1);
  }

  // The logs agree: the victim started each orphan (attempt 1) and never finished it; a survivor started it again (attempt 2).
  const all = starts();
  const victimSucceeded = new Set(logLines(victim).filter((l) => l.msg === "task succeeded").map((l) => l.taskId));
  for (const id of orphans) {
    const runs = all.filter((s) => s.taskId === id);
    expect(runs.map((s) => `${s.attempt} ${s.node === victim ? "victim" : "survivor"}`), `${id}\n${history(id)}`).toEqual(["1 victim", "2 survivor"]);
    expect(victimSucceeded.has(id), id).toBe(false);
  }
  for (const id of second.filter((id) => !orphans.includes(id))) {
    expect(all.filter((s) => s.taskId === id).map((s) => s.attempt), `${id}\n${history(id)}`).toEqual([1]);
  }
  // Tasks of the first batch were not touched again.
  for (const id of firstBatch) expect(all.filter((s) => s.taskId === id).length, id).toBe(1);

  // No image is ACTIVE twice or missing, over both batches.
  const everything = await allImportTasks(alive()[0]!);
  expect(everything.size).toBe(FIRST_BATCH + SECOND_BATCH);
  await checkImages(everything);

  const files = await listFiles(storeRoot);
  const images = files.filter((f) => !f.startsWith("uploads/") && !/\.tmp-[0-9a-f]{16}$/.test(f));
  expect(images.length).toBe(FIRST_BATCH + SECOND_BATCH);
  const leftovers = files.filter((f) => !images.includes(f));
  const workDirs = await Promise.all(alive().map((n) => readdir(join(dir, `data-${nodes.indexOf(n)}`, "work")).catch(() => [])));
  expect(workDirs.flat()).toEqual([]);

  console.log(
    `scale-out: killed ${victim.name} (${victimWorker}) ${killedAt - submitted} ms after submitting ${SECOND_BATCH} imports, ` +
      `holding ${orphans.length} task(s); all done ${finished - killedAt} ms after the kill; ` +
      `files left in the shared store besides images: ${JSON.stringify(leftovers)}`,
  );
}, 120_000);
