/**
 * store-s3 against a real S3 endpoint (Swift's s3api), for what the conformance suite does
 * not cover: multipart uploads and their clean-up, S3's own failures (wrong credentials, a
 * missing bucket, an upload removed under a writer), stale upload removal, temporary URLs
 * used with curl, and memory held by a streaming write. Checked with a separate SDK client.
 */
import { createHash, randomBytes } from "node:crypto";
import * as fs from "node:fs/promises";
import { tmpdir } from "node:os";
import * as path from "node:path";
import type { Readable } from "node:stream";
import {
  AbortMultipartUploadCommand,
  CreateMultipartUploadCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListMultipartUploadsCommand,
  UploadPartCommand,
  type S3Client,
} from "@aws-sdk/client-s3";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import plugin from "../../plugins/store-s3/index.js";
import { isStoreError, type StoreDriver, type StoreErrorKind, type StoreInstance } from "../../src/plugins/plugin-api.js";
import { startHttpRelay } from "../helpers/http-relay.js";
import { registerPlugin } from "../helpers/register-plugin.js";
import { createBucket, curl, multipartUploads, removeBucket, s3Client, s3StoreOptions } from "../helpers/s3.js";

const MiB = 1024 * 1024;
const PART = 5 * MiB;

let client: S3Client;
let driver: StoreDriver;
let bucket: string;
let work: string;
const opened: StoreInstance[] = [];

async function open(name: string, options: Record<string, unknown>): Promise<StoreInstance> {
  const store = await driver.open({ name, region: "test", options, dataDir: tmpdir() });
  opened.push(store);
  return store;
}

/** `count` chunks of `chunkSize` random bytes, hashed as they go; `onChunk` runs after each is taken. */
function source(count: number, chunkSize: number, onChunk: (index: number) => Promise<void> | void = () => {}) {
  const hash = createHash("sha256");
  return {
    async *chunks(): AsyncGenerator<Uint8Array> {
      for (let i = 0; i < count; i++) {
        const chunk = randomBytes(chunkSize);
        hash.update(chunk);
        yield chunk;
        await onChunk(i + 1);
      }
    },
    sha256: () => hash.copy().digest("hex"),
  };
}

async function sha256Of(stream: Readable): Promise<string> {
  const hash = createHash("sha256");
  for await (const chunk of stream) hash.update(chunk as Uint8Array);
  return hash.digest("hex");
}

async function rejection(promise: Promise<unknown>): Promise<unknown> {
  return promise.then(
    () => expect.fail("the call succeeded"),
    (err: unknown) => err,
  );
}

async function storeErrorOf(promise: Promise<unknown>, kind: StoreErrorKind): Promise<Error> {
  const err = await rejection(promise);
  expect(isStoreError(err), `expected StoreError "${kind}", got ${String(err)}`).toBe(true);
  expect((err as { kind: string }).kind, (err as Error).message).toBe(kind);
  return err as Error;
}

/** Waits until the bucket shows a multipart upload for `key`: proof the write went multipart. */
async function untilUploadStarted(key: string): Promise<void> {
  for (let i = 0; i < 100; i++) {
    if ((await multipartUploads(client, bucket)).includes(key)) return;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  expect.fail(`no multipart upload for ${key} appeared`);
}

beforeAll(async () => {
  client = s3Client();
  bucket = await createBucket(client, "itx-s3-store");
  const { stores } = await registerPlugin(plugin);
  driver = stores[0]!;
  work = await fs.mkdtemp(path.join(tmpdir(), "itx-s3-store-"));
});

afterAll(async () => {
  await Promise.all(opened.map((s) => s.close?.()));
  if (bucket) await removeBucket(client, bucket);
  if (work) await fs.rm(work, { recursive: true, force: true });
  client?.destroy();
});

describe("multipart writes", () => {
  it.each(["WHEN_REQUIRED", "WHEN_SUPPORTED"])("stream 3 parts of 5 MiB and reads them back, checksumMode %s", async (checksumMode) => {
    const store = await open("s3", s3StoreOptions(bucket, { partSize: PART, checksumMode }));
    const key = `multipart/${checksumMode}`;
    const data = source(11, MiB + 7); // 11 MiB and 77 bytes: two full parts and a short one
    const written = await store.write(key, data.chunks());
    expect(written).toMatchObject({ key, size: 11 * (MiB + 7) });
    const head = await client.send(new HeadObjectCommand({ Bucket: bucket, Key: key }));
    expect(head.ContentLength).toBe(11 * (MiB + 7));
    expect(head.ETag, "an S3 multipart ETag ends in -<parts>").toMatch(/-3"$/);
    expect(await sha256Of(await store.read(key))).toBe(data.sha256());
    // A range across the boundary of the first two parts, as S3 itself serves it.
    const across = await collect(await store.read(key, { range: { offset: PART - 2, length: 4 } }));
    const direct = await client.send(new GetObjectCommand({ Bucket: bucket, Key: key, Range: `bytes=${PART - 2}-${PART + 1}` }));
    expect(across).toEqual(Buffer.from(await direct.Body!.transformToByteArray()));
    expect(across).toHaveLength(4);
    expect(await multipartUploads(client, bucket)).toEqual([]);
  });

  it("an abort after parts went up aborts the multipart upload: no object and no parts left", async () => {
    const store = await open("s3", s3StoreOptions(bucket, { partSize: PART }));
    const key = "multipart/aborted";
    const controller = new AbortController();
    const data = source(64, MiB, async (n) => {
      if (n === 12) {
        await untilUploadStarted(key);
        controller.abort(new Error("cancelled by the test"));
      }
    });
    const err = await rejection(store.write(key, data.chunks(), { signal: controller.signal }));
    expect((err as Error).name).toBe("AbortError");
    expect(await store.stat(key)).toBeUndefined();
    expect(await multipartUploads(client, bucket)).toEqual([]);
  });

  it("a source that throws after parts went up fails the write with its own error and leaves no parts", async () => {
    const store = await open("s3", s3StoreOptions(bucket, { partSize: PART }));
    const key = "multipart/broken-source";
    const failure = new Error("the source broke");
    const data = source(64, MiB, async (n) => {
      if (n === 12) {
        await untilUploadStarted(key);
        throw failure;
      }
    });
    expect(await rejection(store.write(key, data.chunks()))).toBe(failure);
    expect(await store.stat(key)).toBeUndefined();
    expect(await multipartUploads(client, bucket)).toEqual([]);
  });

  it("an upload removed under the writer fails the write as not-found, naming store, bucket and key", async () => {
    const store = await open("s3-named", s3StoreOptions(bucket, { partSize: PART }));
    const key = "multipart/pulled";
    const data = source(32, MiB, async (n) => {
      if (n === 12) {
        await untilUploadStarted(key);
        const { Uploads = [] } = await client.send(new ListMultipartUploadsCommand({ Bucket: bucket, Prefix: key }));
        for (const u of Uploads) await client.send(new AbortMultipartUploadCommand({ Bucket: bucket, Key: key, UploadId: u.UploadId }));
      }
    });
    const err = await storeErrorOf(store.write(key, data.chunks()), "not-found");
    expect(err.message).toContain(`s3://s3-named/${key} (bucket "${bucket}")`);
    expect(await store.stat(key)).toBeUndefined();
    expect(await multipartUploads(client, bucket)).toEqual([]);
  });

  it("holds a few parts in memory, not the object: 96 MiB through 5 MiB parts", async () => {
    const store = await open("s3", s3StoreOptions(bucket, { partSize: PART, queueSize: 2 }));
    const chunk = Buffer.alloc(MiB, 7);
    async function* chunks(): AsyncGenerator<Uint8Array> {
      for (let i = 0; i < 96; i++) yield chunk;
    }
    const baseline = process.memoryUsage().arrayBuffers;
    let peak = baseline;
    const sampler = setInterval(() => (peak = Math.max(peak, process.memoryUsage().arrayBuffers)), 5);
    try {
      expect((await store.write("multipart/large", chunks())).size).toBe(96 * MiB);
    } finally {
      clearInterval(sampler);
    }
    // queueSize parts in flight plus the one filling (and their copies on the way out): far below 96 MiB.
    expect((peak - baseline) / MiB).toBeLessThan(48);
  }, 120_000);
});

describe("S3's own failures", () => {
  it("wrong credentials: permission errors that name the store, bucket and key, and no secret", async () => {
    const secret = "not-the-secret-x9q";
    const options = s3StoreOptions(bucket);
    const store = await open("s3-bad", { ...options, credentials: { ...(options.credentials as object), secretAccessKey: secret } });
    for (const call of [
      () => store.stat("images/x"),
      () => store.read("images/x"),
      () => store.write("images/x", bytes("bytes")),
      () => store.list({ prefix: "images/" }),
      () => store.delete("images/x"),
    ]) {
      const err = await storeErrorOf(call(), "permission");
      expect(err.message).toContain(`bucket "${bucket}"`);
      expect(err.message).toMatch(/check the store's credentials/);
      expect(err.message).not.toContain(secret);
    }
    expect((await storeErrorOf(store.read("images/x"), "permission")).message).toContain("s3://s3-bad/images/x");
  });

  it("a missing bucket: not-found errors that say so, from every call", async () => {
    const store = await open("s3-nobucket", s3StoreOptions("itx-no-such-bucket"));
    for (const call of [
      () => store.stat("images/x"),
      () => store.read("images/x"),
      () => store.write("images/x", bytes("bytes")),
      () => store.list(),
      () => store.delete("images/x"),
    ]) {
      const err = await storeErrorOf(call(), "not-found");
      expect(err.message).toMatch(/the bucket "itx-no-such-bucket" does not exist \(NoSuchBucket\)/);
    }
  });

  it("a wrong region: refused with the server's explanation", async () => {
    const store = await open("s3-region", s3StoreOptions(bucket, { region: "eu-north-9" }));
    const err = await storeErrorOf(store.read("images/x"), "invalid");
    expect(err.message).toMatch(/AuthorizationHeaderMalformed.*eu-north-9/);
  });
});

describe("removePartialWrites", () => {
  it("aborts the multipart uploads begun before the cut-off and no others", async () => {
    const store = await open("s3", s3StoreOptions(bucket));
    const key = "uploads/killed-writer";
    await client.send(new CreateMultipartUploadCommand({ Bucket: bucket, Key: key }));
    expect(await multipartUploads(client, bucket)).toEqual([key]);
    expect(await store.removePartialWrites!(new Date(Date.now() - 3600_000))).toBe(0);
    expect(await multipartUploads(client, bucket)).toEqual([key]);
    // S3 dates uploads to the second: a cut-off a little ahead covers this one.
    expect(await store.removePartialWrites!(new Date(Date.now() + 2_000))).toBe(1);
    expect(await multipartUploads(client, bucket)).toEqual([]);
  });

  it("leaves an upload that began before the cut-off but sent a part since: a long write still under way", async () => {
    const store = await open("s3", s3StoreOptions(bucket));
    const key = "images/long-write";
    const { UploadId } = await client.send(new CreateMultipartUploadCommand({ Bucket: bucket, Key: key }));
    // S3 dates uploads and parts to the second: keep a clear second either side of the cut-off.
    await new Promise((resolve) => setTimeout(resolve, 3_000));
    const cutOff = new Date(Date.now() - 1_500);
    await client.send(new UploadPartCommand({ Bucket: bucket, Key: key, UploadId, PartNumber: 1, Body: Buffer.alloc(1024, 1) }));
    expect(await store.removePartialWrites!(cutOff)).toBe(0);
    expect(await multipartUploads(client, bucket)).toEqual([key]);
    expect(await store.removePartialWrites!(new Date(Date.now() + 2_000))).toBe(1);
    expect(await multipartUploads(client, bucket)).toEqual([]);
  });
});

describe("trace context", () => {
  it("every request of a multipart write, a read, a list, a stat, a delete and a sweep carries the call's traceparent", async () => {
    const relay = await startHttpRelay(new URL(s3StoreOptions(bucket).endpoint as string), { keepHost: true });
    try {
      const traced = await open("s3", s3StoreOptions(bucket, { endpoint: relay.url, partSize: PART }));
      const traceparent = `00-${randomBytes(16).toString("hex")}-${randomBytes(8).toString("hex")}-01`;
      const call = { traceContext: { traceparent } };
      const data = source(3, 4 * MiB);
      const opening = relay.relayed.length; // the bucket check at open is no call's request

      await traced.write("traced/large", data.chunks(), call);
      expect(await sha256Of(await traced.read("traced/large", call))).toBe(data.sha256());
      let ranged = 0;
      for await (const chunk of await traced.read("traced/large", { ...call, range: { offset: 1, length: 9 * MiB } })) ranged += (chunk as Uint8Array).length;
      expect(ranged).toBe(9 * MiB);
      expect((await traced.list({ prefix: "traced/", ...call })).objects.map((o) => o.key)).toEqual(["traced/large"]);
      expect(await traced.stat("traced/large", call)).toMatchObject({ size: 12 * MiB });
      await traced.delete("traced/large", call);
      await client.send(new CreateMultipartUploadCommand({ Bucket: bucket, Key: "traced/abandoned" }));
      expect(await traced.removePartialWrites!(new Date(Date.now() + 2_000), call)).toBe(1);

      const requests = relay.relayed.slice(opening);
      const untraced = requests.filter((r) => r.headers.traceparent !== traceparent).map((r) => `${r.method} ${r.path}`);
      expect(untraced, "requests without the call's traceparent").toEqual([]);
      const kinds = {
        "create multipart upload": requests.filter((r) => r.method === "POST" && r.path.includes("?uploads")),
        "upload part": requests.filter((r) => r.method === "PUT" && r.path.includes("partNumber=")),
        "complete multipart upload": requests.filter((r) => r.method === "POST" && r.path.includes("uploadId=")),
        "ranged GET": requests.filter((r) => r.method === "GET" && r.headers.range !== undefined),
        "list objects": requests.filter((r) => r.method === "GET" && r.path.includes("list-type=2")),
        HEAD: requests.filter((r) => r.method === "HEAD"),
        DELETE: requests.filter((r) => r.method === "DELETE" && !r.path.includes("uploadId=")),
        "list and abort uploads": requests.filter((r) => (r.method === "GET" && r.path.includes("?uploads")) || (r.method === "DELETE" && r.path.includes("uploadId="))),
      };
      for (const [kind, seen] of Object.entries(kinds)) expect(seen.length, kind).toBeGreaterThan(0);
    } finally {
      await relay.close();
    }
  });
});

describe("temporary URLs with curl", () => {
  it("PUTs a file through a presigned URL and GETs it back through another, byte for byte", async () => {
    const store = await open("s3", s3StoreOptions(bucket));
    const file = path.join(work, "upload.bin");
    const back = path.join(work, "download.bin");
    await fs.writeFile(file, randomBytes(3 * MiB + 5));
    const put = await store.presign!("uploads/curl.bin", { method: "PUT", expiresInSeconds: 300 });
    expect(await curl(["-T", file, put.url])).toBe("200");
    expect(await store.stat("uploads/curl.bin")).toMatchObject({ size: 3 * MiB + 5 });
    const get = await store.presign!("uploads/curl.bin", { method: "GET", expiresInSeconds: 300 });
    expect(await curl(["-o", back, get.url])).toBe("200");
    expect((await fs.readFile(back)).equals(await fs.readFile(file)), "the bytes differ").toBe(true);
  });

  it("refuses a GET URL whose key was changed, and one that expired", async () => {
    const store = await open("s3", s3StoreOptions(bucket));
    await store.write("uploads/a", bytes("a"));
    await store.write("uploads/b", bytes("b"));
    const { url, expireTime } = await store.presign!("uploads/a", { method: "GET", expiresInSeconds: 1 });
    expect(await curl(["-o", "/dev/null", url.replace("uploads/a", "uploads/b")])).toBe("403");
    await new Promise((resolve) => setTimeout(resolve, expireTime.getTime() - Date.now() + 1_500));
    expect(await curl(["-o", "/dev/null", url])).toBe("403");
  });
});


async function* bytes(text: string): AsyncGenerator<Uint8Array> {
  yield Buffer.from(text);
}

async function collect(stream: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const chunk of stream) parts.push(Buffer.from(chunk as Uint8Array));
  return Buffer.concat(parts);
}
