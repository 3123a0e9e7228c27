/**
 * The data plane end to end: a real server (startTestService), real qemu-img, real HTTP
 * through the signed upload and download URLs, and the direct gRPC data path. No mocks.
 *
 * Every disk image is built at test time with qemu-img from one raw file (first half random,
 * second half zeros), so nothing binary is committed.
 */
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { createReadStream, createWriteStream } from "node:fs";
import * as fs from "node:fs/promises";
import http from "node:http";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { pipeline } from "node:stream/promises";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { newId } from "../../src/core/ids.js";
import type { TaskRecord } from "../../src/core/task.js";
import { DiskFormat, ImageService, ImageStatus, LocationStatus, type Image } from "../../src/gen/imagetransfer/v1/image_pb.js";
import { TaskSchema, TaskService, TaskState, type Task } from "../../src/gen/imagetransfer/v1/task_pb.js";
import { HashAlgorithm, TransferService, type ImportImageRequestSchema } from "../../src/gen/imagetransfer/v1/transfer_pb.js";
import { Tokens } from "../../src/tokens.js";
import {
  buildCompressedQcow2,
  buildImage,
  buildSourceRaw,
  convertToRaw,
  hashFile,
  IMAGE_FORMATS,
  KiB,
  listFiles,
  MiB,
  qemuCompare,
  qemuImg,
  qemuInfo,
  qemuName,
  sameBytes,
  type FileHashes,
  type ImageFormat,
} from "../helpers/disk-images.js";
import { createGrpcJsClients, serverStream } from "../helpers/grpc-js-client.js";
import { startTestService, type TestService } from "../helpers/service.js";

const SOURCE_BYTES = 24 * MiB;

const PROTO_FORMAT: Record<ImageFormat, DiskFormat> = {
  raw: DiskFormat.RAW,
  qcow2: DiskFormat.QCOW2,
  vmdk: DiskFormat.VMDK,
  vhd: DiskFormat.VHD,
  vhdx: DiskFormat.VHDX,
};

/** The stages an import goes through, in order. */
const IMPORT_STAGES = ["fetching", "inspecting", "converting", "storing"];

interface Clients {
  images: Client<typeof ImageService>;
  transfer: Client<typeof TransferService>;
  tasks: Client<typeof TaskService>;
}

function clientsFor(service: TestService): Clients {
  const transport = createGrpcTransport({ baseUrl: service.url });
  return {
    images: createClient(ImageService, transport),
    transfer: createClient(TransferService, transport),
    tasks: createClient(TaskService, transport),
  };
}

// ---------------------------------------------------------------------------------------------
// HTTP

interface HttpReply {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

/**
 * One HTTP/1.1 request. The body is streamed: a file, or chunks written one by one (chunked
 * transfer encoding unless Content-Length is given). Writing stops as soon as the server
 * answers, so an early refusal (413) is read rather than lost to a reset.
 */
function request(
  url: string,
  options: { method: string; headers?: Record<string, string>; file?: string; chunks?: AsyncIterable<Buffer> | Iterable<Buffer>; saveTo?: string },
): Promise<HttpReply> {
  return new Promise<HttpReply>((resolve, reject) => {
    let answered = false;
    const req = http.request(url, { method: options.method, headers: options.headers }, (res) => {
      answered = true;
      if (options.saveTo && res.statusCode === 200) {
        pipeline(res, createWriteStream(options.saveTo)).then(
          () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.alloc(0) }),
          reject,
        );
        return;
      }
      const parts: Buffer[] = [];
      res.on("data", (c: Buffer) => parts.push(c));
      res.on("end", () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(parts) }));
      res.on("error", reject);
    });
    req.on("error", (err) => {
      // A write after the server answered and closed the connection is expected; the reply wins.
      if (!answered) reject(err);
    });
    if (options.file) {
      pipeline(createReadStream(options.file), req).catch((err: unknown) => {
        if (!answered) reject(err as Error);
      });
    } else if (options.chunks) {
      const chunks = options.chunks;
      void (async () => {
        try {
          for await (const chunk of chunks) {
            if (answered || req.destroyed) return;
            if (!req.write(chunk)) {
              await new Promise<void>((r) => {
                const done = () => {
                  req.off("drain", done);
                  req.off("close", done);
                  clearInterval(timer);
                  r();
                };
                // The server may answer (and stop reading) while we wait for drain.
                const timer = setInterval(() => answered && done(), 20);
                req.once("drain", done);
                req.once("close", done);
              });
            }
          }
          if (!answered && !req.destroyed) req.end();
        } catch (err) {
          if (!answered) reject(err as Error);
        }
      })();
    } else {
      req.end();
    }
  });
}

async function putFile(url: string, file: string): Promise<HttpReply> {
  const { size } = await fs.stat(file);
  return request(url, { method: "PUT", headers: { "Content-Length": String(size) }, file });
}

// ---------------------------------------------------------------------------------------------
// Tasks and polling

const TERMINAL = [TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELED];

const TASK_STATE: Record<TaskRecord["state"], TaskState> = {
  pending: TaskState.PENDING,
  running: TaskState.RUNNING,
  succeeded: TaskState.SUCCEEDED,
  failed: TaskState.FAILED,
  canceled: TaskState.CANCELED,
};

/** A task as the repository holds it, in the API's shape (progress rounded down to whole numbers). */
function taskFromRecord(record: TaskRecord): Task {
  return create(TaskSchema, {
    id: record.id,
    state: TASK_STATE[record.state],
    imageId: record.imageId,
    version: BigInt(record.version),
    progress: {
      stage: record.progress.stage,
      bytesDone: BigInt(Math.floor(record.progress.bytesDone)),
      bytesTotal: BigInt(Math.floor(record.progress.bytesTotal)),
    },
    result: record.result,
    error: record.error,
  });
}

/**
 * Follows a task with WatchTask to its end, calling `onSnapshot` for each snapshot. Should the
 * watch break (a server bug, reported as a soft failure), it goes on by polling the service's
 * repository in-process, so the rest of a test still checks what the task did.
 */
async function followTask(service: TestService, c: Clients, id: string, onSnapshot: (task: Task) => Promise<void> | void = () => {}) {
  const seen: Task[] = [];
  let broken = false;
  try {
    for await (const { task } of c.tasks.watchTask({ id })) {
      seen.push(task!);
      await onSnapshot(task!);
    }
  } catch (err) {
    broken = true;
    expect.soft(String(err), `WatchTask for task ${id} broke after ${seen.length} snapshots`).toBe("no error");
    const repository = service.container.resolve(Tokens.Repository);
    for (;;) {
      const task = taskFromRecord((await repository.findTask(id))!);
      if (task.version > (seen.at(-1)?.version ?? 0n)) {
        seen.push(task);
        await onSnapshot(task);
      }
      if (TERMINAL.includes(task.state)) break;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  return { task: seen.at(-1)!, seen, broken };
}

async function eventually<T>(what: string, probe: () => Promise<T>, ok: (value: T) => boolean, timeoutMs = 5_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: T;
  for (;;) {
    last = await probe();
    if (ok(last)) return last;
    if (Date.now() > deadline) throw new Error(`${what}: still ${JSON.stringify(last)} after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function connectError(promise: Promise<unknown>): Promise<ConnectError> {
  try {
    await promise;
  } catch (err) {
    if (err instanceof ConnectError) return err;
    throw err;
  }
  throw new Error("the call succeeded but was expected to fail");
}

/**
 * Progress within each stage never goes backwards; stages appear in `order`, each once. Soft, so
 * that a test goes on to check the image and its bytes.
 */
function expectStagesInOrder(changes: Pick<TaskRecord, "progress">[], order: string[], what: string) {
  const stages: string[] = [];
  let lastBytes = -1;
  for (const change of changes) {
    const stage = change.progress.stage;
    if (stage === "") continue;
    if (stages.at(-1) !== stage) {
      expect.soft(stages, `${what}: stage ${stage} appears again after ${stages.join(", ")}`).not.toContain(stage);
      stages.push(stage);
      lastBytes = -1;
    }
    expect.soft(change.progress.bytesDone, `${what}: bytes of stage ${stage} went backwards`).toBeGreaterThanOrEqual(lastBytes);
    lastBytes = change.progress.bytesDone;
  }
  const trail = changes.map((c) => `${c.progress.stage}:${c.progress.bytesDone}/${c.progress.bytesTotal}`).join(" ");
  expect.soft(stages, `${what}: the stages recorded in the task's change log (${trail})`).toEqual(order);
}

// ---------------------------------------------------------------------------------------------
// Fixtures shared by the whole file

let work: string; // this file's scratch folder
let sourceRaw: string;
const images = {} as Record<ImageFormat, { file: string; asRaw: string; rawHashes: FileHashes; virtualSize: number; uploadHashes: FileHashes }>;

beforeAll(async () => {
  work = await fs.mkdtemp(path.join(tmpdir(), "itx-data-plane-"));
  sourceRaw = await buildSourceRaw(path.join(work, "source.raw"), SOURCE_BYTES);
  await Promise.all(
    IMAGE_FORMATS.map(async (format) => {
      const file = await buildImage(sourceRaw, format, path.join(work, `source.${format}`));
      const asRaw = await convertToRaw(file, format, path.join(work, `source.${format}.as-raw`));
      const info = await qemuInfo(file, format);
      images[format] = { file, asRaw, rawHashes: await hashFile(asRaw), virtualSize: info["virtual-size"], uploadHashes: await hashFile(file) };
    }),
  );
});

afterAll(async () => {
  if (work) await fs.rm(work, { recursive: true, force: true });
});

// ---------------------------------------------------------------------------------------------

describe("data plane on one server with three filesystem stores", () => {
  let service: TestService;
  let c: Clients;
  let storeRoot: string; // "local": default and staging
  let secondRoot: string;
  let workRoot: string;
  /** Image ids by the format they were uploaded in (test 1), reused by later tests. */
  const imported = {} as Record<ImageFormat, Image>;

  beforeAll(async () => {
    service = await startTestService({
      stores: [
        { name: "local", plugin: "store-filesystem", options: { root: "images" }, default: true, staging: true },
        { name: "second", plugin: "store-filesystem", options: { root: "second-images" } },
        { name: "far", plugin: "store-filesystem", region: "elsewhere", options: { root: "far-images" } },
      ],
    });
    c = clientsFor(service);
    storeRoot = path.join(service.dataDir, "images");
    secondRoot = path.join(service.dataDir, "second-images");
    workRoot = path.join(service.dataDir, "work");
  });
  afterAll(() => service?.stop());

  const repository = () => service.container.resolve(Tokens.Repository);

  async function upload(file: string, imageId = ""): Promise<string> {
    const { url, method, seedUri } = await c.transfer.createUploadUrl({ imageId });
    expect(method).toBe("PUT");
    const reply = await putFile(url, file);
    expect(reply.status, reply.body.toString()).toBe(201);
    return seedUri;
  }

  /** ImportImage, then WatchTask to the end. */
  async function importAndWatch(req: MessageInitShape<typeof ImportImageRequestSchema>) {
    const { task, image } = await c.transfer.importImage(req);
    return { ...(await followTask(service, c, task!.id)), image: image! };
  }

  const watchToEnd = (taskId: string) => followTask(service, c, taskId);

  async function getImage(id: string): Promise<Image> {
    return (await c.images.getImage({ id })).image!;
  }

  async function download(url: string, file: string): Promise<void> {
    const reply = await request(url, { method: "GET", saveTo: file });
    expect(reply.status, reply.body.toString()).toBe(200);
  }

  /** What must hold after any failed or canceled import: nothing of it is left. */
  async function expectNothingLeft(imageId: string) {
    await eventually("files under work/", () => listFiles(workRoot), (files) => files.length === 0);
    const image = await eventually("image status", () => getImage(imageId), (i) => i.status === ImageStatus.KILLED);
    expect(image.locations.filter((l) => l.status === LocationStatus.ACTIVE)).toEqual([]);
    const active = await c.images.listImages({ status: ImageStatus.ACTIVE, pageSize: 1000 });
    expect(active.images.map((i) => i.id)).not.toContain(imageId);
    // Neither images/<id> nor a store's temp file for it (.<id>.tmp-...) is left in any store.
    for (const root of [storeRoot, secondRoot]) {
      expect((await listFiles(root)).filter((f) => f.includes(imageId))).toEqual([]);
    }
  }

  // 1 ------------------------------------------------------------------------------------------
  describe("import of each format through an upload URL", () => {
    for (const format of IMAGE_FORMATS) {
      it(`imports ${format}: an ACTIVE raw image with the right sizes, hashes and bytes, stages in order`, async () => {
        const source = images[format];
        const seedUri = await upload(source.file);
        expect(seedUri).toMatch(/^file:\/\/local\/uploads\//);
        const { task, seen, broken, image } = await importAndWatch({ seedUri, diskFormat: PROTO_FORMAT[format], name: `from-${format}` });
        expect(task.state, JSON.stringify(task.error)).toBe(TaskState.SUCCEEDED);
        expect(task.result?.imageId).toBe(image.id);
        expect(task.result?.storeUris).toEqual([`file://local/images/${image.id}`]);

        const stored = await getImage(image.id);
        imported[format] = stored;
        expect(stored).toMatchObject({
          status: ImageStatus.ACTIVE,
          diskFormat: DiskFormat.RAW,
          size: BigInt(source.rawHashes.size),
          virtualSize: BigInt(source.virtualSize),
          checksum: source.rawHashes.md5,
          osHashAlgo: "sha512",
          osHashValue: source.rawHashes.sha512,
        });
        expect(stored.locations).toHaveLength(1);
        expect(stored.locations[0]).toMatchObject({ store: "local", uri: `file://local/images/${image.id}`, status: LocationStatus.ACTIVE });

        // The stored bytes, through a download URL, are qemu-img's raw conversion of the upload.
        const dl = await c.transfer.createDownloadUrl({ imageId: image.id });
        expect(dl.uri).toBe(`file://local/images/${image.id}`);
        expect(dl.size).toBe(BigInt(source.rawHashes.size));
        const out = path.join(work, `downloaded-${format}.raw`);
        await download(dl.url, out);
        expect(await sameBytes(out, source.asRaw)).toBe(true);
        await fs.rm(out);

        // WatchTask: every change in order, ending at SUCCEEDED; the stream is the tail of the
        // task's change log, and the log shows each stage once, in order, bytes never going back.
        const changes = await repository().listTaskChanges(task.id, 0);
        expect(changes.map((t) => t.version)).toEqual(Array.from({ length: changes.length }, (_, i) => i + 1));
        if (!broken) {
          const versions = seen.map((t) => Number(t.version));
          expect(versions).toEqual(Array.from({ length: versions.length }, (_, i) => versions[0]! + i));
          expect(changes.slice(versions[0]! - 1).map((t) => t.progress.stage)).toEqual(seen.map((t) => t.progress?.stage));
        }
        expectStagesInOrder(changes, IMPORT_STAGES, `task ${task.id}`);
        await eventually("files under work/", () => listFiles(workRoot), (files) => files.length === 0);
      });
    }
  });

  // 2 ------------------------------------------------------------------------------------------
  describe("export of an imported image to each format", () => {
    for (const format of IMAGE_FORMATS) {
      it(`exports to ${format}: a downloadable object qemu-img finds identical to the source, reused by a second export`, async () => {
        const image = imported.qcow2;
        expect(image?.status).toBe(ImageStatus.ACTIVE);
        const { task: created } = await c.transfer.exportImage({ imageId: image.id, diskFormat: PROTO_FORMAT[format] });
        const { task } = await watchToEnd(created!.id);
        expect(task.state, JSON.stringify(task.error)).toBe(TaskState.SUCCEEDED);
        // Stored images are raw already: a raw export is the stored copy itself, not a second one.
        const uri = format === "raw" ? `file://local/images/${image.id}` : `file://local/exports/${image.id}.${format}`;
        expect(task.result?.storeUris).toEqual([uri]);

        const dl = await c.transfer.createDownloadUrl({ imageId: image.id, diskFormat: PROTO_FORMAT[format] });
        const out = path.join(work, `export-${image.id}.${format}`);
        await download(dl.url, out);
        expect((await fs.stat(out)).size).toBe(Number(dl.size));
        const info = await qemuInfo(out, format);
        expect(info.format).toBe(qemuName(format));
        if (format === "vmdk") expect(info["format-specific"]?.data?.["create-type"]).toBe("streamOptimized");
        const compared = await qemuCompare(out, format, sourceRaw, "raw");
        expect(compared, compared.output).toEqual({ code: 0, output: "Images are identical." });
        await fs.rm(out);

        // The object the export wrote is what the download URL reads.
        expect.soft(dl.uri, "CreateDownloadUrl(format) should read the object the export wrote").toBe(uri);

        // A second export of the same format is the same object, not converted again.
        const exported = format === "raw" ? path.join(storeRoot, "images", image.id) : path.join(storeRoot, "exports", `${image.id}.${format}`);
        const before = await fs.stat(exported);
        await new Promise((r) => setTimeout(r, 20));
        const { task: again } = await c.transfer.exportImage({ imageId: image.id, diskFormat: PROTO_FORMAT[format] });
        const second = await watchToEnd(again!.id);
        expect(second.task.state).toBe(TaskState.SUCCEEDED);
        expect(second.task.result?.storeUris).toEqual([uri]);
        const history = await repository().listTaskChanges(again!.id, 0);
        expect(history.map((t) => t.progress.stage)).not.toContain("converting");
        const after = await fs.stat(exported);
        expect(after.mtimeMs).toBe(before.mtimeMs);
        expect(after.ino).toBe(before.ino);
      });
    }
  });

  // 3 ------------------------------------------------------------------------------------------
  describe("imports that fail leave nothing behind", () => {
    it("fails FORMAT_MISMATCH for a qcow2 declared vmdk and kills the image", async () => {
      const seedUri = await upload(images.qcow2.file);
      const { task, image } = await importAndWatch({ seedUri, diskFormat: DiskFormat.VMDK });
      expect(task.state).toBe(TaskState.FAILED);
      expect(task.error).toMatchObject({ reason: "FORMAT_MISMATCH", message: expect.stringMatching(/vmdk.*qcow2/) });
      await expectNothingLeft(image.id);
    });

    it("fails CHECKSUM_MISMATCH for a wrong expected sha256", async () => {
      const seedUri = await upload(images.raw.file);
      const wrong = images.raw.uploadHashes.sha256.replace(/^./, (ch) => (ch === "0" ? "1" : "0"));
      const { task, image } = await importAndWatch({
        seedUri,
        diskFormat: DiskFormat.RAW,
        expectedHash: { algorithm: HashAlgorithm.SHA256, value: wrong },
      });
      expect(task.state).toBe(TaskState.FAILED);
      expect(task.error).toMatchObject({ reason: "CHECKSUM_MISMATCH", message: expect.stringContaining("sha256") });
      await expectNothingLeft(image.id);
    });

    it("succeeds when the expected sha512 (of the upload, upper-case hex) is right, into a QUEUED image", async () => {
      const { image: queued } = await c.images.createImage({ name: "queued-vhdx", diskFormat: DiskFormat.VHDX });
      const seedUri = await upload(images.vhdx.file, queued!.id);
      expect(seedUri).toMatch(new RegExp(`^file://local/uploads/${queued!.id}/`));
      const { task, image } = await importAndWatch({
        seedUri,
        imageId: queued!.id,
        diskFormat: DiskFormat.VHDX,
        expectedHash: { algorithm: HashAlgorithm.SHA512, value: images.vhdx.uploadHashes.sha512.toUpperCase() },
      });
      expect(image.id).toBe(queued!.id);
      expect(task.state, JSON.stringify(task.error)).toBe(TaskState.SUCCEEDED);
      expect(await getImage(image.id)).toMatchObject({
        status: ImageStatus.ACTIVE,
        name: "queued-vhdx",
        diskFormat: DiskFormat.RAW,
        checksum: images.vhdx.rawHashes.md5,
        osHashValue: images.vhdx.rawHashes.sha512,
      });
    });

    it("keeps a raw upload's zeros as holes through upload, expected-hash check and store", async () => {
      // 80 MiB with 8 MiB of data: enough zeros that the import finds the holes instead of reading them.
      const disk = path.join(work, "mostly-zeros.raw");
      await fs.writeFile(disk, randomBytes(8 * MiB));
      await fs.truncate(disk, 80 * MiB);
      const hashes = await hashFile(disk);
      const seedUri = await upload(disk);
      const staged = path.join(storeRoot, new URL(seedUri).pathname);
      expect((await fs.stat(staged)).blocks * 512, "the staged upload takes the disk of its data").toBeLessThan(16 * MiB);
      const wrong = await importAndWatch({
        seedUri: await upload(disk),
        diskFormat: DiskFormat.RAW,
        expectedHash: { algorithm: HashAlgorithm.SHA512, value: hashes.sha512.replace(/^./, (ch) => (ch === "0" ? "1" : "0")) },
      });
      expect(wrong.task.error).toMatchObject({ reason: "CHECKSUM_MISMATCH" });
      await expectNothingLeft(wrong.image.id);
      const { task, image } = await importAndWatch({ seedUri, diskFormat: DiskFormat.RAW, expectedHash: { algorithm: HashAlgorithm.SHA512, value: hashes.sha512 } });
      expect(task.state, JSON.stringify(task.error)).toBe(TaskState.SUCCEEDED);
      expect(await getImage(image.id)).toMatchObject({ status: ImageStatus.ACTIVE, size: BigInt(80 * MiB), checksum: hashes.md5, osHashValue: hashes.sha512 });
      const stored = await fs.stat(path.join(storeRoot, "images", image.id));
      expect(stored.blocks * 512, "the stored image takes the disk of its data").toBeLessThan(16 * MiB);
    });

    it("fails UNSAFE_IMAGE for a qcow2 with a backing file", async () => {
      const overlay = path.join(work, "overlay.qcow2");
      await qemuImg(["create", "-f", "qcow2", "-b", sourceRaw, "-F", "raw", overlay]);
      const seedUri = await upload(overlay);
      const { task, image } = await importAndWatch({ seedUri, diskFormat: DiskFormat.QCOW2 });
      expect(task.state).toBe(TaskState.FAILED);
      expect(task.error).toMatchObject({ reason: "UNSAFE_IMAGE", message: expect.stringContaining("backing file") });
      await expectNothingLeft(image.id);
    });

    it("fails random bytes declared qcow2 (they are raw to any detector: FORMAT_MISMATCH)", async () => {
      const junk = path.join(work, "junk.bin");
      await fs.writeFile(junk, randomBytes(2 * MiB));
      const seedUri = await upload(junk);
      const { task, image } = await importAndWatch({ seedUri, diskFormat: DiskFormat.QCOW2 });
      expect(task.state).toBe(TaskState.FAILED);
      expect(["FORMAT_MISMATCH", "INVALID_IMAGE", "CONVERSION_FAILED"]).toContain(task.error?.reason);
      await expectNothingLeft(image.id);
    });

    it("fails INVALID_IMAGE, naming the inspector's finding, for a qcow2 header followed by random bytes", async () => {
      const junk = path.join(work, "junk.qcow2");
      await fs.writeFile(junk, Buffer.concat([Buffer.from("QFI\xfb", "latin1"), randomBytes(2 * MiB - 4)]));
      const seedUri = await upload(junk);
      const { task, image } = await importAndWatch({ seedUri, diskFormat: DiskFormat.QCOW2 });
      expect(task.state).toBe(TaskState.FAILED);
      // The inspector refuses it before qemu-img sees it.
      expect(task.error?.reason).toBe("INVALID_IMAGE");
      expect(task.error?.message).toMatch(/\(QCOW2_[A-Z_]+\)/);
      // The message is for the customer: it must not reveal the server's file system layout.
      expect(task.error?.message, "task error message leaks a server path").not.toContain(service.dataDir);
      await expectNothingLeft(image.id);
    });

    it("fails SOURCE_NOT_FOUND for a seed URI naming a missing object", async () => {
      const { task, image } = await importAndWatch({ seedUri: `file://local/uploads/${newId()}`, diskFormat: DiskFormat.RAW });
      expect(task.state).toBe(TaskState.FAILED);
      expect(task.error?.reason).toBe("SOURCE_NOT_FOUND");
      await expectNothingLeft(image.id);
    });
  });

  // 4 ------------------------------------------------------------------------------------------
  describe("refusals at call time", () => {
    it("refuses seed URIs that are host paths or name no store here, with INVALID_ARGUMENT, and creates no image", async () => {
      const before = (await c.images.listImages({ pageSize: 1000 })).images.length;
      const cases: [string, RegExp][] = [
        ["/etc/passwd", /SCHEME:\/\/STORE\/KEY/],
        ["file:///etc/passwd", /must name a store/],
        ["file://nostore/x", /"nostore".*not configured/],
        ["http://example/x", /scheme "http", which no store here serves/],
        ["", /seed_uri is required/],
      ];
      for (const [seedUri, message] of cases) {
        const err = await connectError(c.transfer.importImage({ seedUri, diskFormat: DiskFormat.RAW }));
        expect(err.code, seedUri).toBe(Code.InvalidArgument);
        expect(err.rawMessage, seedUri).toMatch(message);
      }
      expect((await c.images.listImages({ pageSize: 1000 })).images.length).toBe(before);
    });

    it("never imports a host file through a seed key that climbs out of the store", async () => {
      for (const seedUri of ["file://local/../../../../etc/passwd", "file://local/uploads/%2E%2E/%2E%2E/%2E%2E/%2E%2E/etc/passwd"]) {
        const outcome = await c.transfer.importImage({ seedUri, diskFormat: DiskFormat.RAW }).then(
          async ({ task, image }) => ({ task: (await followTask(service, c, task!.id)).task, image: image! }),
          (err: unknown) => err,
        );
        if (outcome instanceof ConnectError) {
          expect(outcome.code, seedUri).toBe(Code.InvalidArgument);
        } else {
          const { task, image } = outcome as { task: Task; image: Image };
          expect(task.state, `${seedUri}: ${JSON.stringify(task.error)}`).toBe(TaskState.FAILED);
          expect((await getImage(image.id)).status).toBe(ImageStatus.KILLED);
        }
      }
    });

    it("refuses a seed URI in a store of another region with FAILED_PRECONDITION", async () => {
      const err = await connectError(c.transfer.importImage({ seedUri: "file://far/uploads/x", diskFormat: DiskFormat.RAW }));
      expect(err.code).toBe(Code.FailedPrecondition);
      expect(err.rawMessage).toMatch(/region elsewhere.*region local/);
    });

    it("refuses to write into a store of another region (import, copy, export, upload URL)", async () => {
      const seedUri = await upload(images.raw.file);
      const imageId = imported.raw.id;
      const calls: [string, Promise<unknown>][] = [
        ["ImportImage stores=[far]", c.transfer.importImage({ seedUri, diskFormat: DiskFormat.RAW, stores: ["far"] })],
        ["CopyImage stores=[far]", c.transfer.copyImage({ imageId, stores: ["far"] })],
        ["ExportImage store=far", c.transfer.exportImage({ imageId, diskFormat: DiskFormat.QCOW2, store: "far" })],
        ["CreateUploadUrl store=far", c.transfer.createUploadUrl({ store: "far" })],
      ];
      const outcomes: string[] = [];
      for (const [what, call] of calls) {
        const err = await connectError(call).catch((e: Error) => e);
        outcomes.push(`${what}: ${err instanceof ConnectError ? `${Code[err.code]} ${err.rawMessage}` : `accepted (${err.message})`}`);
      }
      // Let any task a call started end before the next test looks at work/.
      await eventually("files under work/", () => listFiles(workRoot), (files) => files.length === 0, 15_000);
      for (const outcome of outcomes) expect.soft(outcome).toMatch(/^[^:]+: FailedPrecondition .*region/);
    });

    it("refuses ImportImage into an image that is not QUEUED with FAILED_PRECONDITION", async () => {
      const seedUri = await upload(images.raw.file);
      const err = await connectError(c.transfer.importImage({ seedUri, imageId: imported.raw.id, diskFormat: DiskFormat.RAW }));
      expect(err.code).toBe(Code.FailedPrecondition);
      expect(err.rawMessage).toMatch(/ACTIVE/);
      expect(await getImage(imported.raw.id)).toMatchObject({ status: ImageStatus.ACTIVE, osHashValue: images.raw.rawHashes.sha512 });
    });

    it("refuses ExportImage of an image that is not ACTIVE with FAILED_PRECONDITION", async () => {
      const { image } = await c.images.createImage({ name: "queued" });
      const err = await connectError(c.transfer.exportImage({ imageId: image!.id, diskFormat: DiskFormat.QCOW2 }));
      expect(err.code).toBe(Code.FailedPrecondition);
      expect(err.rawMessage).toMatch(/QUEUED.*ACTIVE/);
    });

    it("refuses CreateDownloadUrl for a format never exported with FAILED_PRECONDITION naming ExportImage", async () => {
      const err = await connectError(c.transfer.createDownloadUrl({ imageId: imported.vmdk.id, diskFormat: DiskFormat.VHDX }));
      expect(err.code).toBe(Code.FailedPrecondition);
      expect(err.rawMessage).toMatch(/run ExportImage/);
    });

    it("refuses an expected hash of the wrong length with INVALID_ARGUMENT", async () => {
      const seedUri = await upload(images.raw.file);
      for (const [algorithm, value] of [
        [HashAlgorithm.SHA256, images.raw.uploadHashes.sha512],
        [HashAlgorithm.SHA512, images.raw.uploadHashes.sha256],
        [HashAlgorithm.SHA256, "abc"],
      ] as const) {
        const err = await connectError(c.transfer.importImage({ seedUri, diskFormat: DiskFormat.RAW, expectedHash: { algorithm, value } }));
        expect(err.code).toBe(Code.InvalidArgument);
        expect(err.rawMessage).toMatch(/expected_hash\.value must be (64|128) hex digits/);
      }
    });
  });

  // 6 ------------------------------------------------------------------------------------------
  describe("cancel in the middle", () => {
    it("cancels a running import: CANCELED, image KILLED, no temp files, no object, no qemu-img left", async () => {
      // 1 GiB of compressed clusters: a small upload that qemu-img needs seconds to convert.
      const big = await buildCompressedQcow2(path.join(work, "big.qcow2"), 1024 * MiB);
      const seedUri = await upload(big);
      const { task: created, image } = await c.transfer.importImage({ seedUri, diskFormat: DiskFormat.QCOW2 });
      const id = created!.id;
      let canceledAt: string | undefined;
      let qemuAtCancel: number[] = [];
      const { seen } = await followTask(service, c, id, async (task) => {
        const stage = task.progress?.stage ?? "";
        if (canceledAt !== undefined || task.state !== TaskState.RUNNING || (stage !== "converting" && stage !== "storing")) return;
        canceledAt = stage;
        qemuAtCancel = pgrep(id);
        const answer = await c.tasks.cancelTask({ id }).then(
          (r) => TaskState[r.task!.state],
          (e: unknown) => String(e),
        );
        expect.soft(answer, "CancelTask's answer").toBe("CANCELED");
      });
      const trail = seen.map((t) => `${TaskState[t.state]}/${t.progress?.stage}`).join(" ");
      expect(canceledAt, `the task ended before it could be canceled: ${trail}`).toBeDefined();
      const final = seen.at(-1)!;
      expect(final.state, trail).toBe(TaskState.CANCELED);
      expect(final.error?.reason).toBe("CANCELED");
      expect(seen.map((t) => t.state)).not.toContain(TaskState.SUCCEEDED);

      await expectNothingLeft(image!.id);
      await eventually(
        `qemu-img processes of the task (canceled at ${canceledAt}, qemu-img then: ${qemuAtCancel.join(", ") || "none"})`,
        async () => pgrep(id),
        (pids) => pids.length === 0,
      );
      // It stays that way: a late finish must not turn the image ACTIVE.
      await new Promise((r) => setTimeout(r, 700));
      expect((await getImage(image!.id)).status).toBe(ImageStatus.KILLED);
      expect((await repository().findTask(id))?.state).toBe("canceled");
      // The ended task can still be read through the API.
      const got = await c.tasks.getTask({ id }).then((r) => TaskState[r.task!.state], (e: unknown) => String(e));
      expect.soft(got, "GetTask of the canceled task").toBe("CANCELED");
      const listed = await c.tasks.listTasks({ imageId: image!.id }).then((r) => r.tasks.map((t) => TaskState[t.state]), (e: unknown) => String(e));
      expect.soft(listed, "ListTasks for the image").toEqual(["CANCELED"]);
    });
  });

  // 7 ------------------------------------------------------------------------------------------
  describe("copy to a second store", () => {
    it("CopyImage adds an ACTIVE location in the second store with the same bytes", async () => {
      const image = imported.vhd;
      const { task: created } = await c.transfer.copyImage({ imageId: image.id, stores: ["second"] });
      const { task } = await watchToEnd(created!.id);
      expect(task.state, JSON.stringify(task.error)).toBe(TaskState.SUCCEEDED);
      expect(task.result?.storeUris).toEqual([`file://second/images/${image.id}`]);
      const after = await getImage(image.id);
      expect(after.status).toBe(ImageStatus.ACTIVE);
      expect(after.locations.map((l) => [l.store, l.uri, l.status]).sort()).toEqual([
        ["local", `file://local/images/${image.id}`, LocationStatus.ACTIVE],
        ["second", `file://second/images/${image.id}`, LocationStatus.ACTIVE],
      ]);
      expect(await sameBytes(path.join(secondRoot, "images", image.id), images.vhd.asRaw)).toBe(true);
    });

    it("ImportImage with stores [local, second] writes both", async () => {
      const seedUri = await upload(images.vmdk.file);
      const { task, image } = await importAndWatch({ seedUri, diskFormat: DiskFormat.VMDK, stores: ["local", "second"], allStoresMustSucceed: true });
      expect(task.state, JSON.stringify(task.error)).toBe(TaskState.SUCCEEDED);
      expect([...task.result!.storeUris].sort()).toEqual([`file://local/images/${image.id}`, `file://second/images/${image.id}`]);
      const stored = await getImage(image.id);
      expect(stored.locations.map((l) => [l.store, l.status]).sort()).toEqual([
        ["local", LocationStatus.ACTIVE],
        ["second", LocationStatus.ACTIVE],
      ]);
      expect(await sameBytes(path.join(storeRoot, "images", image.id), images.vmdk.asRaw)).toBe(true);
      expect(await sameBytes(path.join(secondRoot, "images", image.id), images.vmdk.asRaw)).toBe(true);
    });
  });

  describe("export to a store other than the default", () => {
    it("writes the export there, and CreateDownloadUrl finds it", async () => {
      const image = imported.vhd;
      const { task: created } = await c.transfer.exportImage({ imageId: image.id, diskFormat: DiskFormat.VHDX, store: "second" });
      const { task } = await watchToEnd(created!.id);
      expect(task.state, JSON.stringify(task.error)).toBe(TaskState.SUCCEEDED);
      expect(task.result?.storeUris).toEqual([`file://second/exports/${image.id}.vhdx`]);
      expect(await listFiles(path.join(secondRoot, "exports"))).toContain(`${image.id}.vhdx`);
      const answer = await c.transfer.createDownloadUrl({ imageId: image.id, diskFormat: DiskFormat.VHDX }).then(
        (r) => r.uri,
        (e: unknown) => String(e),
      );
      expect(answer, "the export ExportImage just reported cannot be downloaded").toBe(`file://second/exports/${image.id}.vhdx`);
    });

    it("fails CHECKSUM_MISMATCH for a stored copy altered on disk, and leaves no export (the file store had taken it by rename)", async () => {
      const seedUri = await upload(images.raw.file);
      const { task: imported, image } = await importAndWatch({ seedUri, diskFormat: DiskFormat.RAW, stores: ["second"] });
      expect(imported.state, JSON.stringify(imported.error)).toBe(TaskState.SUCCEEDED);
      const copy = path.join(secondRoot, "images", image.id);
      // Same size, other bytes: only the recorded sha512 can tell.
      await fs.writeFile(copy, randomBytes((await fs.stat(copy)).size));
      const { task: created } = await c.transfer.exportImage({ imageId: image.id, diskFormat: DiskFormat.QCOW2, store: "second" });
      const { task } = await watchToEnd(created!.id);
      expect(task.state).toBe(TaskState.FAILED);
      expect(task.error).toMatchObject({ reason: "CHECKSUM_MISMATCH", message: expect.stringContaining("does not match the image's sha512") });
      expect((await listFiles(secondRoot)).filter((f) => f.includes(`${image.id}.qcow2`))).toEqual([]);
      await eventually("files under work/", () => listFiles(workRoot), (files) => files.length === 0);
    });
  });

  // 8 ------------------------------------------------------------------------------------------
  describe("direct gRPC data path with a stock connect gRPC client", () => {
    it("UploadImageData streams a qcow2 in 256 KiB chunks into a QUEUED image and returns it ACTIVE", async () => {
      const { image: queued } = await c.images.createImage({ name: "grpc-upload" });
      expect(queued?.status).toBe(ImageStatus.QUEUED);
      async function* messages() {
        let first = true;
        for await (const chunk of createReadStream(images.qcow2.file, { highWaterMark: 256 * KiB }) as AsyncIterable<Buffer>) {
          yield first ? { imageId: queued!.id, diskFormat: DiskFormat.QCOW2, chunk } : { chunk };
          first = false;
        }
      }
      const { image } = await c.transfer.uploadImageData(messages());
      expect(image).toMatchObject({
        id: queued!.id,
        status: ImageStatus.ACTIVE,
        diskFormat: DiskFormat.RAW,
        size: BigInt(images.qcow2.rawHashes.size),
        virtualSize: BigInt(images.qcow2.virtualSize),
        checksum: images.qcow2.rawHashes.md5,
        osHashValue: images.qcow2.rawHashes.sha512,
      });
      // The staged upload is gone once the image is made.
      expect((await listFiles(path.join(storeRoot, "uploads"))).filter((f) => f.includes(queued!.id))).toEqual([]);
    });

    it("UploadImageData of data that disagrees with the declared format fails, kills the image and keeps nothing", async () => {
      const { image: queued } = await c.images.createImage({ name: "grpc-mismatch" });
      async function* messages() {
        let first = true;
        for await (const chunk of createReadStream(images.vhd.file, { highWaterMark: 256 * KiB }) as AsyncIterable<Buffer>) {
          yield first ? { imageId: queued!.id, diskFormat: DiskFormat.QCOW2, chunk } : { chunk };
          first = false;
        }
      }
      const err = await connectError(c.transfer.uploadImageData(messages()));
      expect(err.code).toBe(Code.FailedPrecondition);
      expect(err.rawMessage).toMatch(/declared qcow2 but its data is vhd/);
      await expectNothingLeft(queued!.id);
      expect((await listFiles(path.join(storeRoot, "uploads"))).filter((f) => f.includes(queued!.id))).toEqual([]);
    });

    it("DownloadImageData returns exactly the bytes asked for, and INVALID_ARGUMENT past the end", async () => {
      const image = imported.raw;
      const whole = await fs.readFile(images.raw.asRaw);
      const read = async (offset: number, length: number) => {
        const parts: Uint8Array[] = [];
        for await (const { chunk } of c.transfer.downloadImageData({ imageId: image.id, offset: BigInt(offset), length: BigInt(length) })) parts.push(chunk);
        return Buffer.concat(parts);
      };
      const offset = 5 * MiB + 12_345;
      const length = 3 * MiB + 7;
      expect((await read(offset, length)).equals(whole.subarray(offset, offset + length))).toBe(true);
      // Across the random/zero boundary, to the end (length 0), and clipped at the end.
      expect((await read(12 * MiB - 10, 20)).equals(whole.subarray(12 * MiB - 10, 12 * MiB + 10))).toBe(true);
      expect((await read(SOURCE_BYTES - 100, 0)).equals(whole.subarray(SOURCE_BYTES - 100))).toBe(true);
      expect((await read(SOURCE_BYTES - 100, 1000)).equals(whole.subarray(SOURCE_BYTES - 100))).toBe(true);
      const err = await connectError(read(SOURCE_BYTES + 1, 10));
      expect(err.code).toBe(Code.InvalidArgument);
      expect(err.rawMessage).toMatch(/offset .* beyond/);
    });

    it("DownloadImageData reaches a stock grpc-js client with default settings, in 1 MiB messages", async () => {
      const whole = await fs.readFile(images.raw.asRaw);
      const grpcJs = createGrpcJsClients(new URL(service.url).host);
      try {
        const offset = 3 * MiB + 5;
        const outcome = await serverStream<{ chunk: Buffer }>(grpcJs.transfer, "downloadImageData", { imageId: imported.raw.id, offset });
        expect(outcome.error).toBeUndefined();
        expect(outcome.status.code).toBe(grpc.status.OK);
        expect(Buffer.concat(outcome.messages.map((m) => m.chunk)).equals(whole.subarray(offset))).toBe(true);
        // Every message but the last is full: no message limit is neared, and none is wasted.
        const sizes = outcome.messages.map((m) => m.chunk.length);
        expect(sizes.slice(0, -1).every((n) => n === MiB)).toBe(true);
        expect(sizes.at(-1)).toBe((SOURCE_BYTES - offset) % MiB || MiB);
      } finally {
        grpcJs.close();
      }
    });
  });
});

// 5 (a server of its own) ------------------------------------------------------------------------
describe("size cap (maxImageBytes 4 MiB)", () => {
  const CAP = 4 * MiB;
  let service: TestService;
  let c: Clients;
  let uploads: string;

  beforeAll(async () => {
    service = await startTestService({ maxImageBytes: CAP });
    c = clientsFor(service);
    uploads = path.join(service.dataDir, "images", "uploads");
  });
  afterAll(() => service?.stop());

  function* chunks(total: number, size = 64 * KiB) {
    for (let done = 0; done < total; done += size) yield randomBytes(Math.min(size, total - done));
  }

  it("answers 413 to a PUT whose Content-Length is above the cap", async () => {
    const { url } = await c.transfer.createUploadUrl({});
    const reply = await request(url, { method: "PUT", headers: { "Content-Length": String(CAP + 1) }, chunks: chunks(CAP + 1) });
    expect(reply.status).toBe(413);
    expect(reply.body.toString()).toMatch(/larger than 4194304/);
    expect(await listFiles(uploads)).toEqual([]);
  });

  it("answers 413 to a chunked PUT that grows past the cap and keeps nothing", async () => {
    const { url } = await c.transfer.createUploadUrl({});
    const reply = await request(url, { method: "PUT", chunks: chunks(CAP + 2 * MiB) });
    expect(reply.status).toBe(413);
    await eventually("files in uploads/", () => listFiles(uploads), (files) => files.length === 0);
  });

  it("accepts a PUT of exactly the cap", async () => {
    const { url } = await c.transfer.createUploadUrl({});
    const reply = await request(url, { method: "PUT", chunks: chunks(CAP) });
    expect(reply.status, reply.body.toString()).toBe(201);
    expect(await listFiles(uploads)).toHaveLength(1);
  });

  it("ends UploadImageData past the cap with RESOURCE_EXHAUSTED, the image KILLED and nothing staged", async () => {
    const { image: queued } = await c.images.createImage({ name: "too-big" });
    async function* messages() {
      yield { imageId: queued!.id, diskFormat: DiskFormat.RAW };
      for (let sent = 0; sent <= CAP; sent += 256 * KiB) yield { chunk: randomBytes(256 * KiB) };
    }
    const err = await connectError(c.transfer.uploadImageData(messages()));
    expect(err.code).toBe(Code.ResourceExhausted);
    expect(err.rawMessage).toMatch(/larger than the limit of 4194304/);
    expect((await c.images.getImage({ id: queued!.id })).image?.status).toBe(ImageStatus.KILLED);
    await eventually("files in uploads/", () => listFiles(uploads), (files) => files.every((f) => !f.includes(queued!.id)));
  });

  it("fails an import whose stored (converted) image would exceed the cap with IMAGE_TOO_LARGE", async () => {
    // 1 MiB of data in a 24 MiB disk: a small upload that becomes 24 MiB of raw when stored.
    const small = path.join(work, "small-big.qcow2");
    const raw = path.join(work, "small-big.raw");
    await fs.writeFile(raw, randomBytes(MiB));
    await fs.truncate(raw, 24 * MiB);
    await qemuImg(["convert", "-f", "raw", "-O", "qcow2", raw, small]);
    expect((await fs.stat(small)).size).toBeLessThan(CAP);
    const { url, seedUri } = await c.transfer.createUploadUrl({});
    expect((await putFile(url, small)).status).toBe(201);
    const { task: created, image } = await c.transfer.importImage({ seedUri, diskFormat: DiskFormat.QCOW2 });
    const { seen } = await followTask(service, c, created!.id);
    const stored = (await c.images.getImage({ id: image!.id })).image!;
    expect(
      { state: TaskState[seen.at(-1)!.state], reason: seen.at(-1)!.error?.reason, storedBytes: Number(stored.size) },
      "maxImageBytes is documented as the largest image 'as uploaded and as stored'",
    ).toMatchObject({ state: "FAILED", reason: "IMAGE_TOO_LARGE" });
  });
});

/** Processes whose command line mentions `needle` (e.g. a task id in qemu-img's paths). */
function pgrep(needle: string): number[] {
  const result = spawnSync("pgrep", ["-f", needle], { encoding: "utf8" });
  if (result.error) throw result.error;
  return result.stdout
    .split("\n")
    .filter((l) => l.trim() !== "")
    .map(Number)
    .filter((pid) => pid !== process.pid);
}
