/**
 * store-s3 without a server: option checking, how SDK errors become StoreError kinds, and
 * the URLs it signs for path-style and virtual-hosted addressing (signing needs no network).
 */
import { tmpdir } from "node:os";
import { describe, expect, it } from "vitest";
import { toStoreError } from "../../plugins/store-s3/errors.js";
import plugin from "../../plugins/store-s3/index.js";
import { isStoreError, type StoreConfig, type StoreDriver, type StoreErrorKind } from "../../src/plugins/plugin-api.js";
import { registerPlugin } from "../helpers/register-plugin.js";

const SECRET = "sEcReT-value-9f3a";
const credentials = { accessKeyId: "AKIDEXAMPLE", secretAccessKey: SECRET };

async function driver(): Promise<StoreDriver> {
  const { stores } = await registerPlugin(plugin);
  expect(stores).toHaveLength(1);
  return stores[0]!;
}

function config(options: Record<string, unknown>, region = "eu-west-1"): StoreConfig {
  return { name: "archive", region, options, dataDir: tmpdir() };
}

async function openError(options: Record<string, unknown>): Promise<string> {
  const err = await Promise.resolve()
    .then(async () => (await driver()).open(config(options)))
    .then(
      () => undefined,
      (e: unknown) => e,
    );
  expect(isStoreError(err), `expected StoreError "invalid", got ${String(err)}`).toBe(true);
  expect((err as { kind: string }).kind).toBe("invalid");
  return (err as Error).message;
}

describe("store-s3 registration", () => {
  it("serves the s3 scheme with every capability, up to S3's 5 TiB objects", async () => {
    const d = await driver();
    expect(d.schemes).toEqual(["s3"]);
    expect(d.capabilities).toEqual({
      readRanges: true,
      write: true,
      delete: true,
      list: true,
      presignGet: true,
      presignPut: true,
      maxObjectSize: 5 * 1024 ** 4,
    });
  });
});

describe("store-s3 options", () => {
  it.each([
    [{}, /option "bucket" is required/],
    [{ bucket: "Upper_Case" }, /option "bucket" must be an S3 bucket name/],
    [{ bucket: "ok-bucket", color: "red" }, /unknown option "color"; the S3 store accepts endpoint, region, bucket/],
    [{ bucket: "ok-bucket", endpoint: "ftp://example.com" }, /option "endpoint" must be an http:\/\/ or https:\/\/ URL/],
    [{ bucket: "ok-bucket", endpoint: "not a url" }, /option "endpoint" must be an http/],
    [{ bucket: "ok-bucket", region: "" }, /option "region" must be a non-empty string/],
    [{ bucket: "ok-bucket", forcePathStyle: "yes" }, /option "forcePathStyle" must be true or false/],
    [{ bucket: "ok-bucket", partSize: 1024 }, /option "partSize" must be a whole number from 5242880 to 5368709120 \(bytes\)/],
    [{ bucket: "ok-bucket", partSize: 5 * 1024 * 1024 + 0.5 }, /option "partSize" must be a whole number/],
    [{ bucket: "ok-bucket", queueSize: 0 }, /option "queueSize" must be a whole number from 1 to 16/],
    [{ bucket: "ok-bucket", checksumMode: "ALWAYS" }, /option "checksumMode" must be "WHEN_REQUIRED" or "WHEN_SUPPORTED"/],
    [{ bucket: "ok-bucket", credentials: "AKID:secret" }, /option "credentials" must be a mapping with accessKeyId and secretAccessKey/],
    [{ bucket: "ok-bucket", credentials: { accessKeyId: "AKID" } }, /option "credentials.secretAccessKey" must be a non-empty string/],
    [{ bucket: "ok-bucket", credentials: { ...credentials, token: "x" } }, /unknown option "credentials.token"/],
  ])("refuses %j with a message naming the option", async (options, message) => {
    expect(await openError(options)).toMatch(message);
  });

  it("never repeats a credential's value in its messages", async () => {
    const message = await openError({ bucket: "ok-bucket", credentials: { accessKeyId: SECRET, secretAccessKey: 42 } });
    expect(message).toMatch(/credentials.secretAccessKey/);
    expect(message).not.toContain(SECRET);
  });

  it("opens without contacting the endpoint, so a store that is down at start-up comes back by itself", async () => {
    const store = await (await driver()).open(config({ bucket: "ok-bucket", endpoint: "http://127.0.0.1:9", credentials }));
    expect(store.presign).toBeTypeOf("function");
    await store.close?.();
  });
});

describe("store-s3 addressing", () => {
  async function presignedUrl(options: Record<string, unknown>, region?: string): Promise<URL> {
    const store = await (await driver()).open(config({ credentials, ...options }, region));
    try {
      return new URL((await store.presign!("images/disk one.raw", { method: "GET", expiresInSeconds: 600 })).url);
    } finally {
      await store.close?.();
    }
  }

  it("uses the AWS endpoint of the store's region, virtual-hosted, when no endpoint is given", async () => {
    const url = await presignedUrl({ bucket: "itx-images" });
    expect(url.host).toBe("itx-images.s3.eu-west-1.amazonaws.com");
    expect(url.pathname).toBe("/images/disk%20one.raw");
    expect(url.searchParams.get("X-Amz-Credential")).toMatch(/^AKIDEXAMPLE\/\d{8}\/eu-west-1\/s3\/aws4_request$/);
  });

  it("takes the S3 region from the region option over the store's region", async () => {
    const url = await presignedUrl({ bucket: "itx-images", region: "us-west-2" }, "local");
    expect(url.host).toBe("itx-images.s3.us-west-2.amazonaws.com");
  });

  it("puts the bucket in the host name of a custom endpoint, or in the path with forcePathStyle", async () => {
    const hosted = await presignedUrl({ bucket: "itx-images", endpoint: "https://objects.example.com" });
    expect(hosted.host).toBe("itx-images.objects.example.com");
    expect(hosted.pathname).toBe("/images/disk%20one.raw");
    const path = await presignedUrl({ bucket: "itx-images", endpoint: "https://objects.example.com:8443", forcePathStyle: true });
    expect(path.host).toBe("objects.example.com:8443");
    expect(path.pathname).toBe("/itx-images/images/disk%20one.raw");
  });

  it("signs with SigV4 for the requested lifetime, carrying no secret, and refuses lifetimes SigV4 cannot give", async () => {
    const store = await (await driver()).open(config({ bucket: "itx-images", credentials }));
    const before = Math.floor(Date.now() / 1000) * 1000;
    const { url, expireTime } = await store.presign!("images/x", { method: "PUT", expiresInSeconds: 900 });
    const params = new URL(url).searchParams;
    expect(params.get("X-Amz-Algorithm")).toBe("AWS4-HMAC-SHA256");
    expect(params.get("X-Amz-Expires")).toBe("900");
    expect(params.get("X-Amz-Signature")).toMatch(/^[0-9a-f]{64}$/);
    expect(url).not.toContain(SECRET);
    expect(expireTime.getTime() - before).toBeGreaterThanOrEqual(900_000);
    expect(expireTime.getTime()).toBeLessThanOrEqual(Date.now() + 900_000);
    for (const seconds of [0, 7 * 24 * 3600 + 1, 1.5]) {
      await expect(store.presign!("images/x", { method: "GET", expiresInSeconds: seconds })).rejects.toThrow(/presigned URLs last from 1 to 604800 seconds/);
    }
    await store.close?.();
  });

  it("refuses keys that other stores could not hold or that URL handling would rewrite", async () => {
    const store = await (await driver()).open(config({ bucket: "itx-images", credentials }));
    for (const key of ["", "/images/x", "images//x", "images/x/", "images/../x", "./x", "a\u0000b", "x".repeat(1025)]) {
      const err = await store.presign!(key, { method: "GET", expiresInSeconds: 60 }).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(isStoreError(err) && err.kind, `key ${JSON.stringify(key.slice(0, 20))}`).toBe("invalid");
    }
    await store.close?.();
  });
});

describe("store-s3 error mapping", () => {
  const failed = { store: "archive", bucket: "itx-images", action: "read", key: "images/x" };
  /** An error shaped as the SDK throws it: the S3 error code as its name, and the HTTP status. */
  const sdkError = (name: string, status?: number, message = "from the server") =>
    Object.assign(new Error(message), { name, $metadata: status === undefined ? {} : { httpStatusCode: status } });
  const network = (code: string) => Object.assign(new Error(`connect ${code} 127.0.0.1:9`), { code, $metadata: {} });

  it.each<[string, unknown, StoreErrorKind, RegExp]>([
    ["NoSuchKey", sdkError("NoSuchKey", 404), "not-found", /the object does not exist \(NoSuchKey\)/],
    ["a HEAD 404", sdkError("NotFound", 404), "not-found", /does not exist/],
    ["NoSuchBucket", sdkError("NoSuchBucket", 404), "not-found", /the bucket "itx-images" does not exist \(NoSuchBucket\); create it or fix the store's "bucket" option/],
    ["AccessDenied", sdkError("AccessDenied", 403), "permission", /access denied \(AccessDenied\); check the store's credentials/],
    ["InvalidAccessKeyId", sdkError("InvalidAccessKeyId", 403), "permission", /InvalidAccessKeyId/],
    ["SignatureDoesNotMatch", sdkError("SignatureDoesNotMatch", 403), "permission", /SignatureDoesNotMatch/],
    ["a HEAD 403", sdkError("Unknown", 403), "permission", /access denied \(HTTP 403\)/],
    ["no credentials found", sdkError("CredentialsProviderError"), "permission", /access denied/],
    ["SlowDown", sdkError("SlowDown", 503), "unavailable", /busy \(HTTP 503 SlowDown\)/],
    ["InternalError", sdkError("InternalError", 500), "unavailable", /unavailable/],
    ["a 429", sdkError("TooManyRequests", 429), "unavailable", /unavailable/],
    ["RequestTimeout (a 400)", sdkError("RequestTimeout", 400), "unavailable", /unavailable/],
    ["a timeout", sdkError("TimeoutError"), "unavailable", /unavailable/],
    ["a HEAD 503", sdkError("Unknown", 503), "unavailable", /busy \(HTTP 503\)/],
    ["a reset the SDK calls a timeout", Object.assign(network("ECONNRESET"), { name: "TimeoutError" }), "unavailable", /connection to the endpoint failed \(ECONNRESET\)/],
    ["ECONNREFUSED", network("ECONNREFUSED"), "unavailable", /the connection to the endpoint failed \(ECONNREFUSED\)/],
    ["ECONNRESET", network("ECONNRESET"), "unavailable", /ECONNRESET/],
    ["a 501", sdkError("NotImplemented", 501), "invalid", /set the store's checksumMode to WHEN_REQUIRED/],
    ["InvalidRange", sdkError("InvalidRange", 416, "The requested range cannot be satisfied."), "invalid", /HTTP 416 InvalidRange: The requested range/],
    ["a wrong region", sdkError("AuthorizationHeaderMalformed", 400, "the region 'eu-west-1' is wrong; expecting 'us-east-1'"), "invalid", /expecting 'us-east-1'/],
  ])("%s becomes %s naming store, bucket and key", (_, err, kind, reason) => {
    const mapped = toStoreError(err, failed);
    expect(isStoreError(mapped)).toBe(true);
    if (!isStoreError(mapped)) return;
    expect(mapped.kind).toBe(kind);
    expect(mapped.message).toMatch(/^cannot read s3:\/\/archive\/images\/x \(bucket "itx-images"\): /);
    expect(mapped.message).toMatch(reason);
    expect(mapped.cause).toBe(err);
  });

  it("passes abort errors and StoreErrors through unchanged", () => {
    const abort = Object.assign(new Error("aborted"), { name: "AbortError" });
    expect(toStoreError(abort, failed)).toBe(abort);
  });
});
