/**
 * Swift stopped and started in the middle of a transfer, end to end: the built `itx serve`
 * in its own process, the real Swift behind it. "Stopping Swift" is done with the TCP fault
 * proxy of test/helpers/swift.ts between the server and Swift: going down refuses new
 * connections and cuts those in flight, as a Swift whose proxy-server died would; coming
 * back forwards again. The shared Swift itself is never stopped (other tests use it).
 *
 * A Swift away for a few seconds must be ridden out, while the import fetches from it and
 * while it stores into it (one object, the right sha512, no stray segments). A Swift that
 * stays away fails the import with a reason code naming the store, leaves no object or
 * segment behind, kills the image, and other requests are answered throughout. A canceled
 * or deleted image leaves nothing in Swift either.
 */
import { createHash, randomBytes } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { Health, HealthCheckResponse_ServingStatus as Serving } from "../../src/gen/grpc/health/v1/health_pb.js";
import { DiskFormat, ImageService, ImageStatus } from "../../src/gen/imagetransfer/v1/image_pb.js";
import { TaskService, TaskState, type Task } from "../../src/gen/imagetransfer/v1/task_pb.js";
import { TransferService } from "../../src/gen/imagetransfer/v1/transfer_pb.js";
import { ensureBuilt, runCli, spawnServer, type ServerProcess } from "../helpers/built-cli.js";
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
const DISK_BYTES = 8 * MiB;
/** How long Swift stays away in the outages that must be ridden out. */
const OUTAGE_MS = 3_000;

const container = uniqueContainer("outage");
let work: string;
let disk: string;
let diskSha512: string;
let proxy: FaultProxy;
let server: ServerProcess;
let transfer: Client<typeof TransferService>;
let images: Client<typeof ImageService>;
let tasks: Client<typeof TaskService>;
let health: Client<typeof Health>;

beforeAll(async () => {
  await ensureBuilt();
  work = await mkdtemp(join(tmpdir(), "itx-store-outage-"));
  disk = join(work, "disk.raw");
  const bytes = randomBytes(DISK_BYTES);
  await writeFile(disk, bytes);
  diskSha512 = createHash("sha512").update(bytes).digest("hex");
  await createContainer(container);
  expect((await swiftRequest("PUT", `/${container}/seeds/disk.raw`, { body: bytes })).status).toBe(201);
  const swift = await swiftBehindFaultProxy(container);
  proxy = swift.proxy;
  await writeFile(join(work, "config.json"), JSON.stringify({ stores: swift.stores }));
  server = await spawnServer(["--config", join(work, "config.json"), "--data-dir", join(work, "data")]);
  const transport = createGrpcTransport({ baseUrl: server.url });
  transfer = createClient(TransferService, transport);
  images = createClient(ImageService, transport);
  tasks = createClient(TaskService, transport);
  health = createClient(Health, transport);
}, 300_000);

afterAll(async () => {
  if (proxy) proxy.mode = "pass";
  await server?.stop();
  await proxy?.close();
  await removeContainer(container);
  if (work) await rm(work, { recursive: true, force: true });
}, 60_000);

beforeEach(() => {
  proxy.mode = "pass";
});

/** Swift goes away now and comes back after `ms`; resolves once it is back. */
function outage(ms: number): { back: Promise<void> } {
  proxy.goDown();
  return { back: new Promise((resolve) => setTimeout(() => ((proxy.mode = "pass"), resolve()), ms)) };
}

/** The names Swift holds for an image, in the container and in its segments container. */
async function swiftNamesOf(imageId: string): Promise<{ objects: string[]; segments: string[] }> {
  const key = `images/${imageId}`;
  return {
    objects: (await objectNames(container)).filter((n) => n.startsWith(key)),
    segments: (await objectNames(`${container}_segments`)).filter((n) => n.startsWith(`${key}/`)),
  };
}

/**
 * Follows a task to its end while asking the server for other things (images, the task,
 * health) every 100 ms; returns the task and how many of those requests were answered.
 */
async function endWhileServing(id: string): Promise<{ task: Task; answered: number }> {
  let finished = false;
  let answered = 0;
  const others = (async () => {
    while (!finished) {
      await images.listImages({});
      expect((await tasks.getTask({ id })).task?.id).toBe(id);
      // ImageService needs only the database; it serves while a store is away.
      expect((await health.check({ service: "imagetransfer.v1.ImageService" })).status).toBe(Serving.SERVING);
      answered++;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  })();
  const task = await watchToEnd(server.url, id).finally(() => (finished = true));
  await others;
  return { task, answered };
}

async function expectActiveWithDisk(task: Task): Promise<void> {
  expect(task.error?.message ?? "", task.error?.reason).toBe("");
  expect(task.state).toBe(TaskState.SUCCEEDED);
  const image = (await images.getImage({ id: task.imageId })).image!;
  expect(image.status).toBe(ImageStatus.ACTIVE);
  expect(image.size).toBe(BigInt(DISK_BYTES));
  expect(image.osHashValue).toBe(diskSha512);
}

describe("Swift stopped and started in the middle of a transfer", { timeout: 180_000 }, () => {
  it(`Swift away for ${OUTAGE_MS / 1000} s while an import fetches from it: the read resumes and the import succeeds`, async () => {
    let away: { back: Promise<void> } | undefined;
    proxy.whenDownloaded(proxy.bytesDown + 3 * MiB, () => (away = outage(OUTAGE_MS)));
    const { task } = await transfer.importImage({ seedUri: `swift://swift/seeds/disk.raw`, diskFormat: DiskFormat.RAW, stores: ["local"] });
    const done = await watchToEnd(server.url, task!.id);
    expect(away, "Swift went away during the fetch").toBeDefined();
    await away!.back;
    await expectActiveWithDisk(done);
  });

  it(`Swift away for ${OUTAGE_MS / 1000} s while an import stores into it: the write is tried again, one object, the right sha512, no stray segments`, async () => {
    const seedUri = await uploadFile(server.url, disk);
    let away: { back: Promise<void> } | undefined;
    proxy.whenUploaded(proxy.bytesUp + 3.5 * MiB, () => (away = outage(OUTAGE_MS)));
    const { task } = await transfer.importImage({ seedUri, diskFormat: DiskFormat.RAW, stores: ["swift"] });
    const done = await watchToEnd(server.url, task!.id);
    expect(away, "Swift went away during the storing").toBeDefined();
    await away!.back;
    await expectActiveWithDisk(done);

    // What Swift serves is the disk, and it holds one object whose manifest names every segment it keeps.
    const object = await swiftRequest("GET", `/${container}/images/${done.imageId}`);
    expect(object.status).toBe(200);
    expect(createHash("sha512").update(Buffer.from(await object.arrayBuffer())).digest("hex")).toBe(diskSha512);
    const names = await swiftNamesOf(done.imageId);
    expect(names.objects).toEqual([`images/${done.imageId}`]);
    const manifest = (await (await swiftRequest("GET", `/${container}/images/${done.imageId}?multipart-manifest=get`)).json()) as Array<{ name: string }>;
    const inManifest = manifest.map((segment) => segment.name.replace(`/${container}_segments/`, "")).sort();
    expect(names.segments.sort()).toEqual(inManifest);
  });

  it("Swift that stays away while an import stores into it: FAILED naming the store, image killed, other requests answered; the sweep removes what the write left", async () => {
    const seedUri = await uploadFile(server.url, disk);
    proxy.whenUploaded(proxy.bytesUp + 3.5 * MiB, () => proxy.goDown());
    const { task } = await transfer.importImage({ seedUri, diskFormat: DiskFormat.RAW, stores: ["swift"] });
    try {
      const { task: done, answered } = await endWhileServing(task!.id);
      expect(done.state).toBe(TaskState.FAILED);
      expect(done.error?.reason).toBe("STORE_FAILED");
      expect(done.error?.message).toMatch(/^could not store the image in swift: .*store "swift"/);
      expect((await images.getImage({ id: done.imageId })).image!.status).toBe(ImageStatus.KILLED);
      expect(answered).toBeGreaterThan(0);
    } finally {
      proxy.mode = "pass";
    }
    // Swift is back. No object was made; the segments the write sent before Swift went away
    // could not be removed while it was away (not by the plugin, not by the host). The sweep
    // removes unfinished writes once they are an hour old (a younger one may still have a
    // writer); here the store's own sweep is asked with a clock past that.
    const gc = await runCli(["admin", "gc"], { env: { ITX_SERVER: server.url }, timeoutMs: 60_000 });
    expect(gc.code, gc.stderr).toBe(0);
    expect((await swiftNamesOf(task!.imageId)).objects).toEqual([]);
    const direct = await openSwiftStore(swiftStoreOptions(container));
    await direct.removePartialWrites!(new Date(Date.now() + 3600_000));
    expect(await swiftNamesOf(task!.imageId)).toEqual({ objects: [], segments: [] });
  });
});

describe("nothing is left in Swift by a canceled or a deleted image", { timeout: 120_000 }, () => {
  it("an import canceled while it stores into Swift leaves no object and no segment", async () => {
    const seedUri = await uploadFile(server.url, disk);
    let cancel: Promise<unknown> | undefined;
    const { task } = await transfer.importImage({ seedUri, diskFormat: DiskFormat.RAW, stores: ["swift"] });
    proxy.whenUploaded(proxy.bytesUp + 3.5 * MiB, () => (cancel = tasks.cancelTask({ id: task!.id })));
    const done = await watchToEnd(server.url, task!.id);
    expect(cancel, "canceled during the storing").toBeDefined();
    await cancel;
    expect(done.state).toBe(TaskState.CANCELED);
    // The aborted write's segments go shortly after the task says CANCELED (not before it): give that 10 s.
    let left = await swiftNamesOf(done.imageId);
    for (let waited = 0; left.segments.length > 0 && waited < 10_000; waited += 250) {
      await new Promise((resolve) => setTimeout(resolve, 250));
      left = await swiftNamesOf(done.imageId);
    }
    expect(left).toEqual({ objects: [], segments: [] });
  });

  it("a deleted image leaves no object and no segment", async () => {
    const { task } = await transfer.importImage({ seedUri: await uploadFile(server.url, disk), diskFormat: DiskFormat.RAW, stores: ["swift"] });
    const done = await watchToEnd(server.url, task!.id);
    await expectActiveWithDisk(done);
    expect((await swiftNamesOf(done.imageId)).segments.length).toBeGreaterThan(1);
    await images.deleteImage({ id: done.imageId });
    expect(await swiftNamesOf(done.imageId)).toEqual({ objects: [], segments: [] });
  });
});
