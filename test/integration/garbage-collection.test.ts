import { createHash } from "node:crypto";
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { newId } from "../../src/core/ids.js";
import { TaskHub } from "../../src/core/task-hub.js";
import { newTaskRecord } from "../../src/core/task.js";
import { AdminService } from "../../src/gen/imagetransfer/v1/admin_pb.js";
import { DiskFormat, ImageService, ImageStatus } from "../../src/gen/imagetransfer/v1/image_pb.js";
import { TaskService, TaskState, type Task } from "../../src/gen/imagetransfer/v1/task_pb.js";
import { TransferService } from "../../src/gen/imagetransfer/v1/transfer_pb.js";
import { Tokens } from "../../src/tokens.js";
import { buildSourceRaw, MiB } from "../helpers/disk-images.js";
import { faultsOf, testPluginsDir } from "../helpers/fault-store.js";
import { startTestService, type TestService } from "../helpers/service.js";
import { importFile, uploadFile, watchToEnd } from "../helpers/transfer.js";

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

/**
 * The battery: imports that failed (a refused image, a store that broke off), were
 * canceled mid-write, and images deleted with their exports, beside an active image with
 * exports and an import paused mid-write. Two stores: the local one and the fault-injecting
 * one (the filesystem store with faults on demand), so writes break and stall for real.
 */
describe("after a battery of failed, canceled and deleted transfers", () => {
  let battery: TestService;
  const faults = faultsOf("faulty");
  const stores = () => ({ local: join(battery.dataDir, "images"), faulty: join(battery.dataDir, "faulty") });

  beforeAll(async () => {
    battery = await startTestService({
      gcIntervalSeconds: 0,
      pluginsDirs: [testPluginsDir],
      // Stalls here are pauses the test ends itself (release or cancel).
      pluginStallTimeoutSeconds: 120,
      stores: [
        { name: "local", plugin: "store-filesystem", options: { root: "images" }, default: true, staging: true },
        { name: "faulty", plugin: "store-faulty", options: { root: "faulty" } },
      ],
    });
  });
  afterAll(async () => {
    faults.reset();
    faults.release();
    await battery?.stop();
  });

  /** Every file under a store's root, hidden temporary files too, as sorted relative paths. */
  async function filesIn(root: string): Promise<string[]> {
    const entries = await readdir(root, { recursive: true, withFileTypes: true }).catch(() => []);
    return entries
      .filter((e) => e.isFile())
      .map((e) => join(e.parentPath ?? (e as unknown as { path: string }).path, e.name).slice(root.length + 1))
      .sort();
  }

  async function until(what: string, condition: () => boolean | Promise<boolean>): Promise<void> {
    for (let waited = 0; !(await condition()); waited += 50) {
      if (waited > 30_000) throw new Error(`still waiting for ${what} after 30 s`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }

  it("a sweep leaves no orphan in any store and removes nothing an active image or a running import uses", async () => {
    const baseUrl = battery.url;
    const transport = createGrpcTransport({ baseUrl });
    const transfer = createClient(TransferService, transport);
    const images = createClient(ImageService, transport);
    const tasks = createClient(TaskService, transport);
    const sha512 = createHash("sha512").update(await readFile(raw)).digest("hex");
    let lastSeed = "";
    const importInto = async (targets: string[], extra: { diskFormat?: DiskFormat; allStoresMustSucceed?: boolean } = {}) => {
      const seedUri = (lastSeed = await uploadFile(baseUrl, raw));
      const { task } = await transfer.importImage({ seedUri, diskFormat: DiskFormat.RAW, stores: targets, ...extra });
      return task!;
    };
    const exportTo = async (imageId: string, diskFormat: DiskFormat, store: string) => {
      const { task } = await transfer.exportImage({ imageId, diskFormat, store });
      return watchToEnd(baseUrl, task!.id);
    };
    const succeeded = (task: Task) => expect(task.state, `${task.error?.reason}: ${task.error?.message}`).toBe(TaskState.SUCCEEDED);
    /** Starts a transfer whose write to the faulty store stalls after 1 MiB, and waits for the stall. */
    const stalledMidWrite = async (start: () => Promise<{ id: string }>) => {
      const struck = faults.struck;
      faults.inject({ call: "write", fault: "stall", afterBytes: MiB });
      const task = await start();
      await until("the write to stall", () => faults.struck > struck);
      return task;
    };
    const cancel = async (id: string) => {
      await tasks.cancelTask({ id });
      const end = await watchToEnd(baseUrl, id);
      expect(end.state).toBe(TaskState.CANCELED);
      return end;
    };

    // In use: an active image in both stores, with an export in each.
    const keep = await watchToEnd(baseUrl, (await importInto(["local", "faulty"])).id);
    succeeded(keep);
    succeeded(await exportTo(keep.imageId, DiskFormat.QCOW2, "local"));
    succeeded(await exportTo(keep.imageId, DiskFormat.VMDK, "faulty"));

    // Failed: an image refused for its declared format, and one whose second store broke off for good.
    const refused = await watchToEnd(baseUrl, (await importInto(["local", "faulty"], { diskFormat: DiskFormat.QCOW2 })).id);
    expect(refused.state).toBe(TaskState.FAILED);
    faults.inject({ call: "write", fault: "reset", afterBytes: MiB, times: Infinity });
    const broken = await watchToEnd(baseUrl, (await importInto(["local", "faulty"], { allStoresMustSucceed: true })).id);
    faults.reset();
    expect(broken.state).toBe(TaskState.FAILED);
    expect(broken.error?.reason).toBe("STORE_FAILED");

    // Canceled mid-write: an import, and an export of the active image.
    const canceledImport = await cancel((await stalledMidWrite(() => importInto(["local", "faulty"]))).id);
    const canceledExport = await cancel(
      (await stalledMidWrite(async () => (await transfer.exportImage({ imageId: keep.imageId, diskFormat: DiskFormat.VHD, store: "faulty" })).task!)).id,
    );

    // Deleted: an image in both stores with an export in each.
    const deleted = await watchToEnd(baseUrl, (await importInto(["local", "faulty"])).id);
    succeeded(deleted);
    succeeded(await exportTo(deleted.imageId, DiskFormat.QCOW2, "local"));
    succeeded(await exportTo(deleted.imageId, DiskFormat.VHD, "faulty"));
    await images.deleteImage({ id: deleted.imageId });

    // In use: an import paused half-way through writing to the faulty store.
    const running = await stalledMidWrite(() => importInto(["local", "faulty"]));
    const runningImage = (await tasks.getTask({ id: running.id })).task!.imageId;
    const runningSeed = lastSeed;

    const collector = battery.container.resolve(Tokens.GarbageCollector);
    const inUse = [keep.imageId, runningImage];
    const gone = [refused.imageId, broken.imageId, canceledImport.imageId, canceledExport.imageId, deleted.imageId].filter((id) => !inUse.includes(id));
    const first = await collector.sweep();
    for (const uri of first.objects) expect(inUse.some((id) => uri.includes(id)), `removed ${uri}`).toBe(false);
    expect(first.workDirs).not.toContain(running.id);
    // Nothing of the failed, canceled or deleted transfers is left; what is left belongs to images in use, or is an upload.
    for (const [name, root] of Object.entries(stores())) {
      const left = await filesIn(root);
      for (const file of left) {
        expect(gone.some((id) => file.includes(id)), `${name}: ${file} is left over`).toBe(false);
        expect(inUse.some((id) => file.includes(id)) || file.startsWith("uploads/"), `${name}: ${file} belongs to nothing in use`).toBe(true);
      }
    }
    // The paused import's upload and its partial write are still there.
    expect((await filesIn(stores().faulty)).some((f) => f.includes(runningImage) && f.includes(".tmp-")), "the paused write's temporary file").toBe(true);
    expect(await readdir(join(battery.dataDir, "work"))).toContain(running.id);
    expect(await filesIn(stores().local)).toContain(runningSeed.replace("file://local/", ""));

    // The paused import goes on and succeeds with the right data.
    faults.release();
    const finished = await watchToEnd(baseUrl, running.id);
    succeeded(finished);
    expect((await images.getImage({ id: runningImage })).image!.osHashValue).toBe(sha512);

    // Two hours on, every upload URL has expired: exactly the active images and the kept exports are left.
    await collector.sweep(Date.now() + 2 * 3_600_000);
    expect(await filesIn(stores().local)).toEqual([`exports/${keep.imageId}.qcow2`, ...[keep.imageId, runningImage].sort().map((id) => `images/${id}`)]);
    expect(await filesIn(stores().faulty)).toEqual([`exports/${keep.imageId}.vmdk`, ...[keep.imageId, runningImage].sort().map((id) => `images/${id}`)]);
    expect(await readdir(join(battery.dataDir, "work")).catch(() => [])).toEqual([]);
    for (const id of inUse) expect((await images.getImage({ id })).image!.status).toBe(ImageStatus.ACTIVE);
    expect(createHash("sha512").update(await readFile(join(stores().faulty, "images", runningImage))).digest("hex")).toBe(sha512);
  }, 180_000);
});
