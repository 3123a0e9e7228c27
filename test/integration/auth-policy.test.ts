/**
 * Authentication and the default policy through real gRPC clients (stock @grpc/grpc-js
 * built from the .proto files, and Connect over gRPC) against a real server with API
 * keys for users of two projects, a service, an admin and a principal without a project.
 * Every default rule has a case it allows and a case it denies.
 */
import { randomBytes } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import * as grpc from "@grpc/grpc-js";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DiskFormat, ImageStatus } from "../../src/gen/imagetransfer/v1/image_pb.js";
import { TaskState } from "../../src/gen/imagetransfer/v1/task_pb.js";
import { apiKey, Code, connectClients, connectError, grpcJsClients, type TestKey } from "../helpers/auth.js";
import { serverStream, statusOf, unary, type GrpcJsClients } from "../helpers/grpc-js-client.js";
import { startTestService, type TestService } from "../helpers/service.js";
import { putFile } from "../helpers/transfer.js";

const keys = {
  alice: apiKey("alice", "alpha", ["member"]),
  bob: apiKey("bob", "beta", ["member"]),
  compute: apiKey("compute", "services", ["service"]),
  root: apiKey("root", "ops", ["admin"]),
  nobody: apiKey("nobody", "", []),
};
type Who = keyof typeof keys;

let service: TestService;
let dir: string;
let logText = "";
const grpcClients = new Map<Who, GrpcJsClients>();
/** A 256 KiB raw disk, half random. */
let disk: string;
/** Alice's active image and its import task. */
let aliceImage: string;
let aliceTask: string;

const g = (who: Who) => grpcClients.get(who)!;
const c = (who: Who) => connectClients(service.url, keys[who].token);

async function importAs(who: Who): Promise<{ imageId: string; taskId: string }> {
  const { url, seedUri } = await c(who).transfer.createUploadUrl({});
  await putFile(url, disk);
  const { task } = await c(who).transfer.importImage({ seedUri, diskFormat: DiskFormat.RAW, name: `${who}-disk` });
  let state = task!.state;
  for await (const { task: t } of c(who).tasks.watchTask({ id: task!.id })) state = t!.state;
  expect(state).toBe(TaskState.SUCCEEDED);
  return { imageId: task!.imageId, taskId: task!.id };
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "itx-auth-"));
  disk = join(dir, "disk.raw");
  await writeFile(disk, Buffer.concat([randomBytes(128 * 1024), Buffer.alloc(128 * 1024)]));
  const sink = new Writable({
    write(chunk, _encoding, done) {
      logText += chunk.toString();
      done();
    },
  });
  service = await startTestService(
    {
      auth: { apiKeys: Object.values(keys).map((k: TestKey) => k.entry) },
      maxUrlTtlSeconds: 900,
      urlTtlSeconds: 600,
      stores: [
        { name: "local", plugin: "store-filesystem", options: { root: "images" }, default: true, staging: true },
        { name: "second", plugin: "store-filesystem", options: { root: "second" } },
      ],
    },
    { logger: pino({ level: "debug" }, sink) },
  );
  for (const who of Object.keys(keys) as Who[]) grpcClients.set(who, grpcJsClients(service.url, keys[who].token));
  ({ imageId: aliceImage, taskId: aliceTask } = await importAs("alice"));
}, 120_000);

afterAll(async () => {
  for (const client of grpcClients.values()) client.close();
  await service?.stop();
  await rm(dir, { recursive: true, force: true });
});

describe("authentication", () => {
  it("refuses calls without credentials, with malformed ones and with unknown keys, never echoing the token", async () => {
    const anonymous = grpcJsClients(service.url);
    try {
      const missing = await statusOf(unary(anonymous.image, "listImages", {}));
      expect(missing.code).toBe(grpc.status.UNAUTHENTICATED);
      // (Punctuation grpc-js would show percent-encoded is avoided in these messages.)
      expect(missing.details).toBe('credentials required. Send an "authorization" header with "Bearer " and an API key or a JWT');
    } finally {
      anonymous.close();
    }
    const secret = `itx_${randomBytes(24).toString("base64url")}`;
    const unknown = await connectError(connectClients(service.url, secret).images.listImages({}));
    expect(unknown.code).toBe(Code.Unauthenticated);
    expect(unknown.rawMessage).toBe("unknown API key");
    const basic = grpcJsClients(service.url);
    try {
      const metadata = new grpc.Metadata();
      metadata.set("authorization", `Basic ${secret}`);
      const malformed = await new Promise<grpc.ServiceError>((resolve) =>
        (basic.image as unknown as { listImages: Function }).listImages({}, metadata, (err: grpc.ServiceError) => resolve(err)),
      );
      expect(malformed.code).toBe(grpc.status.UNAUTHENTICATED);
      expect(malformed.details).toMatch(/^malformed "authorization" header/);
      expect(malformed.details).not.toContain(secret);
    } finally {
      basic.close();
    }
    expect(logText).not.toContain(secret);
  });

  it("leaves health and reflection open", async () => {
    const anonymous = grpcJsClients(service.url);
    try {
      expect(await unary(anonymous.health, "check", { service: "" })).toEqual({ status: "SERVING" });
    } finally {
      anonymous.close();
    }
  });
});

describe("the default policy, one allowed and one denied case per rule", () => {
  it("create_image: a project member may; a principal without a project may not", async () => {
    const created = await unary<{ image: { owner: string } }>(g("alice").image, "createImage", { name: "mine" });
    expect(created.image.owner).toBe("alpha");
    expect((await statusOf(unary(g("nobody").image, "createImage", { name: "x" }))).code).toBe(grpc.status.PERMISSION_DENIED);
  });

  it("get_image: the owner and services may; another project gets NOT_FOUND, as for an id that does not exist", async () => {
    expect((await unary<{ image: { id: string } }>(g("alice").image, "getImage", { id: aliceImage })).image.id).toBe(aliceImage);
    expect((await unary<{ image: { id: string } }>(g("compute").image, "getImage", { id: aliceImage })).image.id).toBe(aliceImage);
    const hidden = await statusOf(unary(g("bob").image, "getImage", { id: aliceImage }));
    const missing = await statusOf(unary(g("bob").image, "getImage", { id: "00000000-0000-4000-8000-000000000000" }));
    expect(hidden.code).toBe(grpc.status.NOT_FOUND);
    expect(hidden.details).toBe(`image ${aliceImage} not found`);
    expect(missing.code).toBe(grpc.status.NOT_FOUND);
  });

  it("list_images: each project sees its own; services and admins see every project's", async () => {
    const ids = async (who: Who) => (await unary<{ images: Array<{ id: string }> }>(g(who).image, "listImages", { pageSize: 1000 })).images.map((i) => i.id);
    expect(await ids("alice")).toContain(aliceImage);
    expect(await ids("bob")).not.toContain(aliceImage);
    expect(await ids("compute")).toContain(aliceImage);
    expect(await ids("root")).toContain(aliceImage);
  });

  it("update_image: the owner may; a service may read but not change it (PERMISSION_DENIED); another project gets NOT_FOUND", async () => {
    const update = (who: Who, name: string) => unary(g(who).image, "updateImage", { image: { id: aliceImage, name }, updateMask: { paths: ["name"] } });
    expect(await update("alice", "renamed")).toMatchObject({ image: { name: "renamed" } });
    expect((await statusOf(update("compute", "taken"))).code).toBe(grpc.status.PERMISSION_DENIED);
    expect((await statusOf(update("bob", "taken"))).code).toBe(grpc.status.NOT_FOUND);
  });

  it("delete_image: the owner may; another project gets NOT_FOUND and the image stays", async () => {
    const { image } = await unary<{ image: { id: string } }>(g("alice").image, "createImage", { name: "doomed" });
    expect((await statusOf(unary(g("bob").image, "deleteImage", { id: image.id }))).code).toBe(grpc.status.NOT_FOUND);
    expect(await unary(g("alice").image, "getImage", { id: image.id })).toMatchObject({ image: { status: "IMAGE_STATUS_QUEUED" } });
    expect(await unary(g("alice").image, "deleteImage", { id: image.id })).toMatchObject({ image: { status: "IMAGE_STATUS_DELETED" } });
  });

  it("create_upload_url: a member may, up to maxUrlTtlSeconds; a principal without a project may not", async () => {
    const url = await unary<{ url: string; method: string }>(g("alice").transfer, "createUploadUrl", { expiresInSeconds: 900 });
    expect(url.method).toBe("PUT");
    const tooLong = await statusOf(unary(g("alice").transfer, "createUploadUrl", { expiresInSeconds: 901 }));
    expect(tooLong.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(tooLong.details).toBe("expires_in_seconds must be at most 900");
    expect((await statusOf(unary(g("nobody").transfer, "createUploadUrl", {})))?.code).toBe(grpc.status.PERMISSION_DENIED);
  });

  it("import_image: a member may; importing into another project's image is NOT_FOUND", async () => {
    const { image } = await unary<{ image: { id: string } }>(g("alice").image, "createImage", { name: "queued" });
    const { seedUri } = await unary<{ seedUri: string }>(g("bob").transfer, "createUploadUrl", {});
    expect((await statusOf(unary(g("bob").transfer, "importImage", { seedUri, imageId: image.id }))).code).toBe(grpc.status.NOT_FOUND);
    expect((await statusOf(unary(g("nobody").transfer, "importImage", { seedUri }))).code).toBe(grpc.status.PERMISSION_DENIED);
    const started = await unary<{ task: { owner: string; type: string } }>(g("bob").transfer, "importImage", { seedUri });
    expect(started.task).toMatchObject({ owner: "beta", type: "TASK_TYPE_IMPORT" });
  });

  it("export_image: the owner may; another project gets NOT_FOUND", async () => {
    const { task } = await unary<{ task: { owner: string } }>(g("alice").transfer, "exportImage", { imageId: aliceImage, diskFormat: "DISK_FORMAT_RAW" });
    expect(task.owner).toBe("alpha");
    expect((await statusOf(unary(g("bob").transfer, "exportImage", { imageId: aliceImage, diskFormat: "DISK_FORMAT_RAW" }))).code).toBe(
      grpc.status.NOT_FOUND,
    );
  });

  it("create_download_url: the owner may and the URL works; another project gets NOT_FOUND", async () => {
    const { url } = await unary<{ url: string }>(g("alice").transfer, "createDownloadUrl", { imageId: aliceImage });
    expect((await fetch(url)).status).toBe(200);
    expect((await statusOf(unary(g("bob").transfer, "createDownloadUrl", { imageId: aliceImage }))).code).toBe(grpc.status.NOT_FOUND);
  });

  it("copy_image: the owner may; another project gets NOT_FOUND", async () => {
    const { task } = await unary<{ task: { type: string } }>(g("alice").transfer, "copyImage", { imageId: aliceImage, stores: ["second"] });
    expect(task.type).toBe("TASK_TYPE_COPY");
    expect((await statusOf(unary(g("bob").transfer, "copyImage", { imageId: aliceImage, stores: ["second"] }))).code).toBe(grpc.status.NOT_FOUND);
  });

  it("upload_image_data: a service may stream into any project's image; a user may not", async () => {
    const { image } = await c("alice").images.createImage({ name: "streamed" });
    const payload = Buffer.concat([randomBytes(64 * 1024), Buffer.alloc(64 * 1024)]);
    async function* messages() {
      yield { imageId: image!.id, diskFormat: DiskFormat.RAW, chunk: payload };
    }
    const denied = await connectError(c("alice").transfer.uploadImageData(messages()));
    expect(denied.code).toBe(Code.PermissionDenied);
    const uploaded = await c("compute").transfer.uploadImageData(messages());
    expect(uploaded.image).toMatchObject({ id: image!.id, owner: "alpha", status: ImageStatus.ACTIVE, size: BigInt(payload.length) });
  });

  it("download_image_data: a service may read any project's image; a user may not", async () => {
    let bytes = 0;
    for await (const { chunk } of c("compute").transfer.downloadImageData({ imageId: aliceImage })) bytes += chunk.length;
    expect(bytes).toBe(256 * 1024);
    const outcome = await serverStream(g("alice").transfer, "downloadImageData", { imageId: aliceImage });
    expect(outcome.status.code).toBe(grpc.status.PERMISSION_DENIED);
    expect(outcome.messages).toEqual([]);
  });

  it("get_task, list_tasks and watch_task: the owner may; another project gets NOT_FOUND or an empty list", async () => {
    expect(await unary(g("alice").task, "getTask", { id: aliceTask })).toMatchObject({ task: { id: aliceTask } });
    expect((await statusOf(unary(g("bob").task, "getTask", { id: aliceTask }))).code).toBe(grpc.status.NOT_FOUND);
    const listed = async (who: Who) => (await unary<{ tasks: Array<{ id: string }> }>(g(who).task, "listTasks", { pageSize: 1000 })).tasks.map((t) => t.id);
    expect(await listed("alice")).toContain(aliceTask);
    expect(await listed("bob")).not.toContain(aliceTask);
    const own = await serverStream(g("alice").task, "watchTask", { id: aliceTask });
    expect(own.status.code).toBe(grpc.status.OK);
    expect((await serverStream(g("bob").task, "watchTask", { id: aliceTask })).status.code).toBe(grpc.status.NOT_FOUND);
  });

  it("cancel_task: the owner may; another project gets NOT_FOUND and the task goes on", async () => {
    const { image } = await unary<{ image: { id: string } }>(g("alice").image, "createImage", { name: "to-cancel" });
    const { seedUri } = await unary<{ seedUri: string }>(g("alice").transfer, "createUploadUrl", { imageId: image.id });
    const { task } = await unary<{ task: { id: string } }>(g("alice").transfer, "importImage", { seedUri, imageId: image.id });
    expect((await statusOf(unary(g("bob").task, "cancelTask", { id: task.id }))).code).toBe(grpc.status.NOT_FOUND);
    const after = await unary<{ task: { state: string; error: { message: string } } }>(g("alice").task, "getTask", { id: task.id });
    expect(after.task.error?.message ?? "").not.toMatch(/canceled by bob/);
    const canceled = await unary<{ task: { state: string; error: { message: string } } }>(g("alice").task, "cancelTask", { id: task.id }).catch(
      (err: grpc.ServiceError) => err,
    );
    // The upload was never made, so the import may already have failed; then cancelling is refused, never NOT_FOUND.
    if ("code" in canceled) expect(canceled.code).toBe(grpc.status.FAILED_PRECONDITION);
    else expect(canceled.task).toMatchObject({ state: "TASK_STATE_CANCELED", error: { message: "canceled by alice" } });
  });

  it("AdminService: admins may; users and services may not", async () => {
    const { stores } = await unary<{ stores: Array<{ name: string }> }>(g("root").admin, "listStores", {});
    expect(stores.map((s) => s.name)).toEqual(["local", "second"]);
    for (const who of ["alice", "compute"] as const) {
      const denied = await statusOf(unary(g(who).admin, "listStores", {}));
      expect(denied.code).toBe(grpc.status.PERMISSION_DENIED);
      expect(denied.details).toBe(`list_stores is not allowed for ${who} on listener "default"`);
    }
    expect((await statusOf(unary(g("alice").admin, "collectGarbage", {}))).code).toBe(grpc.status.PERMISSION_DENIED);
  });

  it("admins may act on any project's images", async () => {
    const { image } = await unary<{ image: { id: string } }>(g("bob").image, "createImage", { name: "bobs" });
    expect(await unary(g("root").image, "deleteImage", { id: image.id })).toMatchObject({ image: { status: "IMAGE_STATUS_DELETED" } });
  });
});

describe("the logs", () => {
  it("have one audit line per mutating call, with who, where, what and the outcome, and no tokens or signatures", async () => {
    const { image } = await unary<{ image: { id: string } }>(g("alice").image, "createImage", { name: "audited" });
    await statusOf(unary(g("bob").image, "deleteImage", { id: image.id }));
    const lines = logText.split("\n").filter(Boolean).map((l) => JSON.parse(l));
    const audits = lines.filter((l) => l.audit === true && l.targets?.imageId === image.id);
    expect(audits).toHaveLength(2);
    expect(audits[0]).toMatchObject({ subject: "alice", project: "alpha", listener: "default", action: "create_image", outcome: "OK" });
    expect(audits[1]).toMatchObject({ subject: "bob", project: "beta", listener: "default", action: "delete_image", outcome: "NotFound" });
    expect(typeof audits[0].time).toBe("string");
    // Reads are not audited, but their request line names the caller.
    expect(lines.some((l) => l.audit && l.action === "get_image")).toBe(false);
    expect(lines.some((l) => l.msg === "rpc" && l.subject === "compute" && l.project === "services")).toBe(true);
    // Data-endpoint writes are audited too.
    expect(lines.some((l) => l.audit && l.action === "data_put" && l.outcome === 201)).toBe(true);
    for (const key of Object.values(keys)) expect(logText).not.toContain(key.token);
    expect(logText).not.toMatch(/signature=/);
  });
});
