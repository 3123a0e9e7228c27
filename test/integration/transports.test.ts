// One real server, reached through every client a user might point at it: plain fetch
// speaking Connect JSON over HTTP/1.1, the generated Connect client over gRPC (HTTP/2),
// Connect binary and gRPC-Web (HTTP/1.1), a stock grpc-js client built from the .proto
// files, buf curl using server reflection, and all of it again over TLS.
import { execFile } from "node:child_process";
import { randomUUID } from "node:crypto";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import http from "node:http";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { Code, ConnectError, createClient, type Client, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AdminService } from "../../src/gen/imagetransfer/v1/admin_pb.js";
import { DiskFormat, ImageService, ImageStatus } from "../../src/gen/imagetransfer/v1/image_pb.js";
import { TaskService } from "../../src/gen/imagetransfer/v1/task_pb.js";
import { createGrpcJsClients, serverStream, statusOf, unary, type GrpcJsClients } from "../helpers/grpc-js-client.js";
import { startTestService, type TestService } from "../helpers/service.js";

const run = promisify(execFile);
const buf = fileURLToPath(new URL("../../node_modules/.bin/buf", import.meta.url));

/** Stack frames ("    at fn (file:line:col)") or source paths must never reach a client. */
function expectNoInternals(body: string): void {
  expect(body).not.toMatch(/\n\s*at\s/);
  expect(body).not.toMatch(/\bat [^\s]+ \(/);
  expect(body).not.toMatch(/\.(ts|js|mjs):\d+/);
  expect(body).not.toMatch(/\/work\/|node_modules|file:\/\/|src\//);
}

/** Every object key of a JSON value, except inside user-supplied maps named `properties`. */
function jsonKeys(value: unknown): string[] {
  if (Array.isArray(value)) return value.flatMap(jsonKeys);
  if (value === null || typeof value !== "object") return [];
  return Object.entries(value).flatMap(([key, v]) => [key, ...(key === "properties" ? [] : jsonKeys(v))]);
}

/** An http.Agent that counts the TCP connections it opens. */
class CountingAgent extends http.Agent {
  connections = 0;
  override createConnection(...args: Parameters<http.Agent["createConnection"]>): ReturnType<http.Agent["createConnection"]> {
    this.connections++;
    return super.createConnection(...args);
  }
}

let server: TestService;
let target: string;

beforeAll(async () => {
  server = await startTestService();
  target = new URL(server.url).host;
});

afterAll(async () => {
  await server?.stop();
});

describe("Connect JSON over HTTP/1.1 with plain fetch", () => {
  const post = (path: string, body: unknown, headers: Record<string, string> = {}) =>
    fetch(`${server.url}${path}`, {
      method: "POST",
      headers: { "content-type": "application/json", ...headers },
      body: typeof body === "string" ? body : JSON.stringify(body),
    });

  it("creates and lists images with lowerCamelCase JSON", async () => {
    const name = `fetch-${randomUUID()}`;
    const created = await post("/imagetransfer.v1.ImageService/CreateImage", {
      name,
      diskFormat: "DISK_FORMAT_QCOW2",
      containerFormat: "CONTAINER_FORMAT_BARE",
      properties: { os_distro: "debian", "hw.firmware": "uefi" },
    });
    expect(created.status).toBe(200);
    expect(created.headers.get("content-type")).toMatch(/^application\/json/);
    const body = (await created.json()) as { image: Record<string, unknown> };
    const image = body.image;
    expect(image.id).toMatch(/^[0-9a-f-]{36}$/);
    expect(image.name).toBe(name);
    expect(image.owner).toBe("default");
    expect(image.status).toBe("IMAGE_STATUS_QUEUED");
    expect(image.diskFormat).toBe("DISK_FORMAT_QCOW2");
    expect(image.containerFormat).toBe("CONTAINER_FORMAT_BARE");
    // Property keys are the user's own and are not renamed.
    expect(image.properties).toEqual({ os_distro: "debian", "hw.firmware": "uefi" });
    // Timestamps are RFC 3339 strings in JSON.
    expect(typeof image.createTime).toBe("string");
    expect(Date.parse(image.createTime as string)).toBeGreaterThan(Date.now() - 60_000);
    const keys = jsonKeys(body);
    expect(keys).toContain("createTime");
    expect(keys.filter((k) => k.includes("_"))).toEqual([]);

    const listed = await post("/imagetransfer.v1.ImageService/ListImages", { pageSize: 10, name });
    expect(listed.status).toBe(200);
    const list = (await listed.json()) as { images: Array<Record<string, unknown>>; nextPageToken?: string };
    expect(list.images.map((i) => i.id)).toEqual([image.id]);
    expect(list.images[0]?.diskFormat).toBe("DISK_FORMAT_QCOW2");
    // Proto3 JSON leaves out an empty next_page_token; it must never show up as next_page_token.
    expect(list.nextPageToken ?? "").toBe("");
    expect(jsonKeys(list).filter((k) => k.includes("_"))).toEqual([]);
  });

  it("accepts the proto field names as well (snake_case input)", async () => {
    const res = await post("/imagetransfer.v1.ImageService/CreateImage", { name: "snake", disk_format: "DISK_FORMAT_RAW" });
    expect(res.status).toBe(200);
    const { image } = (await res.json()) as { image: Record<string, unknown> };
    expect(image.diskFormat).toBe("DISK_FORMAT_RAW");
  });

  it("a malformed id is HTTP 400 invalid_argument without internals", async () => {
    const res = await post("/imagetransfer.v1.ImageService/GetImage", { id: "not-a-uuid" });
    expect(res.status).toBe(400);
    expect(res.headers.get("content-type")).toMatch(/^application\/json/);
    const text = await res.text();
    const error = JSON.parse(text) as { code: string; message: string };
    expect(error.code).toBe("invalid_argument");
    expect(error.message).toMatch(/id must be a UUID/);
    expectNoInternals(text);
  });

  it("an unknown image is HTTP 404 not_found", async () => {
    const id = randomUUID();
    const res = await post("/imagetransfer.v1.ImageService/GetImage", { id });
    expect(res.status).toBe(404);
    const text = await res.text();
    expect(JSON.parse(text)).toMatchObject({ code: "not_found", message: `image ${id} not found` });
    expectNoInternals(text);
  });

  it("a body that is not JSON is HTTP 400 without internals", async () => {
    const res = await post("/imagetransfer.v1.ImageService/CreateImage", "{not json");
    expect(res.status).toBe(400);
    const text = await res.text();
    expect((JSON.parse(text) as { code: string }).code).toBe("invalid_argument");
    expectNoInternals(text);
  });

  it("unknown paths are HTTP 404", async () => {
    const unknownMethod = await post("/imagetransfer.v1.ImageService/StealImage", {});
    expect(unknownMethod.status).toBe(404);
    expectNoInternals(await unknownMethod.text());
    const unknownService = await post("/imagetransfer.v1.NoService/Get", {});
    expect(unknownService.status).toBe(404);
    expectNoInternals(await unknownService.text());
    const root = await fetch(`${server.url}/no/such/path`);
    expect(root.status).toBe(404);
    expectNoInternals(await root.text());
  });

  it("a JSON body over 4 MiB is HTTP 429 resource_exhausted, and the server keeps serving", async () => {
    const chunk = "z".repeat(1024 * 1024);
    const properties = Object.fromEntries(Array.from({ length: 5 }, (_, i) => [`blob${i}`, chunk]));
    const res = await post("/imagetransfer.v1.ImageService/CreateImage", { name: "huge-json", properties });
    expect(res.status).toBe(429);
    const text = await res.text();
    expect((JSON.parse(text) as { code: string }).code).toBe("resource_exhausted");
    expectNoInternals(text);

    const after = await post("/imagetransfer.v1.ImageService/ListImages", { name: "huge-json" });
    expect(after.status).toBe(200);
    expect(((await after.json()) as { images?: unknown[] }).images ?? []).toEqual([]);
  });

  it("TransferService answers in JSON too: an upload URL with its seed URI, and a refused seed URI as 400", async () => {
    const res = await post("/imagetransfer.v1.TransferService/CreateUploadUrl", {});
    expect(res.status).toBe(200);
    const body = (await res.json()) as { url: string; method: string; seedUri: string };
    expect(body).toMatchObject({ method: "PUT", seedUri: expect.stringMatching(/^file:\/\/local\/uploads\//) });
    expect(body.url).toContain("/v1/data/local/uploads/");
    const refused = await post("/imagetransfer.v1.TransferService/ImportImage", { seedUri: "/etc/passwd" });
    expect(refused.status).toBe(400);
    const text = await refused.text();
    expect((JSON.parse(text) as { code: string }).code).toBe("invalid_argument");
    expectNoInternals(text);
  });
});

const connectTransports: Array<[string, () => Transport]> = [
  ["gRPC over HTTP/2", () => createGrpcTransport({ baseUrl: server.url })],
  ["Connect binary over HTTP/1.1", () => createConnectTransport({ baseUrl: server.url, httpVersion: "1.1", useBinaryFormat: true })],
  ["gRPC-Web over HTTP/1.1", () => createGrpcWebTransport({ baseUrl: server.url, httpVersion: "1.1" })],
];

describe.each(connectTransports)("generated Connect client, %s", (_label, makeTransport) => {
  let images: Client<typeof ImageService>;
  let tasks: Client<typeof TaskService>;

  beforeAll(() => {
    const transport = makeTransport();
    images = createClient(ImageService, transport);
    tasks = createClient(TaskService, transport);
  });

  it("creates, gets, lists, updates with a field mask and deletes an image", async () => {
    const name = `connect-${randomUUID()}`;
    const { image: created } = await images.createImage({
      name,
      diskFormat: DiskFormat.VMDK,
      properties: { os_type: "linux", owner_team: "infra" },
    });
    expect(created?.id).toMatch(/^[0-9a-f-]{36}$/);
    expect(created?.status).toBe(ImageStatus.QUEUED);
    expect(created?.diskFormat).toBe(DiskFormat.VMDK);
    expect(created?.createTime?.seconds).toBeGreaterThan(0n);
    const id = created!.id;

    const { image: got } = await images.getImage({ id });
    expect(got?.name).toBe(name);
    expect(got?.properties).toEqual({ os_type: "linux", owner_team: "infra" });

    const listed = await images.listImages({ name });
    expect(listed.images.map((i) => i.id)).toEqual([id]);
    expect(listed.nextPageToken).toBe("");

    // Only the masked field changes: the new properties in the request are ignored.
    const { image: updated } = await images.updateImage({
      image: { id, name: `${name}-renamed`, properties: { ignored: "yes" } },
      updateMask: { paths: ["name"] },
    });
    expect(updated?.name).toBe(`${name}-renamed`);
    expect(updated?.properties).toEqual({ os_type: "linux", owner_team: "infra" });
    expect((await images.getImage({ id })).image?.name).toBe(`${name}-renamed`);

    const { image: reformatted } = await images.updateImage({
      image: { id, diskFormat: DiskFormat.QCOW2, properties: { os_type: "windows" } },
      updateMask: { paths: ["disk_format", "properties"] },
    });
    expect(reformatted?.diskFormat).toBe(DiskFormat.QCOW2);
    expect(reformatted?.properties).toEqual({ os_type: "windows" });
    expect(reformatted?.name).toBe(`${name}-renamed`);

    const badMask = await images
      .updateImage({ image: { id, owner: "someone-else" }, updateMask: { paths: ["owner"] } })
      .catch((err: unknown) => ConnectError.from(err));
    expect(badMask).toBeInstanceOf(ConnectError);
    expect((badMask as ConnectError).code).toBe(Code.InvalidArgument);

    const { image: deleted } = await images.deleteImage({ id });
    expect(deleted?.status).toBe(ImageStatus.DELETED);
    const afterDelete = await images.getImage({ id }).catch((err: unknown) => ConnectError.from(err));
    expect(afterDelete).toBeInstanceOf(ConnectError);
    expect((afterDelete as ConnectError).code).toBe(Code.NotFound);
    expect((await images.listImages({ name: `${name}-renamed` })).images).toEqual([]);
  });

  it("a malformed id is InvalidArgument", async () => {
    const err = await images.getImage({ id: "../../etc/passwd" }).catch((e: unknown) => ConnectError.from(e));
    expect(err).toBeInstanceOf(ConnectError);
    expect((err as ConnectError).code).toBe(Code.InvalidArgument);
    expectNoInternals((err as ConnectError).rawMessage);
  });

  it("WatchTask on a missing task is NotFound", async () => {
    const id = randomUUID();
    const received: unknown[] = [];
    const err = await (async () => {
      for await (const message of tasks.watchTask({ id })) received.push(message);
    })().catch((e: unknown) => ConnectError.from(e));
    expect(err).toBeInstanceOf(ConnectError);
    expect((err as ConnectError).code).toBe(Code.NotFound);
    expect((err as ConnectError).rawMessage).toBe(`task ${id} not found`);
    expect(received).toEqual([]);
  });
});

describe("stock grpc-js client from the .proto files", () => {
  let clients: GrpcJsClients;

  beforeAll(() => {
    clients = createGrpcJsClients(target, grpc.credentials.createInsecure(), {
      "grpc.max_send_message_length": 64 * 1024 * 1024,
    });
  });

  afterAll(() => clients?.close());

  it("creates and gets an image", async () => {
    const name = `grpcjs-${randomUUID()}`;
    const { image } = await unary<{ image: Record<string, unknown> }>(clients.image, "createImage", {
      name,
      diskFormat: "DISK_FORMAT_ISO",
      properties: { boot: "cdrom" },
    });
    expect(image.name).toBe(name);
    expect(image.status).toBe("IMAGE_STATUS_QUEUED");
    expect(image.diskFormat).toBe("DISK_FORMAT_ISO");
    expect(image.containerFormat).toBe("CONTAINER_FORMAT_UNSPECIFIED");
    expect(image.properties).toEqual({ boot: "cdrom" });
    // uint64 arrives as a string with longs: String.
    expect(image.size).toBe("0");
    expect(Number((image.createTime as { seconds: string }).seconds)).toBeGreaterThan(0);

    const got = await unary<{ image: Record<string, unknown> }>(clients.image, "getImage", { id: image.id });
    expect(got.image).toEqual(image);
  });

  it("pages through ListImages with next_page_token and sees every image exactly once", async () => {
    const name = `paging-${randomUUID()}`;
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) {
      const { image } = await unary<{ image: { id: string } }>(clients.image, "createImage", { name, properties: { n: String(i) } });
      ids.push(image.id);
    }
    const seen: string[] = [];
    const pageSizes: number[] = [];
    let pageToken = "";
    do {
      const page = await unary<{ images: Array<{ id: string }>; nextPageToken: string }>(clients.image, "listImages", {
        pageSize: 2,
        pageToken,
        name,
      });
      pageSizes.push(page.images.length);
      seen.push(...page.images.map((i) => i.id));
      pageToken = page.nextPageToken;
      expect(pageSizes.length).toBeLessThan(10);
    } while (pageToken !== "");
    expect(pageSizes).toEqual([2, 2, 1]);
    // Creation order, each once.
    expect(seen).toEqual(ids);
  });

  it("errors arrive as gRPC status codes", async () => {
    const missing = await statusOf(unary(clients.image, "getImage", { id: randomUUID() }));
    expect(missing.code).toBe(grpc.status.NOT_FOUND);
    expect(missing.details).toMatch(/^image [0-9a-f-]{36} not found$/);

    const malformed = await statusOf(unary(clients.image, "getImage", { id: "nope" }));
    expect(malformed.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(malformed.details).toMatch(/UUID/);
    expectNoInternals(malformed.details);

    const tooBig = await statusOf(unary(clients.image, "listImages", { pageSize: 5000 }));
    expect(tooBig.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(tooBig.details).toMatch(/page_size/);

    const garbage = await statusOf(unary(clients.image, "listImages", { pageToken: "%%% not a token %%%" }));
    expect(garbage.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(garbage.details).toMatch(/page_token/);

    const wrongFilter = await statusOf(
      unary(clients.image, "listImages", {
        pageToken: Buffer.from(JSON.stringify({ t: 1, i: randomUUID(), f: "forged" })).toString("base64url"),
      }),
    );
    expect(wrongFilter.code).toBe(grpc.status.INVALID_ARGUMENT);

    const hostPath = await statusOf(unary(clients.transfer, "importImage", { seedUri: "file:///etc/passwd" }));
    expect(hostPath.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(hostPath.details).toMatch(/must name a store/);
    const noImage = await statusOf(unary(clients.transfer, "exportImage", { imageId: randomUUID(), diskFormat: "DISK_FORMAT_VMDK" }));
    expect(noImage.code).toBe(grpc.status.NOT_FOUND);
  });

  it("a server stream on a missing task ends with NOT_FOUND", async () => {
    const id = randomUUID();
    const outcome = await serverStream(clients.task, "watchTask", { id });
    expect(outcome.messages).toEqual([]);
    expect(outcome.status.code).toBe(grpc.status.NOT_FOUND);
    expect(outcome.error?.code).toBe(grpc.status.NOT_FOUND);
    expect(outcome.status.details).toBe(`task ${id} not found`);

    const malformed = await serverStream(clients.task, "watchTask", { id: "x" });
    expect(malformed.status.code).toBe(grpc.status.INVALID_ARGUMENT);
  });

  it("Health/Check answers SERVING for the server and the API, NOT_FOUND for others", async () => {
    expect(await unary(clients.health, "check", { service: "" })).toEqual({ status: "SERVING" });
    expect(await unary(clients.health, "check", { service: "imagetransfer.v1.ImageService" })).toEqual({ status: "SERVING" });
    expect(await unary(clients.health, "check", { service: "imagetransfer.v1.TaskService" })).toEqual({ status: "SERVING" });
    const unknown = await statusOf(unary(clients.health, "check", { service: "imagetransfer.v1.NoSuchService" }));
    expect(unknown.code).toBe(grpc.status.NOT_FOUND);
  });

  it("a request over 4 MiB is RESOURCE_EXHAUSTED and the server keeps serving", async () => {
    const chunk = "x".repeat(1024 * 1024);
    const properties = Object.fromEntries(Array.from({ length: 5 }, (_, i) => [`blob${i}`, chunk]));
    const err = await statusOf(unary(clients.image, "createImage", { name: "huge", properties }));
    expect(err.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    expectNoInternals(err.details);

    // The same channel (and connection) still works, and so does a fresh one.
    const { image } = await unary<{ image: { id: string; name: string } }>(clients.image, "createImage", { name: "after-huge" });
    expect(image.name).toBe("after-huge");
    const fresh = createGrpcJsClients(target);
    try {
      const got = await unary<{ image: { id: string } }>(fresh.image, "getImage", { id: image.id });
      expect(got.image.id).toBe(image.id);
    } finally {
      fresh.close();
    }
    // Nothing of the rejected request was stored.
    const { images } = await unary<{ images: unknown[] }>(clients.image, "listImages", { name: "huge" });
    expect(images).toEqual([]);
  });

  it("a large request within the API limits is accepted", async () => {
    // 128 properties of 4 KiB is the most the API allows: about 0.5 MiB, well inside 4 MiB.
    const value = "y".repeat(4096);
    const properties = Object.fromEntries(Array.from({ length: 128 }, (_, i) => [`p${i}`, value]));
    const { image } = await unary<{ image: { properties: Record<string, string> } }>(clients.image, "createImage", {
      name: "big-but-fine",
      properties,
    });
    expect(Object.keys(image.properties)).toHaveLength(128);
  });
});

describe("server reflection through buf curl, without .proto files", () => {
  it("lists every method", async () => {
    const { stdout } = await run(buf, ["curl", "--protocol", "grpc", "--http2-prior-knowledge", "--list-methods", server.url], {
      timeout: 60_000,
    });
    const methods = stdout.trim().split("\n");
    expect(methods).toContain("imagetransfer.v1.TaskService/WatchTask");
    expect(methods).toContain("imagetransfer.v1.ImageService/CreateImage");
    expect(methods).toContain("imagetransfer.v1.AdminService/ListStores");
    expect(methods).toContain("imagetransfer.v1.TransferService/UploadImageData");
    expect(methods).toContain("grpc.health.v1.Health/Check");
  });

  it("calls AdminService/ListStores and prints JSON naming the local store", async () => {
    const { stdout } = await run(
      buf,
      ["curl", "--protocol", "grpc", "--http2-prior-knowledge", "-d", "{}", `${server.url}/imagetransfer.v1.AdminService/ListStores`],
      { timeout: 60_000 },
    );
    const body = JSON.parse(stdout) as { stores: Array<{ name: string; plugin: string; isDefault?: boolean; available?: boolean }> };
    const local = body.stores.find((s) => s.name === "local");
    expect(local).toMatchObject({ name: "local", plugin: "@imagetransfer/store-filesystem", isDefault: true, available: true });
  });

  it("calls ImageService/CreateImage with a JSON body and reports errors with their code", async () => {
    const { stdout } = await run(
      buf,
      [
        "curl",
        "--protocol",
        "grpc",
        "--http2-prior-knowledge",
        "-d",
        '{"name":"from-buf-curl","diskFormat":"DISK_FORMAT_RAW"}',
        `${server.url}/imagetransfer.v1.ImageService/CreateImage`,
      ],
      { timeout: 60_000 },
    );
    const { image } = JSON.parse(stdout) as { image: { name: string; diskFormat: string } };
    expect(image).toMatchObject({ name: "from-buf-curl", diskFormat: "DISK_FORMAT_RAW" });

    const failed = await run(
      buf,
      ["curl", "--protocol", "grpc", "--http2-prior-knowledge", "-d", '{"id":"nope"}', `${server.url}/imagetransfer.v1.ImageService/GetImage`],
      { timeout: 60_000 },
    ).then(
      () => undefined,
      (err: { stdout: string; stderr: string }) => err,
    );
    expect(failed).toBeDefined();
    expect(`${failed?.stdout}${failed?.stderr}`).toMatch(/invalid_argument/);
  });
});

describe("many calls at once", () => {
  let ids: string[];

  beforeAll(async () => {
    const images = createClient(ImageService, createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" }));
    ids = [];
    for (let i = 0; i < 5; i++) ids.push((await images.createImage({ name: `concurrent-${i}` })).image!.id);
  });

  it("50 concurrent GetImage calls share one HTTP/2 connection (Connect gRPC client)", async () => {
    let connections = 0;
    const transport = createGrpcTransport({
      baseUrl: server.url,
      nodeOptions: {
        createConnection: (authority: URL) => {
          connections++;
          return net.connect({ host: authority.hostname, port: Number(authority.port) });
        },
      },
    });
    const images = createClient(ImageService, transport);
    const results = await Promise.all(Array.from({ length: 50 }, (_, i) => images.getImage({ id: ids[i % ids.length]! })));
    expect(results.map((r) => r.image?.id)).toEqual(Array.from({ length: 50 }, (_, i) => ids[i % ids.length]));
    expect(connections).toBe(1);
    // A second burst still rides the same connection.
    await Promise.all(Array.from({ length: 50 }, () => images.listImages({ pageSize: 1 })));
    expect(connections).toBe(1);
  });

  it("50 concurrent GetImage calls on one grpc-js channel", async () => {
    const clients = createGrpcJsClients(target);
    try {
      const results = await Promise.all(
        Array.from({ length: 50 }, (_, i) => unary<{ image: { id: string } }>(clients.image, "getImage", { id: ids[i % ids.length] })),
      );
      expect(results.map((r) => r.image.id)).toEqual(Array.from({ length: 50 }, (_, i) => ids[i % ids.length]));
    } finally {
      clients.close();
    }
  });

  it("concurrent HTTP/1.1 requests reuse keep-alive connections (Connect client)", async () => {
    const agent = new CountingAgent({ keepAlive: true, maxSockets: 4 });
    try {
      const images = createClient(
        ImageService,
        createConnectTransport({ baseUrl: server.url, httpVersion: "1.1", nodeOptions: { agent } }),
      );
      const results = await Promise.all(Array.from({ length: 20 }, (_, i) => images.getImage({ id: ids[i % ids.length]! })));
      expect(results.map((r) => r.image?.id)).toEqual(Array.from({ length: 20 }, (_, i) => ids[i % ids.length]));
      expect(agent.connections).toBeGreaterThanOrEqual(1);
      expect(agent.connections).toBeLessThanOrEqual(4);
      const opened = agent.connections;
      for (let i = 0; i < 5; i++) await images.getImage({ id: ids[0]! });
      // Sequential calls after the burst open no new connection: the server kept them alive.
      expect(agent.connections).toBe(opened);
    } finally {
      agent.destroy();
    }
  });

  it("concurrent HTTP/1.1 requests with plain fetch", async () => {
    const responses = await Promise.all(
      Array.from({ length: 20 }, (_, i) =>
        fetch(`${server.url}/imagetransfer.v1.ImageService/GetImage`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ id: ids[i % ids.length] }),
        }).then(async (res) => ({ status: res.status, body: (await res.json()) as { image: { id: string } } })),
      ),
    );
    expect(responses.map((r) => r.status)).toEqual(Array(20).fill(200));
    expect(responses.map((r) => r.body.image.id)).toEqual(Array.from({ length: 20 }, (_, i) => ids[i % ids.length]));
  });

  it("HTTP/1.1 and HTTP/2 clients at the same time on the one port", async () => {
    const h2 = createClient(ImageService, createGrpcTransport({ baseUrl: server.url }));
    const h1 = createClient(ImageService, createGrpcWebTransport({ baseUrl: server.url, httpVersion: "1.1" }));
    const grpcJs = createGrpcJsClients(target);
    try {
      const results = await Promise.all(
        Array.from({ length: 30 }, (_, i) => {
          const id = ids[i % ids.length]!;
          if (i % 3 === 0) return h2.getImage({ id }).then((r) => r.image?.id);
          if (i % 3 === 1) return h1.getImage({ id }).then((r) => r.image?.id);
          return unary<{ image: { id: string } }>(grpcJs.image, "getImage", { id }).then((r) => r.image.id);
        }),
      );
      expect(results).toEqual(Array.from({ length: 30 }, (_, i) => ids[i % ids.length]));
    } finally {
      grpcJs.close();
    }
  });
});

describe("shutdown with idle client connections", () => {
  // The listener promises that idle connections go at once on close and only busy ones
  // get the 2 s grace period, so a restart is not held up by clients merely connected.

  it("an idle HTTP/2 connection does not hold up stop()", async () => {
    const own = await startTestService();
    const images = createClient(ImageService, createGrpcTransport({ baseUrl: own.url }));
    await images.listImages({});
    const started = performance.now();
    await own.stop();
    expect(performance.now() - started).toBeLessThan(1_000);
  });

  it("an idle HTTP/1.1 keep-alive connection does not hold up stop()", async () => {
    const own = await startTestService();
    const agent = new http.Agent({ keepAlive: true });
    let stopped = false;
    try {
      let clientSocketClosedAt: number | undefined;
      await new Promise<void>((resolve, reject) => {
        const req = http.request(
          `${own.url}/imagetransfer.v1.ImageService/ListImages`,
          { method: "POST", agent, headers: { "content-type": "application/json" } },
          (res) => {
            expect(res.statusCode).toBe(200);
            res.resume();
            res.on("end", resolve);
          },
        );
        req.on("socket", (socket) => socket.once("close", () => (clientSocketClosedAt = performance.now())));
        req.on("error", reject);
        req.end("{}");
      });
      // The connection now sits idle in the agent's pool.
      expect(clientSocketClosedAt).toBeUndefined();
      const started = performance.now();
      await own.stop();
      stopped = true;
      const elapsed = performance.now() - started;
      expect(clientSocketClosedAt).toBeDefined();
      expect(elapsed).toBeLessThan(1_000);
    } finally {
      agent.destroy();
      if (!stopped) await own.stop();
    }
  });
});

describe("TLS", () => {
  let tlsServer: TestService;
  let certDir: string;
  let cert: Buffer;
  let tlsTarget: string;

  beforeAll(async () => {
    certDir = await mkdtemp(join(tmpdir(), "itx-tls-"));
    const certPath = join(certDir, "cert.pem");
    const keyPath = join(certDir, "key.pem");
    await run(
      "openssl",
      [
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=127.0.0.1",
        "-addext",
        "subjectAltName=IP:127.0.0.1",
        "-keyout",
        keyPath,
        "-out",
        certPath,
      ],
      { timeout: 60_000 },
    );
    cert = await readFile(certPath);
    tlsServer = await startTestService({ tls: { cert: certPath, key: keyPath } });
    tlsTarget = new URL(tlsServer.url).host;
  });

  afterAll(async () => {
    await tlsServer?.stop();
    if (certDir) await rm(certDir, { recursive: true, force: true });
  });

  it("listens on https", () => {
    expect(tlsServer.url).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
  });

  it("grpc-js with createSsl(ca) works", async () => {
    const clients = createGrpcJsClients(tlsTarget, grpc.credentials.createSsl(cert));
    try {
      const { image } = await unary<{ image: { id: string; name: string } }>(clients.image, "createImage", { name: "over-tls" });
      expect(image.name).toBe("over-tls");
      const got = await unary<{ image: { id: string } }>(clients.image, "getImage", { id: image.id });
      expect(got.image.id).toBe(image.id);
      expect(await unary(clients.health, "check", { service: "" })).toEqual({ status: "SERVING" });
      const watch = await serverStream(clients.task, "watchTask", { id: randomUUID() });
      expect(watch.status.code).toBe(grpc.status.NOT_FOUND);
    } finally {
      clients.close();
    }
  });

  it("a Connect HTTP/1.1 client with the CA works", async () => {
    const images = createClient(
      ImageService,
      createConnectTransport({ baseUrl: tlsServer.url, httpVersion: "1.1", nodeOptions: { ca: cert } }),
    );
    const { image } = await images.createImage({ name: "connect-over-tls" });
    expect((await images.getImage({ id: image!.id })).image?.name).toBe("connect-over-tls");
    const admin = createClient(
      AdminService,
      createConnectTransport({ baseUrl: tlsServer.url, httpVersion: "1.1", useBinaryFormat: false, nodeOptions: { ca: cert } }),
    );
    expect((await admin.listStores({})).stores.map((s) => s.name)).toContain("local");
  });

  it("a Connect gRPC client over HTTP/2 (ALPN h2) with the CA works", async () => {
    const images = createClient(ImageService, createGrpcTransport({ baseUrl: tlsServer.url, nodeOptions: { ca: cert } }));
    const { image } = await images.createImage({ name: "h2-over-tls" });
    expect(image?.name).toBe("h2-over-tls");
  });

  it("gRPC-Web over HTTP/1.1 with the CA works", async () => {
    const images = createClient(
      ImageService,
      createGrpcWebTransport({ baseUrl: tlsServer.url, httpVersion: "1.1", nodeOptions: { ca: cert } }),
    );
    const listed = await images.listImages({ name: "over-tls" });
    expect(listed.images.map((i) => i.name)).toEqual(["over-tls"]);
  });

  it("clients that do not trust the certificate are refused", async () => {
    const images = createClient(ImageService, createConnectTransport({ baseUrl: tlsServer.url, httpVersion: "1.1" }));
    const err = await images.listImages({}).catch((e: unknown) => ConnectError.from(e));
    expect(err).toBeInstanceOf(ConnectError);
    expect((err as ConnectError).rawMessage).toMatch(/self-signed certificate/);

    const clients = createGrpcJsClients(tlsTarget, grpc.credentials.createSsl());
    try {
      const status = await statusOf(unary(clients.image, "listImages", {}, { deadline: Date.now() + 5_000 }));
      expect(status.code).toBe(grpc.status.UNAVAILABLE);
    } finally {
      clients.close();
    }
  });

  it("plain http to the TLS port fails", async () => {
    const httpUrl = tlsServer.url.replace(/^https:/, "http:");
    // The TLS listener hangs up on a client that does not start a TLS handshake.
    const plain = fetch(`${httpUrl}/imagetransfer.v1.ImageService/ListImages`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: "{}",
      signal: AbortSignal.timeout(10_000),
    });
    await expect(plain).rejects.toThrow(/fetch failed/);

    const insecure = createGrpcJsClients(tlsTarget, grpc.credentials.createInsecure());
    try {
      const status = await statusOf(unary(insecure.image, "listImages", {}, { deadline: Date.now() + 5_000 }));
      expect(status.code).toBe(grpc.status.UNAVAILABLE);
    } finally {
      insecure.close();
    }
  });

  it("the TLS server keeps serving after the failed attempts", async () => {
    const images = createClient(
      ImageService,
      createConnectTransport({ baseUrl: tlsServer.url, httpVersion: "1.1", nodeOptions: { ca: cert } }),
    );
    expect((await images.listImages({ name: "over-tls" })).images).toHaveLength(1);
  });
});
