/**
 * Web downloads against a real HTTP server (node:http on loopback): the store-http plugin
 * on its own, then ImportImage through a real service. Loopback is exactly what a web
 * download must refuse by default, so the server doubles as the forbidden destination;
 * the tests that fetch from it allow it with allowCidrs, as an operator would.
 */
import { randomBytes } from "node:crypto";
import { createReadStream } from "node:fs";
import * as fs from "node:fs/promises";
import http from "node:http";
import net, { type AddressInfo, type Socket } from "node:net";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { buffer as readAll } from "node:stream/consumers";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import definition from "../../plugins/store-http/index.js";
import { AdminService } from "../../src/gen/imagetransfer/v1/admin_pb.js";
import { DiskFormat, ImageService, ImageStatus } from "../../src/gen/imagetransfer/v1/image_pb.js";
import { TaskState } from "../../src/gen/imagetransfer/v1/task_pb.js";
import { TransferService } from "../../src/gen/imagetransfer/v1/transfer_pb.js";
import { isStoreError, type StoreErrorKind, type StoreInstance } from "../../src/plugins/plugin-api.js";
import { buildImage, buildSourceRaw, hashFile, MiB } from "../helpers/disk-images.js";
import { registerPlugin } from "../helpers/register-plugin.js";
import { startTestService, type TestService } from "../helpers/service.js";
import { watchToEnd } from "../helpers/transfer.js";

/** A small web server with the misbehaviours the tests need; it records every request path. */
class TestWebServer {
  readonly requests: string[] = [];
  private readonly server: http.Server;
  private readonly sockets = new Set<Socket>();
  port = 0;

  constructor(
    private readonly host: string,
    private readonly dir: string,
  ) {
    this.server = http.createServer((req, res) => this.handle(req, res));
    this.server.on("connection", (socket) => {
      this.sockets.add(socket);
      socket.on("close", () => this.sockets.delete(socket));
    });
  }

  async start(port = 0): Promise<this> {
    await new Promise<void>((resolve) => this.server.listen(port, this.host, resolve));
    this.port = (this.server.address() as AddressInfo).port;
    return this;
  }

  url(pathname: string): string {
    return `http://${this.host}:${this.port}${pathname}`;
  }

  async stop(): Promise<void> {
    for (const socket of this.sockets) socket.destroy();
    await new Promise((resolve) => this.server.close(resolve));
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const url = new URL(req.url ?? "/", "http://server");
    this.requests.push(url.pathname);
    const [, route, arg] = url.pathname.split("/") as [string, string, string | undefined];
    switch (route) {
      case "files": // a file, honouring one Range
      case "plain": // a file, ignoring Range as some servers do
        return this.sendFile(req, res, path.join(this.dir, arg ?? ""), route === "files");
      case "hop": {
        // /hop/N: N more redirects, then the data file
        const left = Number(arg);
        res.writeHead(302, { location: left > 0 ? `/hop/${left - 1}` : "/files/data.bin" }).end();
        return;
      }
      case "to":
        res.writeHead(302, { location: url.searchParams.get("url")! }).end();
        return;
      case "short":
        // Promises 1000 bytes, sends 500 and hangs up.
        res.writeHead(200, { "content-length": "1000" });
        res.write(Buffer.alloc(500, 1), () => res.destroy());
        return;
      case "long":
        // Promises 5 bytes and sends more, past the HTTP library.
        req.socket.end("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello, and then some more bytes");
        return;
      case "stall":
        // Answers, sends a little, then goes silent.
        res.writeHead(200, { "content-length": String(MiB) });
        res.write(Buffer.alloc(1000, 1));
        return;
      case "silent":
        return; // never answers
      case "forbidden":
        res.writeHead(403).end("no");
        return;
      default:
        res.writeHead(404).end("not here");
    }
  }

  private async sendFile(req: http.IncomingMessage, res: http.ServerResponse, file: string, ranges: boolean) {
    const size = (await fs.stat(file).catch(() => undefined))?.size;
    if (size === undefined) return void res.writeHead(404).end();
    const range = ranges ? /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? "") : null;
    if (!range) {
      res.writeHead(200, { "content-length": String(size), "last-modified": new Date(0).toUTCString() });
      createReadStream(file).pipe(res);
      return;
    }
    const start = Number(range[1]);
    const end = range[2] === "" ? size - 1 : Math.min(Number(range[2]), size - 1);
    if (start >= size) return void res.writeHead(416, { "content-range": `bytes */${size}` }).end();
    res.writeHead(206, { "content-length": String(end - start + 1), "content-range": `bytes ${start}-${end}/${size}`, "last-modified": new Date(0).toUTCString() });
    createReadStream(file, { start, end }).pipe(res);
  }
}

async function openStore(options: Record<string, unknown>): Promise<StoreInstance> {
  const { stores } = await registerPlugin(definition);
  return stores[0]!.open({ name: "web", region: "local", options, dataDir: tmpdir() });
}

async function storeError(promise: Promise<unknown>, kind: StoreErrorKind, message: RegExp): Promise<Error> {
  const err = await promise.then(
    () => new Error("expected the call to fail"),
    (e: unknown) => e as Error,
  );
  expect(isStoreError(err), String(err)).toBe(true);
  expect({ kind: (err as { kind?: string }).kind, message: err.message }).toEqual({ kind, message: expect.stringMatching(message) });
  return err;
}

let dir: string;
let data: Buffer;
let server: TestWebServer;

beforeAll(async () => {
  dir = await fs.mkdtemp(path.join(tmpdir(), "itx-web-"));
  data = randomBytes(300_000);
  await fs.writeFile(path.join(dir, "data.bin"), data);
  server = await new TestWebServer("127.0.0.1", dir).start();
});

afterAll(async () => {
  await server?.stop();
  await fs.rm(dir, { recursive: true, force: true });
});

describe("the web store against a real HTTP server", () => {
  /** Loopback allowed, as in a test lab; the server's port allowed. */
  const lab = () => openStore({ allowCidrs: ["127.0.0.0/8"], allowedPorts: [server.port], idleTimeoutMs: 2_000 });

  it("refuses loopback by default, before sending a request", async () => {
    const store = await openStore({ allowedPorts: [server.port] });
    const before = server.requests.length;
    await storeError(store.stat(server.url("/files/data.bin")), "permission", /^web download refused: 127\.0\.0\.1 is a loopback address; allow it with allowCidrs$/);
    await storeError(store.read(server.url("/files/data.bin")), "permission", /127\.0\.0\.1 is a loopback address/);
    expect(server.requests.length).toBe(before);
  });

  it("refuses a host name that resolves to loopback at connect time (DNS rebinding), before sending a request", async () => {
    const store = await openStore({ allowedPorts: [server.port] });
    const before = server.requests.length;
    // "localhost" is a name, not an IP: only the connect-time check of what it resolves to can refuse it.
    await storeError(store.read(`http://localhost:${server.port}/files/data.bin`), "permission", /^web download refused: localhost resolves to (127\.0\.0\.1|::1), a loopback address; allow it with allowCidrs$/);
    expect(server.requests.length).toBe(before);
  });

  it("refuses a loopback address in any spelling", async () => {
    const store = await openStore({ allowedPorts: [server.port] });
    for (const host of ["2130706433", "0x7f.1", "0177.0.0.1", "127.1", "[::ffff:127.0.0.1]"]) {
      await storeError(store.stat(`http://${host}:${server.port}/files/data.bin`), "permission", /loopback address/);
    }
  });

  it("fetches from loopback when allowCidrs allows it: stat, whole reads and ranged reads", async () => {
    const store = await lab();
    expect(await store.stat(server.url("/files/data.bin"))).toMatchObject({ size: data.length, modifiedTime: new Date(0) });
    expect((await readAll(await store.read(server.url("/files/data.bin")))).equals(data)).toBe(true);
    const slice = await readAll(await store.read(server.url("/files/data.bin"), { range: { offset: 1000, length: 5000 } }));
    expect(slice.equals(data.subarray(1000, 6000))).toBe(true);
    const tail = await readAll(await store.read(server.url("/files/data.bin"), { range: { offset: data.length - 10 } }));
    expect(tail.equals(data.subarray(data.length - 10))).toBe(true);
  });

  it("reads ranges from a server that ignores Range, by skipping to them", async () => {
    const store = await lab();
    expect((await store.stat(server.url("/plain/data.bin")))?.size).toBe(data.length);
    const slice = await readAll(await store.read(server.url("/plain/data.bin"), { range: { offset: 70_000, length: 100_000 } }));
    expect(slice.equals(data.subarray(70_000, 170_000))).toBe(true);
  });

  it("answers a missing object as missing and a refusal as permission", async () => {
    const store = await lab();
    expect(await store.stat(server.url("/files/nothing"))).toBeUndefined();
    await storeError(store.read(server.url("/files/nothing")), "not-found", /not found \(404\)/);
    await storeError(store.stat(server.url("/forbidden/x")), "permission", /\/forbidden\/x answered 403 Forbidden/);
  });

  it("refuses a redirect to a forbidden address, checking the target before connecting", async () => {
    const store = await openStore({ allowCidrs: ["127.0.0.0/8"], allowedPorts: [80, server.port] });
    for (const [target, reason] of [
      ["http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local address"],
      [`http://[::1]:${server.port}/files/data.bin`, "::1 is a loopback address"],
      [`http://10.0.0.5:${server.port}/files/data.bin`, "10.0.0.5 is a private address (RFC 1918); allow it with allowCidrs"],
      ["https://example.com:8443/image.raw", "port 8443 is not allowed"],
      ["ftp://example.com/image.raw", 'scheme "ftp" is not allowed'],
      [`http://user:secret@127.0.0.1:${server.port}/files/data.bin`, "the URL carries credentials"],
    ] as const) {
      const err = await storeError(store.read(server.url(`/to?url=${encodeURIComponent(target)}`)), "permission", /^web download refused: /);
      expect(err.message, target).toContain(reason);
      expect(err.message).not.toContain("secret");
    }
  });

  it("checks every redirect's host name on what it resolves to when it connects", async () => {
    // Only 127.0.0.2 is allowed; it redirects to localhost, which resolves to 127.0.0.1 (or ::1).
    const second = await new TestWebServer("127.0.0.2", dir).start();
    try {
      const store = await openStore({ allowCidrs: ["127.0.0.2/32"], allowedPorts: [second.port, server.port] });
      expect((await store.stat(second.url("/files/data.bin")))?.size).toBe(data.length);
      const before = server.requests.length;
      await storeError(
        store.read(second.url(`/to?url=${encodeURIComponent(`http://localhost:${server.port}/files/data.bin`)}`)),
        "permission",
        /localhost resolves to (127\.0\.0\.1|::1), a loopback address/,
      );
      expect(server.requests.length).toBe(before);
    } finally {
      await second.stop();
    }
  });

  it("follows at most maxRedirects redirects (5 by default)", async () => {
    const store = await lab();
    // /hop/4 redirects five times in all, /hop/5 six times.
    expect((await readAll(await store.read(server.url("/hop/4")))).equals(data)).toBe(true);
    await storeError(store.read(server.url("/hop/5")), "permission", /redirects more than 5 times \(maxRedirects\)/);
    const strict = await openStore({ allowCidrs: ["127.0.0.0/8"], allowedPorts: [server.port], maxRedirects: 1 });
    expect((await strict.stat(server.url("/hop/0")))?.size).toBe(data.length);
    await storeError(strict.stat(server.url("/hop/1")), "permission", /redirects more than 1 times/);
  });

  it("refuses credentials in the URL itself", async () => {
    const store = await lab();
    const before = server.requests.length;
    await storeError(store.read(`http://me:pw@127.0.0.1:${server.port}/files/data.bin`), "permission", /carries credentials/);
    expect(server.requests.length).toBe(before);
  });

  it("fails a body shorter than its Content-Length, as a broken connection to resume", async () => {
    const store = await lab();
    const stream = await store.read(server.url("/short/x"));
    await storeError(readAll(stream), "unavailable", /\/short\/x ended after 500 of 1000 bytes \(Content-Length\)/);
  });

  it("fails a body longer than its Content-Length", async () => {
    const store = await lab();
    const stream = await store.read(server.url("/long/x"));
    await storeError(readAll(stream), "invalid", /sent a malformed HTTP response .*longer than its Content-Length/);
  });

  it("gives up on a server that stalls mid-body within the idle timeout", async () => {
    const store = await openStore({ allowCidrs: ["127.0.0.0/8"], allowedPorts: [server.port], idleTimeoutMs: 400 });
    const started = Date.now();
    const stream = await store.read(server.url("/stall/x"));
    await storeError(readAll(stream), "unavailable", /sent nothing for 400 ms/);
    const elapsed = Date.now() - started;
    expect(elapsed).toBeGreaterThanOrEqual(350);
    expect(elapsed).toBeLessThan(2_000);
  });

  it("gives up on a server that never answers within the idle timeout", async () => {
    const store = await openStore({ allowCidrs: ["127.0.0.0/8"], allowedPorts: [server.port], idleTimeoutMs: 400 });
    const started = Date.now();
    await storeError(store.stat(server.url("/silent/x")), "unavailable", /sent nothing for 400 ms/);
    expect(Date.now() - started).toBeLessThan(2_000);
  });

  it("gives up on a connection not made within connectTimeoutMs (a TLS handshake that never ends)", async () => {
    const sockets: Socket[] = [];
    const silent = net.createServer((socket) => void sockets.push(socket));
    await new Promise<void>((resolve) => silent.listen(0, "127.0.0.1", resolve));
    const port = (silent.address() as AddressInfo).port;
    try {
      const store = await openStore({ allowCidrs: ["127.0.0.0/8"], allowedPorts: [port], connectTimeoutMs: 300, idleTimeoutMs: 10_000 });
      const started = Date.now();
      await storeError(store.stat(`https://127.0.0.1:${port}/disk.raw`), "unavailable", new RegExp(`no connection to 127\\.0\\.0\\.1:${port} within 300 ms`));
      expect(Date.now() - started).toBeLessThan(2_000);
    } finally {
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => silent.close(resolve));
    }
  });

  it("never writes, deletes or lists", async () => {
    const store = await lab();
    await storeError(store.write(server.url("/files/new"), (async function* () {})()), "permission", /only reads/);
    await storeError(store.delete(server.url("/files/data.bin")), "permission", /only reads/);
    expect(await store.list()).toEqual({ objects: [] });
  });
});

describe("web-download imports through the service", () => {
  const RAW_BYTES = 4 * MiB;
  let lab: TestService;
  let strict: TestService;
  let rawSha512: string;

  const stores = (webOptions: Record<string, unknown>) => [
    { name: "local", plugin: "store-filesystem", options: { root: "images" }, default: true, staging: true },
    { name: "web", plugin: "store-http", options: webOptions },
  ];

  beforeAll(async () => {
    const raw = await buildSourceRaw(path.join(dir, "disk.raw"), RAW_BYTES);
    await buildImage(raw, "qcow2", path.join(dir, "disk.qcow2"));
    rawSha512 = (await hashFile(raw)).sha512;
    lab = await startTestService({ stores: stores({ allowCidrs: ["127.0.0.0/8"], allowedPorts: [server.port] }) });
    strict = await startTestService({ stores: stores({ allowedPorts: [server.port] }) });
  });

  afterAll(async () => {
    await lab?.stop();
    await strict?.stop();
  });

  const transfer = (service: TestService) => createClient(TransferService, createGrpcTransport({ baseUrl: service.url }));

  it("imports a qcow2 from a web URL into an active raw image in the default store", async () => {
    const seedUri = server.url("/files/disk.qcow2");
    const { task, image } = await transfer(lab).importImage({ seedUri, diskFormat: DiskFormat.QCOW2, name: "from-the-web" });
    const done = await watchToEnd(lab.url, task!.id);
    expect(done.state, JSON.stringify(done.error)).toBe(TaskState.SUCCEEDED);
    const stored = (await createClient(ImageService, createGrpcTransport({ baseUrl: lab.url })).getImage({ id: image!.id })).image!;
    expect(stored).toMatchObject({ status: ImageStatus.ACTIVE, diskFormat: DiskFormat.RAW, size: BigInt(RAW_BYTES), osHashValue: rawSha512 });
    expect(stored.locations.map((l) => [l.store, l.uri])).toEqual([["local", `file://local/images/${image!.id}`]]);
    // The web store is listed as what it is: a read-only store for http and https.
    const { stores: listed } = await createClient(AdminService, createGrpcTransport({ baseUrl: lab.url })).listStores({});
    expect(listed.find((s) => s.name === "web")).toMatchObject({ schemes: ["http", "https"], available: true, capabilities: { write: false, readRanges: true } });
  });

  it("fails the import of a loopback URL by default, naming the rule, and kills the image", async () => {
    const { task, image } = await transfer(strict).importImage({ seedUri: server.url("/files/disk.qcow2"), diskFormat: DiskFormat.QCOW2 });
    const done = await watchToEnd(strict.url, task!.id);
    expect(done.state).toBe(TaskState.FAILED);
    expect(done.error).toMatchObject({ reason: "STORE_PERMISSION", message: expect.stringContaining("web download refused: 127.0.0.1 is a loopback address; allow it with allowCidrs") });
    const killed = (await createClient(ImageService, createGrpcTransport({ baseUrl: strict.url })).getImage({ id: image!.id })).image!;
    expect(killed.status).toBe(ImageStatus.KILLED);
  });

  it("fails an import whose server keeps sending less than its Content-Length", async () => {
    const { task } = await transfer(lab).importImage({ seedUri: server.url("/short/disk.raw"), diskFormat: DiskFormat.RAW });
    const done = await watchToEnd(lab.url, task!.id);
    expect(done.state).toBe(TaskState.FAILED);
    expect(done.error).toMatchObject({ reason: "STORE_UNAVAILABLE", message: expect.stringMatching(/ended after \d+ of \d+ bytes \(Content-Length\)/) });
  });

  it("refuses credentials in a web seed URI at the call, before they are stored with a task", async () => {
    const err = await transfer(lab)
      .importImage({ seedUri: `http://me:secret@127.0.0.1:${server.port}/files/disk.qcow2`, diskFormat: DiskFormat.QCOW2 })
      .then(() => undefined, (e: unknown) => ConnectError.from(e));
    expect(err?.code).toBe(Code.InvalidArgument);
    expect(err?.rawMessage).toMatch(/seed_uri must not carry credentials/);
    expect(err?.rawMessage).not.toMatch(/secret/);
  });

  it("refuses the web store as a destination at the call", async () => {
    const err = await transfer(lab)
      .importImage({ seedUri: server.url("/files/disk.qcow2"), diskFormat: DiskFormat.QCOW2, stores: ["web"] })
      .then(() => undefined, (e: unknown) => ConnectError.from(e));
    expect(err?.code).toBe(Code.FailedPrecondition);
    expect(err?.rawMessage).toMatch(/store "web" only reads/);
  });
});
