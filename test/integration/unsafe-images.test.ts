// Image safety through the real service: every case of the adversarial corpus (built at test
// time) is uploaded through a temporary URL and imported; honest images become ACTIVE, the
// others fail before any converter or store sees them, with the finding named in the task error.
import { mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DiskFormat, ImageService, ImageStatus } from "../../src/gen/imagetransfer/v1/image_pb.js";
import { TaskState, type Task } from "../../src/gen/imagetransfer/v1/task_pb.js";
import { buildCorpus, type CorpusCase } from "../helpers/corpus.js";
import { buildCompressedQcow2, listFiles, qemuImg } from "../helpers/disk-images.js";
import { startTestService, type TestService } from "../helpers/service.js";
import { uploadFile, watchToEnd } from "../helpers/transfer.js";
import { TransferService } from "../../src/gen/imagetransfer/v1/transfer_pb.js";

const GiB = 1024 ** 3;
const dir = await mkdtemp(join(tmpdir(), "itx-unsafe-"));
const corpus: CorpusCase[] = await buildCorpus(dir);
let service: TestService;
beforeAll(async () => {
  service = await startTestService();
});
afterAll(async () => {
  await service?.stop();
  await rm(dir, { recursive: true, force: true });
});

const protoFormat = (name: string) => DiskFormat[name.toUpperCase() as keyof typeof DiskFormat];

async function getImage(s: TestService, id: string) {
  const { image } = await createClient(ImageService, createGrpcTransport({ baseUrl: s.url })).getImage({ id });
  return image!;
}

interface Imported {
  task: Task;
  /** Where the upload was staged: file://local/uploads/... */
  seedUri: string;
}

/** Uploads a file through a temporary URL, imports it as `declared`, and follows the task to its end. */
async function importFile(s: TestService, file: string, declared: DiskFormat): Promise<Imported> {
  const seedUri = await uploadFile(s.url, file);
  const { task } = await createClient(TransferService, createGrpcTransport({ baseUrl: s.url })).importImage({ seedUri, diskFormat: declared });
  return { task: await watchToEnd(s.url, task!.id), seedUri };
}

/**
 * The import failed as `reason`, its image is KILLED, and nothing of it is left: no stored
 * copy, no temporary file, and for data refused as unsafe or invalid no staged upload either.
 */
async function expectRefused(s: TestService, { task, seedUri }: Imported, reason: string): Promise<void> {
  expect(task.state, JSON.stringify(task.error)).toBe(TaskState.FAILED);
  expect(task.error?.reason).toBe(reason);
  expect(task.error?.message, "the task error must not leak server paths").not.toContain(s.dataDir);
  expect((await getImage(s, task.imageId)).status).toBe(ImageStatus.KILLED);
  // The runner removes a run's work folder right after recording its end: wait for it a little.
  expect(await settled(() => listFiles(join(s.dataDir, "work")), (files) => files.length === 0)).toEqual([]);
  expect(await readdir(join(s.dataDir, "images", "images")).catch(() => [])).not.toContain(task.imageId);
  const staged = seedUri.replace("file://local/uploads/", "");
  const uploads = await listFiles(join(s.dataDir, "images", "uploads"));
  if (reason === "UNSAFE_IMAGE" || reason === "INVALID_IMAGE") expect(uploads).not.toContain(staged);
}

/** Polls `read` until `done` holds or 5 s pass, and returns the last value read. */
async function settled<T>(read: () => Promise<T>, done: (value: T) => boolean): Promise<T> {
  const until = Date.now() + 5000;
  let value = await read();
  while (!done(value) && Date.now() < until) {
    await new Promise((resolve) => setTimeout(resolve, 50));
    value = await read();
  }
  return value;
}

/** Command lines of running processes that mention `text`. */
async function processesNaming(text: string): Promise<string[]> {
  const found: string[] = [];
  for (const pid of (await readdir("/proc")).filter((name) => /^\d+$/.test(name))) {
    const cmdline = await readFile(`/proc/${pid}/cmdline`, "utf8").catch(() => "");
    if (cmdline.includes(text)) found.push(cmdline.replaceAll("\0", " "));
  }
  return found;
}

describe("every corpus case through ImportImage", () => {
  for (const c of corpus) {
    it(`${c.findings.length === 0 ? "imports" : "refuses"} ${c.name} (declared ${c.declared})`, async () => {
      const imported = await importFile(service, c.file, protoFormat(c.declared));
      const { task } = imported;
      if (c.findings.length === 0) {
        expect(task.state, JSON.stringify(task.error)).toBe(TaskState.SUCCEEDED);
        expect((await getImage(service, task.imageId)).status).toBe(ImageStatus.ACTIVE);
        return;
      }
      const unsafe = c.findings.some((code) => !/INVALID|TRUNCATED|TOO_LARGE|MISMATCH|CHECKSUM|VERSION|CORRUPT|MISSING|LIMIT/.test(code));
      await expectRefused(service, imported, unsafe || c.findings.includes("POLYGLOT") ? "UNSAFE_IMAGE" : "INVALID_IMAGE");
      for (const code of c.findings) expect(task.error?.message).toContain(`(${code})`);
    });
  }
});

describe("checks beyond the inspector's findings", () => {
  const byName = (name: string) => corpus.find((c) => c.name === name)!.file;

  it("refuses a raw declaration with a qcow2 inside, and a qcow2 declaration with raw inside (FORMAT_MISMATCH)", async () => {
    const qcow2InRaw = await importFile(service, byName("qcow2 version 3"), DiskFormat.RAW);
    await expectRefused(service, qcow2InRaw, "FORMAT_MISMATCH");
    expect(qcow2InRaw.task.error?.message).toMatch(/declared raw but its data is qcow2/);
    const rawInQcow2 = await importFile(service, byName("raw"), DiskFormat.QCOW2);
    await expectRefused(service, rawInQcow2, "FORMAT_MISMATCH");
    expect(rawInQcow2.task.error?.message).toMatch(/declared qcow2 but its data is raw/);
  });

  it("refuses a qcow2 whose virtual size is above the default 1 TiB cap", async () => {
    const huge = join(dir, "huge.qcow2");
    await qemuImg(["create", "-f", "qcow2", huge, "2T"]);
    const imported = await importFile(service, huge, DiskFormat.QCOW2);
    await expectRefused(service, imported, "VIRTUAL_SIZE_TOO_LARGE");
    expect(imported.task.error?.message).toContain(String(2 * 1024 ** 4));
  });

  it("inspects the converted image again: a qcow2 whose guest disk is itself a qcow2 naming /etc/passwd fails the backstop", async () => {
    const nested = join(dir, "nested.qcow2");
    // The guest's disk holds the bytes of a qcow2 with a backing file; stored raw, it would be that qcow2.
    await qemuImg(["convert", "-f", "raw", "-O", "qcow2", byName("qcow2 with backing file /etc/passwd"), nested]);
    const imported = await importFile(service, nested, DiskFormat.QCOW2);
    await expectRefused(service, imported, "CONVERTED_IMAGE_UNSAFE");
    expect(imported.task.error?.message).toMatch(/its data is qcow2/);
    expect(imported.task.error?.message).toContain("(QCOW2_BACKING_FILE)");
  });

  it("keeps the VMDK host-file case's message naming the file", async () => {
    const descriptor = join(dir, "escape.vmdk");
    await writeFile(descriptor, '# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="monolithicFlat"\nRW 8 FLAT "/etc/hostname" 0\n');
    const imported = await importFile(service, descriptor, DiskFormat.VMDK);
    await expectRefused(service, imported, "UNSAFE_IMAGE");
    expect(imported.task.error?.message).toContain("/etc/hostname");
  });
});

describe("the per-task wall-clock limit", () => {
  let limited: TestService;
  beforeAll(async () => {
    limited = await startTestService({ taskTimeoutSeconds: 1 });
  });
  afterAll(async () => {
    await limited?.stop();
  });

  it("fails an import still converting after taskTimeoutSeconds with TASK_TIMEOUT, and stops qemu-img", async () => {
    // 2 GiB of compressed clusters: a small upload that takes qemu-img seconds to inflate.
    const slow = await buildCompressedQcow2(join(dir, "slow.qcow2"), 2 * GiB);
    const started = Date.now();
    const imported = await importFile(limited, slow, DiskFormat.QCOW2);
    expect(Date.now() - started).toBeLessThan(15_000);
    await expectRefused(limited, imported, "TASK_TIMEOUT");
    expect(imported.task.error?.message).toMatch(/longer than 1 s/);
    expect(await processesNaming(limited.dataDir), "qemu-img still running on the task's files").toEqual([]);
  }, 120_000);
});
