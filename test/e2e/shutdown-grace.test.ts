import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DiskFormat } from "../../src/gen/imagetransfer/v1/image_pb.js";
import { TaskService, TaskState, type Task } from "../../src/gen/imagetransfer/v1/task_pb.js";
import { TransferService } from "../../src/gen/imagetransfer/v1/transfer_pb.js";
import { ensureBuilt, spawnServer, type ServerProcess } from "../helpers/built-cli.js";
import { buildImage, buildSourceRaw, MiB } from "../helpers/disk-images.js";
import { uploadFile, watchToEnd } from "../helpers/transfer.js";

let dir: string;
let qcow2: string;
const servers: ServerProcess[] = [];

beforeAll(async () => {
  await ensureBuilt();
  dir = await mkdtemp(join(tmpdir(), "itx-grace-"));
  qcow2 = await buildImage(await buildSourceRaw(join(dir, "disk.raw"), 384 * MiB), "qcow2", join(dir, "disk.qcow2"));
}, 120_000);
afterAll(async () => {
  await Promise.all(servers.map((s) => s.stop()));
  await rm(dir, { recursive: true, force: true });
});

async function server(name: string, config: string): Promise<ServerProcess> {
  const file = join(dir, `${name}.yaml`);
  await writeFile(file, config);
  const started = await spawnServer(["--config", file, "--data-dir", join(dir, name.split("-")[0]!)]);
  servers.push(started);
  return started;
}

/** Starts an import on `via` and returns once the task is RUNNING. */
async function runningImport(via: ServerProcess): Promise<Task> {
  const seedUri = await uploadFile(via.url, qcow2);
  const { task } = await createClient(TransferService, createGrpcTransport({ baseUrl: via.url })).importImage({ seedUri, diskFormat: DiskFormat.QCOW2 });
  for await (const { task: t } of createClient(TaskService, createGrpcTransport({ baseUrl: via.url })).watchTask({ id: task!.id })) {
    if (t!.state === TaskState.RUNNING && t!.progress?.stage === "converting") return t!;
  }
  throw new Error("the import ended before it was seen running");
}

describe("SIGTERM with an import running", () => {
  it("lets the import finish within the grace period, then exits 0", async () => {
    const a = await server("one", "shutdownGraceSeconds: 60\n");
    const task = await runningImport(a);
    const exited = new Promise<number | null>((resolve) => a.process.once("exit", resolve));
    a.process.kill("SIGTERM");
    expect(await exited).toBe(0);
    // The finished state is in the database the process left behind.
    const reader = await server("one-reader", "role: api\n");
    const { task: after } = await createClient(TaskService, createGrpcTransport({ baseUrl: reader.url })).getTask({ id: task.id });
    expect(after).toMatchObject({ state: TaskState.SUCCEEDED, attempts: 1 });
  }, 120_000);

  it("hands the import to another worker at once when the grace period is over", async () => {
    // A long lease: the handover must come from the released lease, not from waiting for it to lapse.
    const a = await server("two-a", "shutdownGraceSeconds: 0\nleaseSeconds: 300\n");
    const task = await runningImport(a);
    // Stopped at once (the import is too quick now to wait for another server to start first);
    // the second worker then finds the task's lease released.
    await a.stop();
    const b = await server("two-b", "leaseSeconds: 300\n");
    const finished = await watchToEnd(b.url, task.id);
    expect(finished, JSON.stringify(finished.error)).toMatchObject({ state: TaskState.SUCCEEDED, attempts: 2 });
  }, 120_000);
});
