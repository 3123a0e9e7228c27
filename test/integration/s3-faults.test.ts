/**
 * store-s3 when the network or the service misbehaves: a small HTTP proxy in front of the
 * real S3 endpoint (Swift's s3api) answers 503 SlowDown, cuts responses short or drops
 * connections on cue, and counts the requests. Reads and stats go through the host's own
 * retry wrapper (src/core/store-retry.ts), as the service runs them, to show that the
 * host's retries and the SDK's do not multiply; writes show the SDK retrying parts. Last, a
 * real server with an S3 store behind the proxy turns the same faults into task outcomes.
 */
import { createHash, randomBytes } from "node:crypto";
import * as fs from "node:fs/promises";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import * as path from "node:path";
import type { Readable } from "node:stream";
import { PutObjectCommand, type S3Client } from "@aws-sdk/client-s3";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import plugin from "../../plugins/store-s3/index.js";
import { withRetries } from "../../src/core/store-retry.js";
import { DiskFormat, ImageService, ImageStatus } from "../../src/gen/imagetransfer/v1/image_pb.js";
import { TaskState } from "../../src/gen/imagetransfer/v1/task_pb.js";
import { TransferService } from "../../src/gen/imagetransfer/v1/transfer_pb.js";
import { isStoreError, type StoreDriver, type StoreInstance } from "../../src/plugins/plugin-api.js";
import { registerPlugin } from "../helpers/register-plugin.js";
import { buildImage, buildSourceRaw, hashFile } from "../helpers/disk-images.js";
import { createBucket, multipartUploads, objectExists, removeBucket, s3Client, s3Endpoint, s3StoreOptions } from "../helpers/s3.js";
import { startTestService } from "../helpers/service.js";
import { uploadFile, watchToEnd } from "../helpers/transfer.js";

const MiB = 1024 * 1024;
/** Quick back-off for tests: the shape of the host's policy, shorter pauses. */
const POLICY = { retries: 5, baseDelayMs: 20, maxDelayMs: 200 };

/** What the proxy does with one request. */
type Fault = "pass" | "slow-down" | "reset" | { cutAfter: number };

interface Seen {
  method: string;
  path: string;
  query: URLSearchParams;
  range?: string;
}

/** Forwards to the S3 endpoint, keeping the Host header the client signed, unless `plan` says otherwise. */
class FaultyProxy {
  readonly seen: Seen[] = [];
  plan: (request: Seen) => Fault = () => "pass";
  private readonly server = http.createServer((req, res) => this.handle(req, res));
  private readonly target = new URL(s3Endpoint().endpoint);

  async start(): Promise<string> {
    await new Promise<void>((resolve) => this.server.listen(0, "127.0.0.1", resolve));
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  stop(): Promise<void> {
    this.server.closeAllConnections();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }

  /** Requests seen for objects under `key` (path-style: /BUCKET/KEY...). */
  requestsFor(key: string): Seen[] {
    return this.seen.filter((s) => s.path.split("/").slice(2).join("/").startsWith(key));
  }

  private handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    const url = new URL(req.url!, "http://proxy");
    const seen: Seen = { method: req.method!, path: decodeURIComponent(url.pathname), query: url.searchParams, range: req.headers.range };
    this.seen.push(seen);
    const fault = this.plan(seen);
    if (fault === "reset") {
      req.socket.destroy();
      return;
    }
    if (fault === "slow-down") {
      req.resume();
      res.writeHead(503, { "content-type": "application/xml" });
      res.end(`<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>`);
      return;
    }
    const upstream = http.request(
      { host: this.target.hostname, port: this.target.port, method: req.method, path: req.url, headers: req.headers },
      (answer) => {
        res.writeHead(answer.statusCode!, answer.headers);
        if (fault === "pass") return void answer.pipe(res);
        let sent = 0;
        answer.on("data", (chunk: Buffer) => {
          if (sent + chunk.length < fault.cutAfter) {
            sent += chunk.length;
            return void res.write(chunk);
          }
          res.write(chunk.subarray(0, fault.cutAfter - sent), () => res.socket?.destroy());
          answer.destroy();
        });
        answer.on("end", () => res.end());
      },
    );
    upstream.on("error", () => res.socket?.destroy());
    req.pipe(upstream);
  }
}

let client: S3Client;
let bucket: string;
let driver: StoreDriver;
let proxy: FaultyProxy;
let proxyUrl: string;
const opened: StoreInstance[] = [];

async function open(options: Record<string, unknown> = {}): Promise<StoreInstance> {
  const store = await driver.open({
    name: "flaky",
    region: "test",
    options: s3StoreOptions(bucket, { endpoint: proxyUrl, partSize: 5 * MiB, ...options }),
    dataDir: tmpdir(),
  });
  opened.push(store);
  return store;
}

/** The store as the service uses it: wrapped in the host's retries and resumable reads. */
async function openAsHost(): Promise<StoreInstance> {
  return withRetries("flaky", await open(), true, POLICY);
}

async function* bytesOf(content: Buffer, chunkSize = MiB): AsyncGenerator<Uint8Array> {
  for (let offset = 0; offset < content.length; offset += chunkSize) yield content.subarray(offset, offset + chunkSize);
}

async function sha256Of(stream: Readable): Promise<string> {
  const hash = createHash("sha256");
  for await (const chunk of stream) hash.update(chunk as Uint8Array);
  return hash.digest("hex");
}

const sha256 = (content: Buffer) => createHash("sha256").update(content).digest("hex");

beforeAll(async () => {
  client = s3Client();
  bucket = await createBucket(client, "itx-s3-faults");
  driver = (await registerPlugin(plugin)).stores[0]!;
  proxy = new FaultyProxy();
  proxyUrl = await proxy.start();
});

afterEach(() => {
  proxy.plan = () => "pass";
});

afterAll(async () => {
  await Promise.all(opened.map((s) => s.close?.()));
  await proxy?.stop();
  if (bucket) await removeBucket(client, bucket);
  client?.destroy();
});

describe("reads and stats, through the host's retries", () => {
  it("a burst of 503 SlowDown is ridden out: one request per host try, no SDK retries beneath", async () => {
    const store = await openAsHost();
    const content = randomBytes(3 * MiB);
    await store.write("burst/object", bytesOf(content));
    let refused = 0;
    proxy.plan = (s) => (s.method === "GET" && refused++ < 3 ? "slow-down" : "pass");
    expect(await sha256Of(await store.read("burst/object"))).toBe(sha256(content));
    expect(proxy.requestsFor("burst/object").filter((s) => s.method === "GET")).toHaveLength(4);
  });

  it("a 503 storm that does not end fails as unavailable after the host's tries, quickly, naming the store and object", async () => {
    const store = await openAsHost();
    proxy.plan = () => "slow-down";
    const before = proxy.requestsFor("storm/").length;
    const started = Date.now();
    const err = await store.stat("storm/object").then(
      () => expect.fail("stat succeeded"),
      (e: unknown) => e,
    );
    expect(isStoreError(err) && err.kind).toBe("unavailable");
    expect((err as Error).message).toMatch(/^store "flaky": cannot stat s3:\/\/flaky\/storm\/object \(bucket "[^"]+"\): the service is unavailable or busy \(HTTP 503\)/);
    expect(proxy.requestsFor("storm/").length - before, "1 try + 5 host retries, each a single request").toBe(6);
    expect(Date.now() - started).toBeLessThan(5_000);
  });

  it("a response cut off mid-way resumes from the last byte it delivered", async () => {
    const store = await openAsHost();
    const content = randomBytes(4 * MiB + 11);
    await store.write("cut/object", bytesOf(content));
    let cuts = 0;
    proxy.plan = (s) => (s.method === "GET" && cuts++ === 0 ? { cutAfter: MiB + 3 } : "pass");
    expect(await sha256Of(await store.read("cut/object"))).toBe(sha256(content));
    const gets = proxy.requestsFor("cut/object").filter((s) => s.method === "GET");
    expect(gets.map((s) => s.range)).toEqual([undefined, `bytes=${MiB + 3}-`]);
  });
});

describe("writes", () => {
  it("a part answered 503 is sent again by the SDK and the object completes", async () => {
    const store = await open();
    const content = randomBytes(12 * MiB);
    let refused = 0;
    proxy.plan = (s) => (s.method === "PUT" && s.query.get("partNumber") === "2" && refused++ === 0 ? "slow-down" : "pass");
    expect((await store.write("retried/object", bytesOf(content))).size).toBe(content.length);
    const parts = proxy.requestsFor("retried/object").filter((s) => s.method === "PUT").map((s) => s.query.get("partNumber"));
    expect(parts.sort()).toEqual(["1", "2", "2", "3"]);
    expect(await sha256Of(await store.read("retried/object"))).toBe(sha256(content));
  });

  it("an endpoint that goes away mid-write fails it as unavailable with nothing visible; its parts are removed later", async () => {
    const store = await open();
    let partsSeen = 0;
    proxy.plan = (s) => {
      if (s.method === "PUT" && s.query.has("partNumber")) partsSeen++;
      return partsSeen >= 2 ? "reset" : "pass";
    };
    const err = await store.write("gone/object", bytesOf(randomBytes(16 * MiB))).then(
      () => expect.fail("the write succeeded"),
      (e: unknown) => e,
    );
    expect(isStoreError(err) && err.kind, String(err)).toBe("unavailable");
    expect((err as Error).message).toMatch(/cannot write s3:\/\/flaky\/gone\/object .*: the connection to the endpoint failed \((ECONNRESET|EPIPE)\)/);
    proxy.plan = () => "pass";
    expect(await store.stat("gone/object")).toBeUndefined();
    // The abort could not reach the endpoint either: the upload waits for the collector.
    expect(await multipartUploads(client, bucket)).toEqual(["gone/object"]);
    expect(await store.removePartialWrites!(new Date(Date.now() + 2_000))).toBe(1);
    expect(await multipartUploads(client, bucket)).toEqual([]);
  });
});

describe("through the service", () => {
  it("an S3 endpoint that goes away mid-import fails the task naming the store; the image is KILLED and nothing is stored", async () => {
    const work = await fs.mkdtemp(path.join(tmpdir(), "itx-s3-faults-"));
    const service = await startTestService({
      stores: [
        { name: "local", plugin: "store-filesystem", options: { root: "images" }, default: true, staging: true },
        { name: "flaky", plugin: "store-s3", options: s3StoreOptions(bucket, { endpoint: proxyUrl, partSize: 5 * MiB }) },
      ],
    });
    try {
      const raw = await buildSourceRaw(path.join(work, "source.raw"), 12 * MiB);
      const qcow2 = await buildImage(raw, "qcow2", path.join(work, "source.qcow2"));
      const transport = createGrpcTransport({ baseUrl: service.url });
      const transfer = createClient(TransferService, transport);

      // A burst of 503s on the seed object is ridden out.
      await client.send(new PutObjectCommand({ Bucket: bucket, Key: "uploads/seed.qcow2", Body: await fs.readFile(qcow2) }));
      let refused = 0;
      proxy.plan = (s) => (s.method === "GET" && refused++ < 3 ? "slow-down" : "pass");
      const seeded = await transfer.importImage({ seedUri: "s3://flaky/uploads/seed.qcow2", diskFormat: DiskFormat.QCOW2 });
      const ok = await watchToEnd(service.url, seeded.task!.id);
      expect(ok.state, JSON.stringify(ok.error)).toBe(TaskState.SUCCEEDED);
      expect(refused, "3 refused GETs, then the one that worked").toBeGreaterThanOrEqual(4);
      const image = (await createClient(ImageService, transport).getImage({ id: seeded.image!.id })).image!;
      expect(image.osHashValue).toBe((await hashFile(raw)).sha512);

      // The endpoint goes away once the first part of the stored image is up.
      let parts = 0;
      proxy.plan = (s) => {
        if (s.method === "PUT" && s.query.has("partNumber")) parts++;
        return parts >= 2 ? "reset" : "pass";
      };
      const { task, image: doomed } = await transfer.importImage({ seedUri: await uploadFile(service.url, qcow2), diskFormat: DiskFormat.QCOW2, stores: ["flaky"] });
      const failed = await watchToEnd(service.url, task!.id);
      expect(failed.state).toBe(TaskState.FAILED);
      expect(failed.error?.reason).toBe("STORE_FAILED");
      expect(failed.error?.message).toMatch(/could not store the image in flaky: .*store "flaky": cannot write s3:\/\/flaky\/images\/.*the connection to the endpoint failed/);
      expect((await createClient(ImageService, transport).getImage({ id: doomed!.id })).image?.status).toBe(ImageStatus.KILLED);
      proxy.plan = () => "pass";
      expect(await objectExists(client, bucket, `images/${doomed!.id}`)).toBe(false);
    } finally {
      await service.stop();
      await fs.rm(work, { recursive: true, force: true });
    }
  }, 60_000);
});
