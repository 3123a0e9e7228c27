// Compressed uploads through the real service: each compression is decompressed by the
// converter-decompress plugin before inspection and stored as the exact disk inside it; a
// decompression bomb fails with DECOMPRESSED_TOO_LARGE and leaves nothing; and the plugin,
// copied out of the repository, loads from an external --plugins-dir.
import { execFile } from "node:child_process";
import { cp, mkdir, mkdtemp, readdir, rm, symlink } from "node:fs/promises";
import { tmpdir } from "node:os";
import { basename, dirname, join } from "node:path";
import { promisify } from "node:util";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AdminService, PluginState } from "../../src/gen/imagetransfer/v1/admin_pb.js";
import { DiskFormat, ImageService, ImageStatus } from "../../src/gen/imagetransfer/v1/image_pb.js";
import { TaskState } from "../../src/gen/imagetransfer/v1/task_pb.js";
import { TransferService } from "../../src/gen/imagetransfer/v1/transfer_pb.js";
import { ensureBuilt, repoRoot } from "../helpers/built-cli.js";
import { buildImage, buildSourceRaw, hashFile, listFiles, MiB } from "../helpers/disk-images.js";
import { startTestService, type TestService } from "../helpers/service.js";
import { uploadFile, watchToEnd } from "../helpers/transfer.js";

const sh = (script: string) => promisify(execFile)("bash", ["-c", script]);

let dir: string;
let raw: string;
let rawSha512: string;
let service: TestService;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "itx-decompress-import-"));
  raw = await buildSourceRaw(join(dir, "disk.raw"), 4 * MiB);
  rawSha512 = (await hashFile(raw)).sha512;
  // A low cap, so that a bomb of 1 GiB of zeros crosses it early.
  service = await startTestService({ maxImageBytes: 16 * MiB });
});
afterAll(async () => {
  await service?.stop();
  if (dir !== undefined) await rm(dir, { recursive: true, force: true });
});

async function importUpload(s: TestService, file: string, diskFormat: DiskFormat) {
  const seedUri = await uploadFile(s.url, file);
  const { task } = await createClient(TransferService, createGrpcTransport({ baseUrl: s.url })).importImage({ seedUri, diskFormat });
  return { task: await watchToEnd(s.url, task!.id), seedUri };
}

async function getImage(s: TestService, id: string) {
  return (await createClient(ImageService, createGrpcTransport({ baseUrl: s.url })).getImage({ id })).image!;
}

/** The import succeeded and the stored image holds exactly the raw disk. */
async function expectActiveWithDisk(s: TestService, task: Awaited<ReturnType<typeof importUpload>>["task"]) {
  expect(task.state, JSON.stringify(task.error)).toBe(TaskState.SUCCEEDED);
  const image = await getImage(s, task.imageId);
  expect(image.status).toBe(ImageStatus.ACTIVE);
  expect(image.osHashValue, "sha512 of the stored image").toBe(rawSha512);
  expect(Number(image.size)).toBe(4 * MiB);
}

describe("compressed uploads", () => {
  it.each([
    ["gzip", (i: string, o: string) => `gzip -c ${i} > ${o}`],
    ["xz", (i: string, o: string) => `xz -0 -c ${i} > ${o}`],
    ["zstd", (i: string, o: string) => `zstd -q -c ${i} > ${o}`],
    ["zip", (i: string, o: string) => `cd ${dirname(i)} && zip -q - ${basename(i)} > ${o}`],
  ])("a %s of a raw disk is imported as that disk", async (format, compress) => {
    const upload = join(dir, `disk.raw.${format}`);
    await sh(compress(raw, upload));
    const { task } = await importUpload(service, upload, DiskFormat.RAW);
    await expectActiveWithDisk(service, task);
  });

  it("a gzip of a qcow2 is inspected and converted as the qcow2 inside", async () => {
    const qcow2 = await buildImage(raw, "qcow2", join(dir, "disk.qcow2"));
    await sh(`gzip -c ${qcow2} > ${qcow2}.gz`);
    const { task } = await importUpload(service, `${qcow2}.gz`, DiskFormat.QCOW2);
    await expectActiveWithDisk(service, task);
  });

  it("a truncated gzip fails as INVALID_IMAGE, saying it cannot be decompressed", async () => {
    const truncated = join(dir, "truncated.gz");
    await sh(`gzip -c ${raw} > ${truncated}.whole && head -c 100000 ${truncated}.whole > ${truncated}`);
    const { task } = await importUpload(service, truncated, DiskFormat.RAW);
    expect(task.state).toBe(TaskState.FAILED);
    expect(task.error?.reason).toBe("INVALID_IMAGE");
    expect(task.error?.message).toMatch(/^the gzip upload cannot be decompressed: /);
    expect(task.error?.message).not.toContain(service.dataDir);
    expect(await listFiles(join(service.dataDir, "work")), "work files left").toEqual([]);
  });

  it("a bomb (1 GiB of zeros, gzipped) fails with DECOMPRESSED_TOO_LARGE and leaves nothing", async () => {
    const bomb = join(dir, "bomb.gz");
    await sh(`head -c 1G /dev/zero | gzip -1 > ${bomb}`);
    const { task, seedUri } = await importUpload(service, bomb, DiskFormat.RAW);
    expect(task.state).toBe(TaskState.FAILED);
    expect(task.error?.reason).toBe("DECOMPRESSED_TOO_LARGE");
    expect(task.error?.message).toContain(`more than the limit of ${16 * MiB} bytes`);
    expect(task.error?.message).not.toContain(service.dataDir);
    expect((await getImage(service, task.imageId)).status).toBe(ImageStatus.KILLED);
    expect(await listFiles(join(service.dataDir, "work")), "work files left").toEqual([]);
    expect(await readdir(join(service.dataDir, "images", "images")).catch(() => [])).not.toContain(task.imageId);
    expect(await listFiles(join(service.dataDir, "images", "uploads")), "the staged bomb is removed").not.toContain(seedUri.replace("file://local/uploads/", ""));
  }, 120_000);
});

describe("from an external --plugins-dir", () => {
  let external: TestService | undefined;
  let pluginsDir: string;

  beforeAll(async () => {
    // The built plugin, copied out of the repository as an operator would install it, with the
    // host package it imports ("imagetransfer/plugin-api") in its node_modules.
    await ensureBuilt();
    pluginsDir = join(dir, "plugins");
    const copy = join(pluginsDir, "decompress");
    await cp(join(repoRoot, "dist/plugins/converter-decompress"), copy, { recursive: true, filter: (file) => !file.endsWith(".map") && !file.includes("/node_modules") });
    await mkdir(join(copy, "node_modules"));
    await symlink(repoRoot, join(copy, "node_modules", "imagetransfer"));
    external = await startTestService({ pluginsDirs: [pluginsDir] });
  });
  afterAll(async () => {
    await external?.stop();
  });

  it("loads there, is listed with that path, and decompresses uploads", async () => {
    const { plugins } = await createClient(AdminService, createGrpcTransport({ baseUrl: external!.url })).listPlugins({});
    const loaded = plugins.find((p) => p.path === join(pluginsDir, "decompress"));
    expect(loaded, JSON.stringify(plugins.map((p) => [p.id, p.path, p.error]))).toBeDefined();
    expect(loaded!.state).toBe(PluginState.LOADED);
    expect(loaded!.id).toBe("@imagetransfer/converter-decompress");
    const upload = join(dir, "external.raw.zst");
    await sh(`zstd -q -c ${raw} > ${upload}`);
    const { task } = await importUpload(external!, upload, DiskFormat.RAW);
    await expectActiveWithDisk(external!, task);
  });
});
