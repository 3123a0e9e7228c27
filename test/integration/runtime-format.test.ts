import { mkdtemp, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DiskFormat, ImageService, ImageStatus } from "../../src/gen/imagetransfer/v1/image_pb.js";
import { TaskState } from "../../src/gen/imagetransfer/v1/task_pb.js";
import { TransferService } from "../../src/gen/imagetransfer/v1/transfer_pb.js";
import { Tokens } from "../../src/tokens.js";
import { buildImage, buildSourceRaw, MiB, qemuCompare } from "../helpers/disk-images.js";
import { startTestService, type TestService } from "../helpers/service.js";
import { importFile } from "../helpers/transfer.js";

describe("runtimeFormat qcow2", () => {
  let dir: string;
  let raw: string;
  let service: TestService;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "itx-runtime-"));
    raw = await buildSourceRaw(join(dir, "disk.raw"), 16 * MiB);
    service = await startTestService({ runtimeFormat: "qcow2" });
  });
  afterAll(async () => {
    await service?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  it("stores imports as qcow2 with the guest's bytes unchanged", async () => {
    const task = await importFile(service.url, raw, DiskFormat.RAW);
    expect(task.state, JSON.stringify(task.error)).toBe(TaskState.SUCCEEDED);
    const { image } = await createClient(ImageService, createGrpcTransport({ baseUrl: service.url })).getImage({ id: task.imageId });
    expect(image).toMatchObject({ status: ImageStatus.ACTIVE, diskFormat: DiskFormat.QCOW2, virtualSize: BigInt(16 * MiB) });
    const { url } = await createClient(TransferService, createGrpcTransport({ baseUrl: service.url })).createDownloadUrl({ imageId: task.imageId });
    const out = join(dir, "stored.qcow2");
    await writeFile(out, Buffer.from(await (await fetch(url)).arrayBuffer()));
    expect(await qemuCompare(out, "qcow2", raw, "raw")).toEqual({ code: 0, output: "Images are identical." });
  });

  it("refuses an image whose qcow2 would exceed maxImageBytes before converting it", async () => {
    // A compressed (streamOptimized) vmdk of a disk full of a repeated byte: a tiny upload that
    // qemu-img measure predicts will be 16 MiB as qcow2.
    const pattern = join(dir, "pattern.raw");
    await writeFile(pattern, Buffer.alloc(16 * MiB, 0x41));
    const vmdk = await buildImage(pattern, "vmdk", join(dir, "pattern.vmdk"));
    const upload = (await stat(vmdk)).size;
    expect(upload).toBeLessThan(MiB);
    const small = await startTestService({ runtimeFormat: "qcow2", maxImageBytes: 4 * MiB });
    try {
      const task = await importFile(small.url, vmdk, DiskFormat.VMDK);
      expect(task.state).toBe(TaskState.FAILED);
      expect(task.error).toMatchObject({ reason: "IMAGE_TOO_LARGE", message: expect.stringMatching(/stored as qcow2 the image would be \d+ bytes/) });
      const history = await small.container.resolve(Tokens.Repository).listTaskChanges(task.id, 0);
      expect(history.map((t) => t.progress.stage)).not.toContain("converting");
    } finally {
      await small.stop();
    }
  });
});
