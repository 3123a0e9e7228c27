import { mkdtemp, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, expect, it } from "vitest";
import { DiskFormat, ImageService, ImageStatus } from "../../src/gen/imagetransfer/v1/image_pb.js";
import { TaskState } from "../../src/gen/imagetransfer/v1/task_pb.js";
import { startTestService, type TestService } from "../helpers/service.js";
import { importFile } from "../helpers/transfer.js";

let dir: string;
let service: TestService;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "itx-unsafe-"));
  service = await startTestService();
});
afterAll(async () => {
  await service?.stop();
  await rm(dir, { recursive: true, force: true });
});

it("refuses a VMDK descriptor whose extent names a host file, and copies nothing of it", async () => {
  // The classic attack: a plain qemu-img convert of this copies the host's file into the image.
  const descriptor = join(dir, "escape.vmdk");
  await writeFile(descriptor, '# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="monolithicFlat"\nRW 8 FLAT "/etc/hostname" 0\n');
  const task = await importFile(service.url, descriptor, DiskFormat.VMDK);
  expect(task.state).toBe(TaskState.FAILED);
  expect(task.error).toMatchObject({ reason: "UNSAFE_IMAGE", message: expect.stringContaining("/etc/hostname") });
  const { image } = await createClient(ImageService, createGrpcTransport({ baseUrl: service.url })).getImage({ id: task.imageId });
  expect(image?.status).toBe(ImageStatus.KILLED);
  expect(await readdir(join(service.dataDir, "images", "images")).catch(() => [])).not.toContain(task.imageId);
});
