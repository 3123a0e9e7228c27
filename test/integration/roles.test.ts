import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, expect, it } from "vitest";
import { DiskFormat } from "../../src/gen/imagetransfer/v1/image_pb.js";
import { TaskService, TaskState } from "../../src/gen/imagetransfer/v1/task_pb.js";
import { TransferService } from "../../src/gen/imagetransfer/v1/transfer_pb.js";
import { buildSourceRaw, MiB } from "../helpers/disk-images.js";
import { startTestService, type TestService } from "../helpers/service.js";
import { uploadFile } from "../helpers/transfer.js";

let dir: string;
let api: TestService;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "itx-roles-"));
  api = await startTestService({ role: "api", dataDir: join(dir, "data") });
});
afterAll(async () => {
  await api?.stop({ keepData: true });
  await rm(dir, { recursive: true, force: true });
});

it("leaves tasks to workers when it only serves the API, and a worker on the same data runs them", async () => {
  const raw = await buildSourceRaw(join(dir, "disk.raw"), 4 * MiB);
  const transport = createGrpcTransport({ baseUrl: api.url });
  const transfer = createClient(TransferService, transport);
  const tasks = createClient(TaskService, transport);
  const seedUri = await uploadFile(api.url, raw);
  const { task } = await transfer.importImage({ seedUri, diskFormat: DiskFormat.RAW });

  // Several runner polls pass: nobody runs it.
  await new Promise((r) => setTimeout(r, 1_500));
  expect((await tasks.getTask({ id: task!.id })).task?.state).toBe(TaskState.PENDING);

  const worker = await startTestService({ role: "worker", dataDir: join(dir, "data") });
  try {
    let state = TaskState.PENDING;
    for await (const { task: t } of tasks.watchTask({ id: task!.id })) state = t!.state;
    expect(state).toBe(TaskState.SUCCEEDED);
  } finally {
    await worker.stop({ keepData: true });
  }
});
