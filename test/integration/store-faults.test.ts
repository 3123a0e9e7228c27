/**
 * Store faults under a real service: the fault-injecting store (test/helpers/fault-store.ts,
 * the filesystem store with resets, 503s and stalls on demand) as the source and as the
 * destination of imports. Transient faults must be ridden out (reads resume from the last
 * byte, writes are retried), a store that stays down fails the task with a reason code
 * naming the store while other requests are served, and a store that stops making progress
 * fails the task with PLUGIN_TIMEOUT instead of hanging it.
 */
import { createHash, randomBytes } from "node:crypto";
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, beforeEach, describe, expect, it, vi } from "vitest";
import { HealthCheckResponse_ServingStatus, Health } from "../../src/gen/grpc/health/v1/health_pb.js";
import { DiskFormat, ImageService, ImageStatus } from "../../src/gen/imagetransfer/v1/image_pb.js";
import { TaskService, TaskState, type Task } from "../../src/gen/imagetransfer/v1/task_pb.js";
import { TransferService } from "../../src/gen/imagetransfer/v1/transfer_pb.js";
import { faultsOf, testPluginsDir, type FaultControl } from "../helpers/fault-store.js";
import { startTestService, type TestService } from "../helpers/service.js";
import { uploadFile, watchToEnd } from "../helpers/transfer.js";

// Tasks here are given up to 40 s to end before they count as hung (see endOf).
vi.setConfig({ testTimeout: 60_000 });

const MiB = 1024 * 1024;
const DISK_BYTES = 6 * MiB;
const SEED_KEY = "seeds/disk.raw";

let work: string;
let disk: string;
let diskSha512: string;
let service: TestService;
let faults: FaultControl;
let transfer: Client<typeof TransferService>;
let images: Client<typeof ImageService>;
let tasks: Client<typeof TaskService>;
let health: Client<typeof Health>;
const faultyRoot = () => join(service.dataDir, "faulty");

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), "itx-store-faults-"));
  disk = join(work, "disk.raw");
  const bytes = randomBytes(DISK_BYTES);
  await writeFile(disk, bytes);
  diskSha512 = createHash("sha512").update(bytes).digest("hex");
  service = await startTestService({
    pluginsDirs: [testPluginsDir],
    pluginStallTimeoutSeconds: 2,
    pluginCallTimeoutSeconds: 3,
    stores: [
      { name: "local", plugin: "store-filesystem", options: { root: "images" }, default: true, staging: true },
      { name: "faulty", plugin: "store-faulty", options: { root: "faulty" } },
    ],
  });
  faults = faultsOf("faulty");
  await mkdir(join(faultyRoot(), "seeds"), { recursive: true });
  await writeFile(join(faultyRoot(), SEED_KEY), bytes);
  const transport = createGrpcTransport({ baseUrl: service.url });
  transfer = createClient(TransferService, transport);
  images = createClient(ImageService, transport);
  tasks = createClient(TaskService, transport);
  health = createClient(Health, transport);
}, 120_000);

afterAll(async () => {
  faults?.clear();
  await service?.stop();
  if (work) await rm(work, { recursive: true, force: true });
});

beforeEach(() => faults.reset());

/** Imports the seed held by the faulty store into `stores` (or an upload to the local store), following the task to its end. */
async function importFrom(seedUri: string, stores: string[]): Promise<Task> {
  const { task } = await transfer.importImage({ seedUri, diskFormat: DiskFormat.RAW, stores });
  return endOf(task!.id);
}

/**
 * Follows a task to its end, failing with the task as it stands if it has not ended within
 * `seconds`: a generous bound that tells a hung task from a slow one.
 */
async function endOf(id: string, seconds = 40): Promise<Task> {
  let timer: NodeJS.Timeout | undefined;
  const hung = new Promise<never>((_, reject) => {
    timer = setTimeout(async () => {
      const task = (await tasks.getTask({ id })).task!;
      reject(new Error(`task ${id} has not ended after ${seconds} s: ${TaskState[task.state]} at stage "${task.progress?.stage}", ${task.progress?.bytesDone} bytes done`));
    }, seconds * 1000);
  });
  try {
    return await Promise.race([watchToEnd(service.url, id), hung]);
  } finally {
    clearTimeout(timer);
  }
}

const fromFaultySeed = () => importFrom(`faulty://faulty/${SEED_KEY}`, ["local"]);
const intoFaultyStore = async () => importFrom(await uploadFile(service.url, disk), ["faulty"]);

/** Where each read of the seed started, in order. */
const readOffsets = () => faults.calls.filter((c) => c.call === "read" && c.key === SEED_KEY).map((c) => c.range?.offset ?? 0);

async function expectActiveWithDisk(task: Task): Promise<void> {
  expect(task.error?.message ?? "", `${task.error?.reason}`).toBe("");
  expect(task.state).toBe(TaskState.SUCCEEDED);
  const image = (await images.getImage({ id: task.imageId })).image!;
  expect(image.status).toBe(ImageStatus.ACTIVE);
  expect(image.size).toBe(BigInt(DISK_BYTES));
  expect(image.osHashValue).toBe(diskSha512);
}

/** What the faulty store holds under images/: names of objects and of temporary files alike. */
const faultyImages = async () => (await readdir(join(faultyRoot(), "images")).catch(() => [] as string[])).sort();
/** Names under the faulty store's images/ that belong to `imageId`: its object, or temporary files of its writes. */
const faultyFilesOf = async (imageId: string) => (await faultyImages()).filter((name) => name.includes(imageId));

describe("reading from a store that fails", () => {
  it("a connection reset mid-read, twice, is retried and each read resumes from the last byte received", async () => {
    faults.inject({ call: "read", fault: "reset", afterBytes: 2 * MiB, times: 2 });
    const task = await fromFaultySeed();
    await expectActiveWithDisk(task);
    expect(faults.struck).toBe(2);
    expect(readOffsets()).toEqual([0, 2 * MiB, 4 * MiB]);
  });

  it("a 503 mid-read is retried and resumes from the last byte received", async () => {
    faults.inject({ call: "read", fault: "503", afterBytes: 3 * MiB + 17 });
    const task = await fromFaultySeed();
    await expectActiveWithDisk(task);
    expect(readOffsets()).toEqual([0, 3 * MiB + 17]);
  });

  it("503s when opening the read are retried with back-off until the store answers", async () => {
    faults.inject({ call: "read", fault: "503", times: 3 });
    const task = await fromFaultySeed();
    await expectActiveWithDisk(task);
    expect(faults.struck).toBe(3);
    expect(readOffsets()).toEqual([0, 0, 0, 0]);
  });

  it("a source store that stays down fails the task with STORE_UNAVAILABLE naming the store, while other requests are served", async () => {
    faults.inject({ call: "read", fault: "reset", afterBytes: 1 * MiB, times: Infinity });
    const { task: started } = await transfer.importImage({ seedUri: `faulty://faulty/${SEED_KEY}`, diskFormat: DiskFormat.RAW, stores: ["local"] });
    // Meanwhile: listing images, reading the task and health checks all answer.
    let finished = false;
    const answered = { listImages: 0, getTask: 0, health: 0 };
    const others = (async () => {
      while (!finished) {
        await images.listImages({});
        answered.listImages++;
        expect((await tasks.getTask({ id: started!.id })).task?.id).toBe(started!.id);
        answered.getTask++;
        expect((await health.check({ service: "" })).status).toBe(HealthCheckResponse_ServingStatus.SERVING);
        answered.health++;
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
    })();
    const task = await endOf(started!.id).finally(() => (finished = true));
    await others;
    expect(task.state).toBe(TaskState.FAILED);
    expect(task.error?.reason).toBe("STORE_UNAVAILABLE");
    expect(task.error?.message).toMatch(/^store "faulty": read seeds\/disk\.raw: connection reset by the backend/);
    expect((await images.getImage({ id: task.imageId })).image!.status).toBe(ImageStatus.KILLED);
    // It was retried, within a bound, and each retry resumed from where the last one broke off.
    const offsets = readOffsets();
    expect(offsets.length).toBeGreaterThan(2);
    expect(offsets).toEqual(offsets.map((_, i) => i * MiB));
    expect(answered.listImages).toBeGreaterThan(0);
    expect(answered.getTask).toBeGreaterThan(0);
    expect(answered.health).toBeGreaterThan(0);
  });

  it("a read that stops making progress fails the task with PLUGIN_TIMEOUT instead of hanging", async () => {
    faults.inject({ call: "read", fault: "stall", afterBytes: 2 * MiB });
    const task = await fromFaultySeed();
    expect(task.state).toBe(TaskState.FAILED);
    expect(task.error?.reason).toBe("PLUGIN_TIMEOUT");
    expect(task.error?.message).toBe('plugin "store-faulty" made no progress in read within 2 s');
    expect((await images.getImage({ id: task.imageId })).image!.status).toBe(ImageStatus.KILLED);
  });

  it("a stat that never answers fails the task with PLUGIN_TIMEOUT", async () => {
    faults.inject({ call: "stat", fault: "stall", keyPrefix: SEED_KEY });
    const task = await fromFaultySeed();
    expect(task.state).toBe(TaskState.FAILED);
    expect(task.error?.reason).toBe("PLUGIN_TIMEOUT");
    expect(task.error?.message).toBe('plugin "store-faulty" did not answer in stat within 3 s');
  });
});

describe("writing to a store that fails", () => {
  it("a connection reset mid-write is retried from the local file: one object, the right sha512", async () => {
    faults.inject({ call: "write", fault: "reset", afterBytes: 3 * MiB });
    const task = await intoFaultyStore();
    await expectActiveWithDisk(task);
    expect(faults.struck).toBe(1);
    // Tried again from the first byte: a second write of the same object.
    expect(faults.calls.filter((c) => c.call === "write")).toHaveLength(2);
    expect(await faultyFilesOf(task.imageId)).toEqual([task.imageId]);
    expect(createHash("sha512").update(await readFile(join(faultyRoot(), "images", task.imageId))).digest("hex")).toBe(diskSha512);
  });

  it("503s when starting a write are retried: one object, the right sha512", async () => {
    faults.inject({ call: "write", fault: "503", times: 2 });
    const task = await intoFaultyStore();
    await expectActiveWithDisk(task);
    expect(await faultyFilesOf(task.imageId)).toEqual([task.imageId]);
  });

  it("a destination store that stays down fails the task with STORE_FAILED naming the store, and leaves nothing", async () => {
    faults.inject({ call: "write", fault: "reset", afterBytes: 2 * MiB, times: Infinity });
    const task = await intoFaultyStore();
    expect(task.state).toBe(TaskState.FAILED);
    expect(task.error?.reason).toBe("STORE_FAILED");
    expect(task.error?.message).toMatch(/^could not store the image in faulty: .*store "faulty": write images\/[0-9a-f-]{36}: connection reset by the backend/);
    expect((await images.getImage({ id: task.imageId })).image!.status).toBe(ImageStatus.KILLED);
    expect(await faultyFilesOf(task.imageId)).toEqual([]);
  });

  it("a write that stops making progress fails its store's lane, so the task, with the plugin timeout named, and leaves nothing", async () => {
    faults.inject({ call: "write", fault: "stall", afterBytes: 2 * MiB });
    const task = await intoFaultyStore();
    expect(task.state).toBe(TaskState.FAILED);
    // A store that fails drops out of the import (others may succeed): the task's reason is the storing's.
    expect(task.error?.reason).toBe("STORE_FAILED");
    expect(task.error?.message).toBe('could not store the image in faulty: faulty: plugin "store-faulty" made no progress in write within 2 s');
    expect((await images.getImage({ id: task.imageId })).image!.status).toBe(ImageStatus.KILLED);
    expect(await faultyFilesOf(task.imageId)).toEqual([]);
  });
});

describe("copying and exporting to a store that fails", () => {
  let imageId: string;
  beforeAll(async () => {
    const task = await importFrom(await uploadFile(service.url, disk), ["local"]);
    expect(task.state).toBe(TaskState.SUCCEEDED);
    imageId = task.imageId;
  }, 60_000);

  // A hung task would otherwise take the whole file down with it.
  it("a copy to a store that breaks off mid-write and stays down fails with STORE_FAILED naming the store, and leaves nothing", async () => {
    faults.inject({ call: "write", fault: "reset", afterBytes: 2 * MiB, times: Infinity });
    const { task } = await transfer.copyImage({ imageId, stores: ["faulty"] });
    const done = await endOf(task!.id);
    expect(done.state).toBe(TaskState.FAILED);
    expect(done.error?.reason).toBe("STORE_FAILED");
    expect(done.error?.message).toContain("faulty");
    expect(await faultyFilesOf(imageId)).toEqual([]);
    expect((await images.getImage({ id: imageId })).image!.status).toBe(ImageStatus.ACTIVE);
  });

  it("an export to a store that breaks off mid-write and stays down fails with STORE_FAILED naming the store, and leaves nothing", async () => {
    faults.inject({ call: "write", fault: "reset", afterBytes: 2 * MiB, times: Infinity });
    const { task } = await transfer.exportImage({ imageId, diskFormat: DiskFormat.QCOW2, store: "faulty" });
    const done = await endOf(task!.id);
    expect(done.state).toBe(TaskState.FAILED);
    expect(done.error?.reason).toBe("STORE_FAILED");
    expect(done.error?.message).toContain("faulty");
    expect((await readdir(join(faultyRoot(), "exports")).catch(() => [] as string[])).filter((name) => name.includes(imageId))).toEqual([]);
  });
});
