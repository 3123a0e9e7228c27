/**
 * Swift failing under a real service: wrong credentials, a missing container, a Swift that
 * goes away in the middle of a transfer, and 503 storms. The Swift store talks to the real
 * Swift through a fault proxy (test/helpers/swift.ts) that can cut connections, refuse
 * them, or answer 503. Every failure must end in a task error with a reason code and a
 * message naming the store, a KILLED image and no object left in Swift; transient faults
 * must be ridden out with retries.
 */
import { randomBytes } from "node:crypto";
import * as fs from "node:fs/promises";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DiskFormat, ImageService, ImageStatus } from "../../src/gen/imagetransfer/v1/image_pb.js";
import { TaskState, type Task } from "../../src/gen/imagetransfer/v1/task_pb.js";
import { TransferService } from "../../src/gen/imagetransfer/v1/transfer_pb.js";
import { startTestService, type TestService } from "../helpers/service.js";
import {
  createContainer,
  objectNames,
  openSwiftStore,
  removeContainer,
  swiftBehindFaultProxy,
  swiftRequest,
  swiftStoreOptions,
  uniqueContainer,
  type FaultProxy,
} from "../helpers/swift.js";
import { uploadFile, watchToEnd } from "../helpers/transfer.js";

const MiB = 1024 * 1024;
const DISK_BYTES = 6 * MiB;

const container = uniqueContainer("faults");
const goneContainer = uniqueContainer("gone");
const neverContainer = uniqueContainer("never");
let proxy: FaultProxy;
let service: TestService;
let work: string;
let disk: string;
let transfer: Client<typeof TransferService>;
let images: Client<typeof ImageService>;

/** Imports a raw disk, from `seedUri` or uploaded to the local staging store, into `stores`; follows the task to its end. */
async function importInto(stores: string[], seedUri?: string): Promise<Task> {
  const seed = seedUri ?? (await uploadFile(service.url, disk));
  const { task } = await transfer.importImage({ seedUri: seed, diskFormat: DiskFormat.RAW, stores });
  return watchToEnd(service.url, task!.id);
}

async function imageStatus(id: string): Promise<ImageStatus> {
  return (await images.getImage({ id })).image!.status;
}

/** What the failed import left in Swift: nothing visible, and (once Swift answers) no segments. */
async function expectNothingStored(task: Task, store = container): Promise<void> {
  expect(await imageStatus(task.imageId)).toBe(ImageStatus.KILLED);
  expect((await swiftRequest("HEAD", `/${store}/images/${task.imageId}`)).status).toBe(404);
}

beforeAll(async () => {
  work = await fs.mkdtemp(path.join(tmpdir(), "itx-swift-faults-"));
  disk = path.join(work, "disk.raw");
  await fs.writeFile(disk, randomBytes(DISK_BYTES));
  await createContainer(container);
  await createContainer(goneContainer);
  const swift = await swiftBehindFaultProxy(container);
  proxy = swift.proxy;
  service = await startTestService({
    stores: [
      ...swift.stores,
      { name: "swift-bad-key", plugin: "store-swift", options: swiftStoreOptions(container, { key: "not-the-key" }) },
      { name: "swift-no-container", plugin: "store-swift", options: swiftStoreOptions(neverContainer) },
      { name: "swift-gone", plugin: "store-swift", options: swiftStoreOptions(goneContainer) },
    ],
  });
  const transport = createGrpcTransport({ baseUrl: service.url });
  transfer = createClient(TransferService, transport);
  images = createClient(ImageService, transport);
}, 120_000);

afterAll(async () => {
  await service?.stop();
  await proxy?.close();
  for (const name of [container, goneContainer, neverContainer]) await removeContainer(name);
  if (work) await fs.rm(work, { recursive: true, force: true });
}, 60_000);

describe("refused at start-up", () => {
  it("a store with wrong credentials is unavailable, and an import naming it says why", async () => {
    const err = await transfer.importImage({ seedUri: "swift://swift-bad-key/uploads/x", diskFormat: DiskFormat.RAW }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ConnectError);
    expect((err as ConnectError).code).toBe(Code.FailedPrecondition);
    expect((err as ConnectError).rawMessage).toMatch(/^store "swift-bad-key" is unavailable: cannot open: .*refused the credentials of user "test:tester"/);
    expect((err as ConnectError).rawMessage).not.toContain("not-the-key");
  });

  it("a store whose container does not exist is unavailable, and says how to fix it", async () => {
    const err = await transfer.importImage({ seedUri: "swift://swift-no-container/uploads/x", diskFormat: DiskFormat.RAW }).catch((e: unknown) => e);
    expect((err as ConnectError).code).toBe(Code.FailedPrecondition);
    expect((err as ConnectError).rawMessage).toContain(`store "swift-no-container" is unavailable`);
    expect((err as ConnectError).rawMessage).toContain(`container "${neverContainer}" does not exist; create it`);
  });
});

describe("failures during a transfer", () => {
  it("a container removed after start-up fails the import with the store and container named", async () => {
    await removeContainer(goneContainer);
    const task = await importInto(["swift-gone"]);
    expect(task.state).toBe(TaskState.FAILED);
    expect(task.error?.reason).toBe("STORE_FAILED");
    expect(task.error?.message).toContain(`store "swift-gone"`);
    expect(task.error?.message).toContain(`container "${goneContainer}`);
    expect(task.error?.message).toContain("does not exist");
    expect(await imageStatus(task.imageId)).toBe(ImageStatus.KILLED);
  });

  it("Swift going away half-way through storing fails the import; no object is left, and the segments go with removePartialWrites", async () => {
    proxy.mode = "pass";
    const start = proxy.bytesUp;
    proxy.whenUploaded(start + 2.5 * MiB, () => proxy.goDown());
    const task = await importInto(["swift"]);
    expect(task.state).toBe(TaskState.FAILED);
    expect(task.error?.reason).toBe("STORE_FAILED");
    expect(task.error?.message).toMatch(
      // The last try's error: the write is tried again, and a later try may fail earlier (looking up segments).
      new RegExp(`^could not store the image in swift: .*store "swift": [a-z ]+ (of )?object "images/${task.imageId}" in container "${container}": (segment \\d+: )?Swift did not answer \\(ECONN(RESET|REFUSED)\\)$`),
    );
    await expectNothingStored(task);

    // Back up: what the dead write left (its first segments) is found and removed.
    proxy.mode = "pass";
    const direct = await openSwiftStore(swiftStoreOptions(container));
    const leftover = (await objectNames(`${container}_segments`)).filter((n) => n.startsWith(`images/${task.imageId}/`));
    expect(await direct.removePartialWrites!(new Date(Date.now() + 5_000))).toBe(leftover.length);
    expect((await objectNames(`${container}_segments`)).filter((n) => n.startsWith(`images/${task.imageId}/`))).toEqual([]);
  });

  it("Swift going away half-way through reading a seed and staying away fails with STORE_UNAVAILABLE naming the store", async () => {
    proxy.mode = "pass";
    expect((await swiftRequest("PUT", `/${container}/seeds/away.raw`, { body: await fs.readFile(disk) })).status).toBe(201);
    proxy.whenDownloaded(proxy.bytesDown + 2 * MiB, () => proxy.goDown());
    const task = await importInto(["local"], "swift://swift/seeds/away.raw");
    expect(task.state).toBe(TaskState.FAILED);
    expect(task.error?.reason).toBe("STORE_UNAVAILABLE");
    expect(task.error?.message).toMatch(/^store "swift"/);
    expect(await imageStatus(task.imageId)).toBe(ImageStatus.KILLED);
    proxy.mode = "pass";
  });

  it("Swift going away half-way through a read and coming back is ridden out: the read resumes", async () => {
    proxy.mode = "pass";
    expect((await swiftRequest("PUT", `/${container}/seeds/blip.raw`, { body: await fs.readFile(disk) })).status).toBe(201);
    proxy.whenDownloaded(proxy.bytesDown + 2 * MiB, () => {
      proxy.goDown();
      setTimeout(() => (proxy.mode = "pass"), 300);
    });
    const task = await importInto(["local"], "swift://swift/seeds/blip.raw");
    expect(task.state).toBe(TaskState.SUCCEEDED);
    expect((await images.getImage({ id: task.imageId })).image!.size).toBe(BigInt(DISK_BYTES));
  });

  it("a short 503 storm is ridden out with retries, reading from and writing to Swift", async () => {
    proxy.mode = "pass";
    expect((await swiftRequest("PUT", `/${container}/seeds/storm.raw`, { body: await fs.readFile(disk) })).status).toBe(201);
    const before = proxy.refused503;
    proxy.fail503(4);
    const read = await importInto(["local"], "swift://swift/seeds/storm.raw");
    expect(read.state).toBe(TaskState.SUCCEEDED);
    expect(proxy.refused503 - before).toBe(4);

    proxy.fail503(4);
    const written = await importInto(["swift"]);
    expect(written.error?.message ?? "").toBe("");
    expect(written.state).toBe(TaskState.SUCCEEDED);
    expect(proxy.refused503 - before).toBe(8);
    expect((await swiftRequest("HEAD", `/${container}/images/${written.imageId}`)).status).toBe(200);
  });

  it("a 503 storm that does not end fails the import with the store named, and leaves nothing", async () => {
    proxy.fail503(Infinity);
    try {
      const task = await importInto(["swift"]);
      expect(task.state).toBe(TaskState.FAILED);
      expect(task.error?.reason).toBe("STORE_FAILED");
      expect(task.error?.message).toContain(`store "swift"`);
      expect(task.error?.message).toContain("Swift is unavailable or overloaded (HTTP 503)");
      proxy.mode = "pass";
      await expectNothingStored(task);
      expect((await objectNames(`${container}_segments`)).filter((n) => n.startsWith(`images/${task.imageId}/`))).toEqual([]);
    } finally {
      proxy.mode = "pass";
    }
  });

  it("an export whose copy in Swift was altered fails CHECKSUM_MISMATCH and writes no export", async () => {
    proxy.mode = "pass";
    const imported = await importInto(["swift"]);
    expect(imported.state).toBe(TaskState.SUCCEEDED);
    // Same size, other bytes: only the recorded sha512 can tell.
    expect((await swiftRequest("PUT", `/${container}/images/${imported.imageId}`, { body: randomBytes(DISK_BYTES) })).status).toBe(201);
    const { task } = await transfer.exportImage({ imageId: imported.imageId, diskFormat: DiskFormat.QCOW2, store: "swift" });
    const exported = await watchToEnd(service.url, task!.id);
    expect(exported.state).toBe(TaskState.FAILED);
    expect(exported.error?.reason).toBe("CHECKSUM_MISMATCH");
    expect(exported.error?.message).toContain("does not match the image's sha512");
    expect((await swiftRequest("HEAD", `/${container}/exports/${imported.imageId}.qcow2`)).status).toBe(404);
  });
});
