/**
 * CopyImage between the filesystem, S3 and Swift stores in every direction, through a real
 * server: fs -> S3, S3 -> fs, S3 -> S3 (another bucket), S3 -> Swift, Swift -> S3, fs -> Swift,
 * Swift -> fs and Swift -> Swift (another container). S3 is Swift's s3api; Swift is the same
 * Swift through its own API. Each copy's
 * bytes are read back from the store itself (the SDK for S3, Swift's API for Swift, the file
 * for the filesystem) and checked against the image's sha512.
 */
import { createHash } from "node:crypto";
import * as fs from "node:fs/promises";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import type { S3Client } from "@aws-sdk/client-s3";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DiskFormat, ImageService, LocationStatus, type Image } from "../../src/gen/imagetransfer/v1/image_pb.js";
import { TaskState } from "../../src/gen/imagetransfer/v1/task_pb.js";
import { TransferService } from "../../src/gen/imagetransfer/v1/transfer_pb.js";
import { buildImage, buildSourceRaw, hashFile, MiB } from "../helpers/disk-images.js";
import { createBucket, objectSha512, removeBucket, s3Client, s3StoreOptions } from "../helpers/s3.js";
import { startTestService, type TestService } from "../helpers/service.js";
import { createContainer, removeContainer, swiftRequest, swiftStoreOptions, uniqueContainer } from "../helpers/swift.js";
import { uploadFile, watchToEnd } from "../helpers/transfer.js";

let service: TestService;
let s3: S3Client;
let buckets: { a: string; b: string };
let container: string;
let container2: string;
let work: string;
let sha512: string;
let qcow2: string;
let transfer: Client<typeof TransferService>;
let images: Client<typeof ImageService>;

beforeAll(async () => {
  s3 = s3Client();
  buckets = { a: await createBucket(s3, "itx-copy-a"), b: await createBucket(s3, "itx-copy-b") };
  container = uniqueContainer("copy");
  await createContainer(container);
  container2 = uniqueContainer("copy2");
  await createContainer(container2);
  work = await fs.mkdtemp(path.join(tmpdir(), "itx-copy-"));
  const raw = await buildSourceRaw(path.join(work, "source.raw"), 8 * MiB);
  qcow2 = await buildImage(raw, "qcow2", path.join(work, "source.qcow2"));
  sha512 = (await hashFile(raw)).sha512;
  service = await startTestService({
    stores: [
      { name: "local", plugin: "store-filesystem", options: { root: "images" }, default: true, staging: true },
      { name: "s3a", plugin: "store-s3", options: s3StoreOptions(buckets.a, { partSize: 5 * MiB }) },
      { name: "s3b", plugin: "store-s3", options: s3StoreOptions(buckets.b, { partSize: 5 * MiB }) },
      { name: "swift", plugin: "store-swift", options: swiftStoreOptions(container) },
      { name: "swift2", plugin: "store-swift", options: swiftStoreOptions(container2) },
    ],
  });
  const transport = createGrpcTransport({ baseUrl: service.url });
  transfer = createClient(TransferService, transport);
  images = createClient(ImageService, transport);
});

afterAll(async () => {
  await service?.stop();
  for (const bucket of Object.values(buckets ?? {})) await removeBucket(s3, bucket);
  if (container) await removeContainer(container);
  if (container2) await removeContainer(container2);
  s3?.destroy();
  if (work) await fs.rm(work, { recursive: true, force: true });
});

/** Uploads the test image and imports it into `store` only; returns the ACTIVE image. */
async function importInto(store: string): Promise<Image> {
  const seedUri = await uploadFile(service.url, qcow2);
  const { task, image } = await transfer.importImage({ seedUri, diskFormat: DiskFormat.QCOW2, stores: [store] });
  const done = await watchToEnd(service.url, task!.id);
  expect(done.state, JSON.stringify(done.error)).toBe(TaskState.SUCCEEDED);
  return (await images.getImage({ id: image!.id })).image!;
}

async function copy(image: Image, stores: string[]): Promise<Image> {
  const { task } = await transfer.copyImage({ imageId: image.id, stores, allStoresMustSucceed: true });
  const done = await watchToEnd(service.url, task!.id);
  expect(done.state, JSON.stringify(done.error)).toBe(TaskState.SUCCEEDED);
  expect([...done.result!.storeUris].sort()).toEqual(stores.map((s) => uriIn(s, image.id)).sort());
  return (await images.getImage({ id: image.id })).image!;
}

const SCHEMES: Record<string, string> = { local: "file", s3a: "s3", s3b: "s3", swift: "swift", swift2: "swift" };
const uriIn = (store: string, imageId: string) => `${SCHEMES[store]}://${store}/images/${imageId}`;

function activeStores(image: Image): string[] {
  return image.locations.filter((l) => l.status === LocationStatus.ACTIVE).map((l) => l.store).sort();
}

/** The sha512 of the image's object as the store itself holds it. */
async function storedSha512(store: string, imageId: string): Promise<string | undefined> {
  const key = `images/${imageId}`;
  if (store === "local") return (await hashFile(path.join(service.dataDir, "images", key))).sha512;
  if (store === "s3a" || store === "s3b") return objectSha512(s3, store === "s3a" ? buckets.a : buckets.b, key);
  return swiftSha512(store === "swift" ? container : container2, key);
}

// Each test imports (qemu-img) and copies through the service: on a busy machine that takes a while.
describe("CopyImage across stores", { timeout: 120_000 }, () => {
  it("filesystem -> S3", async () => {
    const image = await importInto("local");
    const copied = await copy(image, ["s3a"]);
    expect(activeStores(copied)).toEqual(["local", "s3a"]);
    expect(await storedSha512("s3a", image.id)).toBe(sha512);
  });

  it("S3 -> filesystem, S3 -> S3 and S3 -> Swift, in one CopyImage", async () => {
    const image = await importInto("s3a");
    expect(activeStores(image)).toEqual(["s3a"]);
    expect(await storedSha512("s3a", image.id)).toBe(sha512);
    const copied = await copy(image, ["local", "s3b", "swift"]);
    expect(activeStores(copied)).toEqual(["local", "s3a", "s3b", "swift"]);
    for (const store of ["local", "s3b", "swift"]) expect(await storedSha512(store, image.id), store).toBe(sha512);
  });

  it("Swift -> S3", async () => {
    const image = await importInto("swift");
    expect(await storedSha512("swift", image.id)).toBe(sha512);
    const copied = await copy(image, ["s3b"]);
    expect(activeStores(copied)).toEqual(["s3b", "swift"]);
    expect(await storedSha512("s3b", image.id)).toBe(sha512);
  });

  it("filesystem -> Swift", async () => {
    const image = await importInto("local");
    const copied = await copy(image, ["swift"]);
    expect(activeStores(copied)).toEqual(["local", "swift"]);
    expect(await storedSha512("swift", image.id)).toBe(sha512);
  });

  it("Swift -> filesystem and Swift -> Swift, in one CopyImage", async () => {
    const image = await importInto("swift");
    const copied = await copy(image, ["local", "swift2"]);
    expect(activeStores(copied)).toEqual(["local", "swift", "swift2"]);
    for (const store of ["local", "swift2"]) expect(await storedSha512(store, image.id), store).toBe(sha512);
  });
});

/** The sha512 of a Swift object, read through Swift's own API; undefined when it is missing. */
async function swiftSha512(container: string, name: string): Promise<string | undefined> {
  const response = await swiftRequest("GET", `/${container}/${name.split("/").map(encodeURIComponent).join("/")}`);
  if (response.status === 404) return undefined;
  expect(response.status).toBe(200);
  const hash = createHash("sha512");
  for await (const chunk of response.body!) hash.update(chunk);
  return hash.digest("hex");
}
