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
import { uploadFile, watchToEnd } from "../helpers/transfer.js";

let dir: string;
let servers: ServerProcess[] = [];

beforeAll(async () => {
  await ensureBuilt();
  dir = await mkdtemp(join(tmpdir(), "itx-crash-"));
});
afterAll(async () => {
  await Promise.all(servers.map((s) => s.stop()));
  await rm(dir, { recursive: true, force: true });
});

async function sha512(file: string): Promise<string> {
  const hash = createHash("sha512");
  for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer);
  return hash.digest("hex");
}

it("finishes an import whose server was killed with SIGKILL, once the lease lapses, after a restart", async () => {
  const raw = await buildSourceRaw(join(dir, "disk.raw"), 384 * MiB);
  const qcow2 = await buildImage(raw, "qcow2", join(dir, "disk.qcow2"));
  const config = join(dir, "itx.yaml");
  // A short lease, so the dead worker's claim lapses in seconds rather than the default 30.
  await writeFile(config, "leaseSeconds: 2\n");
  const args = ["--config", config, "--data-dir", join(dir, "data")];

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
  expect(await readdir(join(dir, "data", "work")).catch(() => [])).toEqual([]);
}, 120_000);
