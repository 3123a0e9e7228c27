import { randomBytes } from "node:crypto";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, expect, it } from "vitest";
import { DiskFormat } from "../../src/gen/imagetransfer/v1/image_pb.js";
import { TransferService } from "../../src/gen/imagetransfer/v1/transfer_pb.js";
import { ensureBuilt, spawnServer, type ServerProcess } from "../helpers/built-cli.js";
import { buildSourceRaw, MiB } from "../helpers/disk-images.js";
import { putFile, watchToEnd } from "../helpers/transfer.js";

let dir: string;
let server: ServerProcess;
const signingKey = randomBytes(32).toString("hex");

beforeAll(async () => {
  await ensureBuilt();
  dir = await mkdtemp(join(tmpdir(), "itx-secrets-"));
  const config = join(dir, "itx.yaml");
  await writeFile(config, `urlSigningKey: "${signingKey}"\nlogLevel: trace\n`);
  server = await spawnServer(["--config", config, "--data-dir", join(dir, "data")], { ITX_LOG_LEVEL: "trace" });
});
afterAll(async () => {
  await server?.stop();
  await rm(dir, { recursive: true, force: true });
});

it("never writes a temporary URL's signature or the signing key to its log, even at trace level", async () => {
  const transfer = createClient(TransferService, createGrpcTransport({ baseUrl: server.url }));
  const upload = await transfer.createUploadUrl({});
  const raw = await buildSourceRaw(join(dir, "disk.raw"), MiB);
  await putFile(upload.url, raw);
  // A tampered URL is refused and logged as refused, still without the signature.
  const forged = new URL(upload.url);
  forged.searchParams.set("signature", "f".repeat(64));
  expect((await fetch(forged, { method: "PUT", body: "x" })).status).toBe(403);
  const { task } = await transfer.importImage({ seedUri: upload.seedUri, diskFormat: DiskFormat.RAW });
  await watchToEnd(server.url, task!.id);
  const download = await transfer.createDownloadUrl({ imageId: task!.imageId });
  expect((await fetch(download.url)).status).toBe(200);

  const log = server.log();
  expect(log).toMatch(/"msg":"task succeeded"/);
  // The data requests themselves are in the log (their keys), just never their signatures.
  expect(log).toContain(new URL(upload.url).pathname.split("/").at(-1)!);
  for (const url of [upload.url, download.url]) {
    const signature = new URL(url).searchParams.get("signature")!;
    expect(signature).toMatch(/^[0-9a-f]{64}$/);
    expect(log).not.toContain(signature);
  }
  expect(log).not.toContain("f".repeat(64));
  expect(log).not.toContain(signingKey);
  expect(await readFile(join(dir, "itx.yaml"), "utf8")).toContain(signingKey);
});
