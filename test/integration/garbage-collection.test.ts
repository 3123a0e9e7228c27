import { mkdir, mkdtemp, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, expect, it } from "vitest";
import { newId } from "../../src/core/ids.js";
import { TaskHub } from "../../src/core/task-hub.js";
import { newTaskRecord } from "../../src/core/task.js";
import { AdminService } from "../../src/gen/imagetransfer/v1/admin_pb.js";
import { DiskFormat, ImageService, ImageStatus } from "../../src/gen/imagetransfer/v1/image_pb.js";
import { TaskState } from "../../src/gen/imagetransfer/v1/task_pb.js";
import { Tokens } from "../../src/tokens.js";
import { buildSourceRaw, MiB } from "../helpers/disk-images.js";
import { startTestService, type TestService } from "../helpers/service.js";
import { importFile, uploadFile } from "../helpers/transfer.js";

let dir: string;
let raw: string;
let service: TestService;
const root = () => join(service.dataDir, "images");

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "itx-gc-"));
  raw = await buildSourceRaw(join(dir, "disk.raw"), 2 * MiB);
  service = await startTestService({ gcIntervalSeconds: 0 });
});
afterAll(async () => {
  await service?.stop();
  await rm(dir, { recursive: true, force: true });
});

const files = async (sub: string) => (await readdir(join(root(), sub)).catch(() => [] as string[])).sort();

it("removes what nothing uses and keeps what an active image or an unfinished task still needs", async () => {
  const baseUrl = service.url;
  const images = createClient(ImageService, createGrpcTransport({ baseUrl }));
  // An active image, and its export: kept.
  const active = await importFile(baseUrl, raw, DiskFormat.RAW);
  expect(active.state).toBe(TaskState.SUCCEEDED);
  // A deleted image: its data goes at once, not at the next sweep.
  const deleted = await importFile(baseUrl, raw, DiskFormat.RAW);
  expect(await files("images")).toContain(deleted.imageId);
  await images.deleteImage({ id: deleted.imageId });
  expect(await files("images")).not.toContain(deleted.imageId);
  // A failed import: its image is KILLED.
  const failed = await importFile(baseUrl, raw, DiskFormat.QCOW2);
  expect(failed.state).toBe(TaskState.FAILED);
  // Leftovers of a worker that died: data of the killed image, and of an image nobody knows.
  const stranger = newId();
  await writeFile(join(root(), "images", failed.imageId), "partial");
  await writeFile(join(root(), "images", stranger), "orphan");
  // An upload nobody imported, and one a running import (leased by a live worker elsewhere) still reads.
  const abandoned = await uploadFile(baseUrl, raw);
  const needed = await uploadFile(baseUrl, raw);
  const hub = service.container.resolve(TaskHub);
  const running = await hub.create(newTaskRecord({ id: newId(), type: "import", imageId: newId(), owner: "default", input: { seedUri: needed } }, Date.now()));
  await service.container.resolve(Tokens.Repository).updateTask(running.id, {
    expect: ["pending"],
    state: "running",
    patch: { lease: { owner: "another-process", expireTime: Date.now() + 3_600_000 } },
  });
  // A write whose writer was killed: the store's temp file, which listings never show.
  const partial = join(root(), "images", `.${newId()}.tmp-0123456789abcdef`);
  await writeFile(partial, "half an image");
  // Temporary folders: one of a task that is gone, one of the running task.
  await mkdir(join(service.dataDir, "work", newId()), { recursive: true });
  await mkdir(join(service.dataDir, "work", running.id), { recursive: true });

  const collector = service.container.resolve(Tokens.GarbageCollector);
  // Two hours on, the abandoned upload's URL has long expired.
  const report = await collector.sweep(Date.now() + 2 * 3_600_000);
  // Also gone: the failed import's upload, kept for a retry until its URL's time was up.
  const failedUpload = report.objects.filter((uri) => uri.startsWith("file://local/uploads/") && uri !== abandoned);
  expect(failedUpload).toHaveLength(1);
  expect(report.objects.sort()).toEqual(
    [`file://local/images/${failed.imageId}`, `file://local/images/${stranger}`, abandoned, ...failedUpload].sort(),
  );
  expect(await files("images")).toEqual([active.imageId]);
  expect(report.partialWrites).toBe(1);
  expect(await files("uploads")).toEqual([needed.split("/").at(-1)]);
  expect(await readdir(join(service.dataDir, "work"))).toEqual([running.id]);
  expect(report.tasks).toBe(0);
  expect((await images.getImage({ id: active.imageId })).image?.status).toBe(ImageStatus.ACTIVE);

  // A week and a day on, finished tasks are history; the unfinished one stays. Through the RPC this time.
  const later = await collector.sweep(Date.now() + 8 * 86_400_000);
  expect(later.tasks).toBe(3);
  expect(await service.container.resolve(Tokens.Repository).findTask(active.id)).toBeUndefined();
  expect(await service.container.resolve(Tokens.Repository).findTask(running.id)).toBeDefined();
  const viaRpc = await createClient(AdminService, createGrpcTransport({ baseUrl })).collectGarbage({});
  expect(viaRpc).toMatchObject({ removedObjects: [], removedTasks: 0 });
});
