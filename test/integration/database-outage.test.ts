import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, expect, it } from "vitest";
import { DiskFormat, ImageService, ImageStatus } from "../../src/gen/imagetransfer/v1/image_pb.js";
import { TaskService, TaskState } from "../../src/gen/imagetransfer/v1/task_pb.js";
import { TransferService } from "../../src/gen/imagetransfer/v1/transfer_pb.js";
import { buildImage, buildSourceRaw, MiB } from "../helpers/disk-images.js";
import { startMongoServer, type MongoServer } from "../helpers/mongo-server.js";
import { withDatabase } from "../helpers/mongo-uri.js";
import { startTestService, type TestService } from "../helpers/service.js";
import { uploadFile, watchToEnd } from "../helpers/transfer.js";

let dir: string;
let db: MongoServer;
let service: TestService;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "itx-outage-"));
  db = await startMongoServer();
  service = await startTestService({ mongodbUri: withDatabase(db.uri, "itx_transfer_outage") });
}, 120_000);
afterAll(async () => {
  await service?.stop();
  await db?.stop();
  await rm(dir, { recursive: true, force: true });
});

it("finishes a transfer that was running while the database was away for seconds, and writes its outcome when it is back", async () => {
  const raw = await buildSourceRaw(join(dir, "disk.raw"), 1024 * MiB);
  const qcow2 = await buildImage(raw, "qcow2", join(dir, "disk.qcow2"));
  const seedUri = await uploadFile(service.url, qcow2);
  const transport = createGrpcTransport({ baseUrl: service.url });
  const { task } = await createClient(TransferService, transport).importImage({ seedUri, diskFormat: DiskFormat.QCOW2 });
  for await (const { task: t } of createClient(TaskService, transport).watchTask({ id: task!.id })) {
    if (t!.progress?.stage === "storing") break;
  }
  const outageStart = Date.now();
  const restart = await db.outage!();
  // Longer than storing the rest takes, and than the driver waits for a server (5 s) before it
  // gives up on a call: the transfer reaches its end with no database to tell.
  await new Promise((r) => setTimeout(r, 15_000));
  await restart();

  const finished = await watchToEnd(service.url, task!.id);
  expect(finished.state, JSON.stringify(finished.error)).toBe(TaskState.SUCCEEDED);
  expect(finished.attempts).toBe(1);
  // The outcome was reached, or at least written, after the database went away: this test covered the outage.
  expect(Number(finished.finishTime!.seconds) * 1000).toBeGreaterThan(outageStart);
  const hash = createHash("sha512");
  for await (const chunk of createReadStream(raw)) hash.update(chunk as Buffer);
  const { image } = await createClient(ImageService, transport).getImage({ id: task!.imageId });
  expect(image).toMatchObject({ status: ImageStatus.ACTIVE, osHashValue: hash.digest("hex") });
}, 120_000);

it("answers UNAVAILABLE when the database stops answering, within databaseTimeoutSeconds, and serves again once it answers", async () => {
  const impatient = await startTestService({ mongodbUri: withDatabase(db.uri, "itx_hung_database"), databaseTimeoutSeconds: 2 });
  try {
    const images = createClient(ImageService, createGrpcTransport({ baseUrl: impatient.url }));
    await images.listImages({});
    const thaw = db.freeze!();
    try {
      const started = Date.now();
      const error = await images.listImages({}).then(() => undefined, (err: unknown) => err);
      expect(error).toBeInstanceOf(ConnectError);
      expect((error as ConnectError).code).toBe(Code.Unavailable);
      expect((error as ConnectError).rawMessage).toMatch(/database/);
      // Ended by the 2 s limit, not hung (it took 62 s before the limit applied to handshakes too):
      // a read is retried once, and may wait up to 5 s to select a server, so about 6 s here.
      expect(Date.now() - started).toBeLessThan(20_000);
    } finally {
      thaw();
    }
    await expect.poll(() => images.listImages({}).then(() => "answered", () => "failed"), { timeout: 30_000, interval: 500 }).toBe("answered");
  } finally {
    await impatient.stop();
  }
}, 120_000);
