// Encrypted images through the real service: refused by default; stored as uploaded (no
// conversion, which would need the key) when every destination store allows encrypted images;
// never converted on export and never copied to a store that does not allow them.
import { mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DiskFormat, ImageService, ImageStatus } from "../../src/gen/imagetransfer/v1/image_pb.js";
import { TaskState, type Task } from "../../src/gen/imagetransfer/v1/task_pb.js";
import { TransferService } from "../../src/gen/imagetransfer/v1/transfer_pb.js";
import { hashFile, qemuImg } from "../helpers/disk-images.js";
import { startTestService, type TestService } from "../helpers/service.js";
import { uploadFile, watchToEnd } from "../helpers/transfer.js";

const secret = ["--object", "secret,id=sec0,data=itx-test"];
const encryption = "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10";

let dir: string;
let encrypted: string;
let encryptedOverlay: string;
let service: TestService;
let transfer: ReturnType<typeof createClient<typeof TransferService>>;
let images: ReturnType<typeof createClient<typeof ImageService>>;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "itx-encrypted-"));
  encrypted = join(dir, "encrypted.qcow2");
  await qemuImg(["create", "-q", "-f", "qcow2", ...secret, "-o", encryption, encrypted, "1M"]);
  const base = join(dir, "base.qcow2");
  await qemuImg(["create", "-q", "-f", "qcow2", base, "1M"]);
  encryptedOverlay = join(dir, "overlay.qcow2");
  await qemuImg(["create", "-q", "-f", "qcow2", ...secret, "-o", encryption, "-b", base, "-F", "qcow2", encryptedOverlay, "1M"]);
  service = await startTestService({
    stores: [
      { name: "local", plugin: "store-filesystem", options: { root: "images" }, default: true, staging: true },
      { name: "vault", plugin: "store-filesystem", options: { root: "vault" }, allowEncryptedImages: true },
    ],
  });
  const transport = createGrpcTransport({ baseUrl: service.url });
  transfer = createClient(TransferService, transport);
  images = createClient(ImageService, transport);
});

afterAll(async () => {
  await service?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

async function importInto(file: string, stores: string[]): Promise<Task> {
  const seedUri = await uploadFile(service.url, file);
  const { task } = await transfer.importImage({ seedUri, diskFormat: DiskFormat.QCOW2, stores });
  return watchToEnd(service.url, task!.id);
}

async function expectRefused(task: Task, finding: string): Promise<void> {
  expect(task.state, JSON.stringify(task.error)).toBe(TaskState.FAILED);
  expect(task.error?.reason).toBe("UNSAFE_IMAGE");
  expect(task.error?.message).toContain(finding);
  expect((await images.getImage({ id: task.imageId })).image!.status).toBe(ImageStatus.KILLED);
  for (const root of ["images", "vault"]) expect(await readdir(join(service.dataDir, root, "images")).catch(() => [])).not.toContain(task.imageId);
}

async function rpcError(call: Promise<unknown>): Promise<ConnectError> {
  const err = await call.then(() => undefined, (e: unknown) => e);
  expect(err, "the call should have failed").toBeInstanceOf(ConnectError);
  return err as ConnectError;
}

describe("encrypted images", { timeout: 60_000 }, () => {
  it("are refused by a store that does not allow them", async () => {
    await expectRefused(await importInto(encrypted, []), "QCOW2_ENCRYPTED");
  });

  it("are stored as uploaded, byte for byte, in a store that allows them; not converted on export or copied elsewhere", async () => {
    const task = await importInto(encrypted, ["vault"]);
    expect(task.state, JSON.stringify(task.error)).toBe(TaskState.SUCCEEDED);
    const { image } = await images.getImage({ id: task.imageId });
    expect(image!.status).toBe(ImageStatus.ACTIVE);
    expect(image!.diskFormat).toBe(DiskFormat.QCOW2);
    const uploaded = await hashFile(encrypted);
    expect(image!.osHashValue).toBe(uploaded.sha512);
    expect((await hashFile(join(service.dataDir, "vault", "images", image!.id))).sha512).toBe(uploaded.sha512);

    const toVmdk = await rpcError(transfer.exportImage({ imageId: image!.id, diskFormat: DiskFormat.VMDK, store: "vault" }));
    expect(toVmdk.code).toBe(Code.FailedPrecondition);
    expect(toVmdk.rawMessage).toMatch(/encrypted qcow2 image; it cannot be converted to vmdk without its key/);

    // Its own format needs no conversion: the stored copy is the export.
    const { task: exported } = await transfer.exportImage({ imageId: image!.id, diskFormat: DiskFormat.QCOW2, store: "vault" });
    const done = await watchToEnd(service.url, exported!.id);
    expect(done.state, JSON.stringify(done.error)).toBe(TaskState.SUCCEEDED);
    expect(done.result!.storeUris).toEqual([`file://vault/images/${image!.id}`]);
    // Where no copy is, the export is the stored bytes, unconverted.
    const { task: elsewhere } = await transfer.exportImage({ imageId: image!.id, diskFormat: DiskFormat.QCOW2, store: "local" });
    const written = await watchToEnd(service.url, elsewhere!.id);
    expect(written.state, JSON.stringify(written.error)).toBe(TaskState.SUCCEEDED);
    expect((await hashFile(join(service.dataDir, "images", "exports", `${image!.id}.qcow2`))).sha512).toBe(uploaded.sha512);

    const copy = await rpcError(transfer.copyImage({ imageId: image!.id, stores: ["local"] }));
    expect(copy.code).toBe(Code.FailedPrecondition);
    expect(copy.rawMessage).toMatch(/store local does not allow encrypted images/);
  });

  it("with a backing file are still refused by a store that allows encryption", async () => {
    await expectRefused(await importInto(encryptedOverlay, ["vault"]), "QCOW2_BACKING_FILE");
  });

  it("are refused when any destination store does not allow them", async () => {
    await expectRefused(await importInto(encrypted, ["vault", "local"]), "QCOW2_ENCRYPTED");
  });
});
