import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Code, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, expect, it } from "vitest";
import { DiskFormat } from "../../src/gen/imagetransfer/v1/image_pb.js";
import { TaskState } from "../../src/gen/imagetransfer/v1/task_pb.js";
import { TransferService } from "../../src/gen/imagetransfer/v1/transfer_pb.js";
import { buildSourceRaw, MiB } from "../helpers/disk-images.js";
import { startTestService, type TestService } from "../helpers/service.js";
import { uploadFile, watchToEnd } from "../helpers/transfer.js";

let dir: string;
let raw: string;
let service: TestService;
let transfer: ReturnType<typeof createClient<typeof TransferService>>;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "itx-idem-"));
  raw = await buildSourceRaw(join(dir, "disk.raw"), 2 * MiB);
  service = await startTestService();
  transfer = createClient(TransferService, createGrpcTransport({ baseUrl: service.url }));
});
afterAll(async () => {
  await service?.stop();
  await rm(dir, { recursive: true, force: true });
});

it("returns the first call's task and image when a client retries with the same idempotency key", async () => {
  const seedUri = await uploadFile(service.url, raw);
  const request = { seedUri, diskFormat: DiskFormat.RAW, name: "retried", idempotencyKey: "import-42" };
  const [first, second] = await Promise.all([transfer.importImage(request), transfer.importImage(request)].map((p) => p.catch((e: unknown) => e)));
  // Two racing calls: one starts the task; the other gets it too, or is told to retry while it is being created.
  const answers = [first, second].filter((a): a is Awaited<ReturnType<typeof transfer.importImage>> => !(a instanceof Error));
  expect(answers.length).toBeGreaterThanOrEqual(1);
  for (const other of [first, second].filter((a) => a instanceof Error)) expect(other).toMatchObject({ code: Code.Aborted });
  const third = await transfer.importImage(request);
  expect(new Set([...answers, third].map((a) => a.task!.id)).size).toBe(1);
  expect(third.image!.id).toBe(answers[0]!.image!.id);
  expect((await watchToEnd(service.url, third.task!.id)).state).toBe(TaskState.SUCCEEDED);

  // Exports too: the same key, the same task.
  const exportRequest = { imageId: third.image!.id, diskFormat: DiskFormat.QCOW2, idempotencyKey: "export-7" };
  const a = await transfer.exportImage(exportRequest);
  const b = await transfer.exportImage(exportRequest);
  expect(b.task!.id).toBe(a.task!.id);
  // Without a key, every call starts its own task.
  const c = await transfer.exportImage({ ...exportRequest, idempotencyKey: "" });
  expect(c.task!.id).not.toBe(a.task!.id);
});

it("frees the key when the call it was reserved for fails, so a corrected retry works", async () => {
  const seedUri = await uploadFile(service.url, raw);
  const bad = { seedUri, diskFormat: DiskFormat.RAW, imageId: "00000000-0000-4000-8000-000000000000", idempotencyKey: "fix-and-retry" };
  await expect(transfer.importImage(bad)).rejects.toMatchObject({ code: Code.NotFound });
  const { task } = await transfer.importImage({ ...bad, imageId: "" });
  expect((await watchToEnd(service.url, task!.id)).state).toBe(TaskState.SUCCEEDED);
  await expect(transfer.importImage({ ...bad, idempotencyKey: "k".repeat(129) })).rejects.toMatchObject({ code: Code.InvalidArgument });
});
