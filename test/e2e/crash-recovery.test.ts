import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { mkdtemp, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, expect, it } from "vitest";
import { DiskFormat, ImageService, ImageStatus } from "../../src/gen/imagetransfer/v1/image_pb.js";
import { TaskService, TaskState } from "../../src/gen/imagetransfer/v1/task_pb.js";
import { TransferService } from "../../src/gen/imagetransfer/v1/transfer_pb.js";
import { ensureBuilt, spawnServer, type ServerProcess } from "../helpers/built-cli.js";
import { buildImage, buildSourceRaw, MiB } from "../helpers/disk-images.js";
import { startMongoServer, type MongoServer } from "../helpers/mongo-server.js";
import { withDatabase } from "../helpers/mongo-uri.js";
import { uploadFile, watchToEnd } from "../helpers/transfer.js";

let dir: string;
let raw: string;
let qcow2: string;
let mongo: MongoServer;
const servers: ServerProcess[] = [];

beforeAll(async () => {
  await ensureBuilt();
  dir = await mkdtemp(join(tmpdir(), "itx-crash-"));
  raw = await buildSourceRaw(join(dir, "disk.raw"), 384 * MiB);
  qcow2 = await buildImage(raw, "qcow2", join(dir, "disk.qcow2"));
  mongo = await startMongoServer();
}, 120_000);
afterAll(async () => {
  await Promise.all(servers.map((s) => s.stop()));
  await mongo?.stop();
  await rm(dir, { recursive: true, force: true });
});

async function sha512(file: string): Promise<string> {
  const hash = createHash("sha512");
  for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer);
  return hash.digest("hex");
}

it.each(["embedded", "MongoDB"])("finishes an import whose server was killed with SIGKILL, once the lease lapses, after a restart (%s)", async (database) => {
  const config = join(dir, `${database}.yaml`);
  // A short lease, so the dead worker's claim lapses in seconds rather than the default 30.
  await writeFile(config, "leaseSeconds: 2\n");
  const args = ["--config", config, "--data-dir", join(dir, database)];
  if (database === "MongoDB") args.push("--mongodb-uri", withDatabase(mongo.uri, "itx_crash"));

  const first = await spawnServer(args);
  servers.push(first);
  const seedUri = await uploadFile(first.url, qcow2);
  const { task } = await createClient(TransferService, createGrpcTransport({ baseUrl: first.url })).importImage({
    seedUri,
    diskFormat: DiskFormat.QCOW2,
  });
  // Kill the worker in the middle of the work.
  for await (const { task: t } of createClient(TaskService, createGrpcTransport({ baseUrl: first.url })).watchTask({ id: task!.id })) {
    if (t!.progress?.stage === "converting" || t!.progress?.stage === "storing") break;
  }
  first.process.kill("SIGKILL");
  await first.stop();

  const second = await spawnServer(args);
  servers.push(second);
  const finished = await watchToEnd(second.url, task!.id);
  expect(finished.state, JSON.stringify(finished.error)).toBe(TaskState.SUCCEEDED);
  expect(finished.attempts).toBe(2);

  const { image } = await createClient(ImageService, createGrpcTransport({ baseUrl: second.url })).getImage({ id: task!.imageId });
  expect(image).toMatchObject({ status: ImageStatus.ACTIVE, osHashValue: await sha512(raw) });
  expect(image!.locations).toHaveLength(1);
  expect(await readdir(join(dir, database, "work")).catch(() => [])).toEqual([]);
}, 120_000);
