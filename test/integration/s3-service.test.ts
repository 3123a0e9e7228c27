/**
 * S3 stores through the service: a real server (startTestService) whose default and staging
 * store is an S3 bucket on Swift's s3api, real qemu-img, and curl with the presigned URLs
 * the service hands out. Covers the four steps through S3, and the task errors of S3 stores
 * with wrong credentials or a missing bucket.
 */
import * as fs from "node:fs/promises";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import type { S3Client } from "@aws-sdk/client-s3";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DiskFormat, ImageService, ImageStatus, LocationStatus } from "../../src/gen/imagetransfer/v1/image_pb.js";
import { TaskState, type Task } from "../../src/gen/imagetransfer/v1/task_pb.js";
import { TransferService } from "../../src/gen/imagetransfer/v1/transfer_pb.js";
import { buildImage, buildSourceRaw, hashFile, MiB, qemuCompare, type FileHashes } from "../helpers/disk-images.js";
import { createBucket, curl, objectExists, objectSha512, removeBucket, s3Client, s3Endpoint, s3StoreOptions } from "../helpers/s3.js";
import { startTestService, type TestService } from "../helpers/service.js";
import { watchToEnd } from "../helpers/transfer.js";

let service: TestService;
let client: S3Client;
let bucket: string;
let work: string;
let sourceRaw: string;
let sourceQcow2: string;
let rawHashes: FileHashes;
let transfer: Client<typeof TransferService>;
let images: Client<typeof ImageService>;

beforeAll(async () => {
  client = s3Client();
  bucket = await createBucket(client, "itx-s3-service");
  work = await fs.mkdtemp(path.join(tmpdir(), "itx-s3-service-"));
  sourceRaw = await buildSourceRaw(path.join(work, "source.raw"), 8 * MiB);
  sourceQcow2 = await buildImage(sourceRaw, "qcow2", path.join(work, "source.qcow2"));
  rawHashes = await hashFile(sourceRaw);
  const wrongSecret = { ...(s3StoreOptions(bucket).credentials as object), secretAccessKey: "not-the-secret" };
  service = await startTestService({
    stores: [
      { name: "s3", plugin: "store-s3", options: s3StoreOptions(bucket, { partSize: 5 * MiB }), default: true, staging: true },
      { name: "s3-badkey", plugin: "store-s3", options: { ...s3StoreOptions(bucket), credentials: wrongSecret } },
      { name: "s3-nobucket", plugin: "store-s3", options: s3StoreOptions("itx-no-such-bucket") },
    ],
  });
  const transport = createGrpcTransport({ baseUrl: service.url });
  transfer = createClient(TransferService, transport);
  images = createClient(ImageService, transport);
});

afterAll(async () => {
  await service?.stop();
  if (bucket) await removeBucket(client, bucket);
  client?.destroy();
  if (work) await fs.rm(work, { recursive: true, force: true });
});


/** Uploads the qcow2 through a presigned URL from CreateUploadUrl; returns the seed URI. */
async function stage(): Promise<string> {
  const { url, method, seedUri } = await transfer.createUploadUrl({});
  expect(method).toBe("PUT");
  expect(await curl(["-o", "/dev/null", "-T", sourceQcow2, url])).toBe("200");
  return seedUri;
}

async function importAndWatch(seedUri: string, stores: string[] = []): Promise<{ task: Task; imageId: string }> {
  const { task, image } = await transfer.importImage({ seedUri, diskFormat: DiskFormat.QCOW2, stores });
  return { task: await watchToEnd(service.url, task!.id), imageId: image!.id };
}

describe("the four steps through S3", () => {
  it("upload by presigned PUT, import into S3, export a VMDK to S3, download by presigned GET: identical to the source", { timeout: 120_000 }, async () => {
    // 1. Upload: a presigned S3 URL that needs no credentials, into the staging bucket.
    const { url, seedUri } = await transfer.createUploadUrl({});
    const signed = new URL(url);
    expect(signed.origin).toBe(new URL(s3Endpoint().endpoint).origin);
    expect(signed.pathname).toMatch(new RegExp(`^/${bucket}/uploads/`));
    expect(signed.searchParams.get("X-Amz-Algorithm")).toBe("AWS4-HMAC-SHA256");
    expect(seedUri).toMatch(/^s3:\/\/s3\/uploads\/[0-9a-f-]+$/);
    expect(await curl(["-o", "/dev/null", "-T", sourceQcow2, url])).toBe("200");

    // 2. Import: an ACTIVE raw image in the S3 store, the staged upload removed.
    const { task, imageId } = await importAndWatch(seedUri);
    expect(task.state, JSON.stringify(task.error)).toBe(TaskState.SUCCEEDED);
    expect(task.result?.storeUris).toEqual([`s3://s3/images/${imageId}`]);
    const image = (await images.getImage({ id: imageId })).image!;
    expect(image).toMatchObject({ status: ImageStatus.ACTIVE, diskFormat: DiskFormat.RAW, size: BigInt(rawHashes.size), osHashValue: rawHashes.sha512 });
    expect(image.locations.map((l) => [l.store, l.uri, l.status])).toEqual([["s3", `s3://s3/images/${imageId}`, LocationStatus.ACTIVE]]);
    expect(await objectSha512(client, bucket, `images/${imageId}`)).toBe(rawHashes.sha512);
    expect(await objectExists(client, bucket, seedUri.replace("s3://s3/", ""))).toBe(false);

    // 3. Export: a VMDK written to the S3 store.
    const { task: exporting } = await transfer.exportImage({ imageId, diskFormat: DiskFormat.VMDK });
    const exported = await watchToEnd(service.url, exporting!.id);
    expect(exported.state, JSON.stringify(exported.error)).toBe(TaskState.SUCCEEDED);
    expect(exported.result?.storeUris).toEqual([`s3://s3/exports/${imageId}.vmdk`]);

    // 4. Download: a presigned GET of that object, which qemu-img finds identical to the source.
    const download = await transfer.createDownloadUrl({ imageId, diskFormat: DiskFormat.VMDK });
    expect(download.uri).toBe(`s3://s3/exports/${imageId}.vmdk`);
    const out = path.join(work, "downloaded.vmdk");
    expect(await curl(["-o", out, download.url])).toBe("200");
    expect((await fs.stat(out)).size).toBe(Number(download.size));
    expect(await qemuCompare(out, "vmdk", sourceRaw, "raw")).toEqual({ code: 0, output: "Images are identical." });
  });
});

describe("S3 stores that cannot work", () => {
  it("wrong credentials on the destination: the import fails naming the store, the image is KILLED, nothing is stored", async () => {
    const { task, imageId } = await importAndWatch(await stage(), ["s3-badkey"]);
    expect(task.state).toBe(TaskState.FAILED);
    expect(task.error?.reason).toBe("STORE_FAILED");
    expect(task.error?.message).toMatch(/s3-badkey/);
    expect(task.error?.message).toMatch(/access denied \(SignatureDoesNotMatch\); check the store's credentials/);
    expect(task.error?.message).not.toContain("not-the-secret");
    expect((await images.getImage({ id: imageId })).image?.status).toBe(ImageStatus.KILLED);
    expect(await objectExists(client, bucket, `images/${imageId}`)).toBe(false);
  });

  it("a missing bucket on the destination: the import fails naming the store and the bucket", async () => {
    const { task, imageId } = await importAndWatch(await stage(), ["s3-nobucket"]);
    expect(task.state).toBe(TaskState.FAILED);
    expect(task.error?.reason).toBe("STORE_FAILED");
    expect(task.error?.message).toMatch(/s3-nobucket.*the bucket "itx-no-such-bucket" does not exist/);
    expect((await images.getImage({ id: imageId })).image?.status).toBe(ImageStatus.KILLED);
  });

  it("a seed URI in a store with a missing bucket or wrong credentials: the reason says which", async () => {
    const missing = await importAndWatch("s3://s3-nobucket/uploads/anything");
    expect(missing.task.state).toBe(TaskState.FAILED);
    expect(missing.task.error?.reason).toBe("STORE_NOT_FOUND");
    expect(missing.task.error?.message).toMatch(/store "s3-nobucket".*the bucket "itx-no-such-bucket" does not exist/);

    const refused = await importAndWatch("s3://s3-badkey/uploads/anything");
    expect(refused.task.state).toBe(TaskState.FAILED);
    expect(refused.task.error?.reason).toBe("STORE_PERMISSION");
    expect(refused.task.error?.message).toMatch(/store "s3-badkey".*access denied/);
  });
});
