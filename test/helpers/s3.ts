/**
 * The S3 endpoint the tests use (Swift's s3api, started by the test setup) and buckets of
 * their own on it. Tests reach it through the real AWS SDK; nothing here is mocked.
 */
import { execFile } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import type { Readable } from "node:stream";
import { promisify } from "node:util";
import {
  AbortMultipartUploadCommand,
  CreateBucketCommand,
  DeleteBucketCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListMultipartUploadsCommand,
  ListObjectsV2Command,
  S3Client,
} from "@aws-sdk/client-s3";

export interface S3Endpoint {
  endpoint: string;
  region: string;
  accessKeyId: string;
  secretAccessKey: string;
}

const VARIABLES = ["S3_ENDPOINT", "S3_REGION", "S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY"] as const;

/** The endpoint from S3_ENDPOINT, S3_REGION, S3_ACCESS_KEY_ID and S3_SECRET_ACCESS_KEY; throws when any is missing. */
export function s3Endpoint(): S3Endpoint {
  const missing = VARIABLES.filter((name) => !process.env[name]);
  if (missing.length > 0) {
    throw new Error(
      `${missing.join(", ")} not set: the S3 tests need an S3 endpoint. The test setup starts Swift with s3api ` +
        `(scripts/swift.sh) and sets them; to use another endpoint, set all of ${VARIABLES.join(", ")}.`,
    );
  }
  const env = process.env as Record<(typeof VARIABLES)[number], string>;
  return { endpoint: env.S3_ENDPOINT, region: env.S3_REGION, accessKeyId: env.S3_ACCESS_KEY_ID, secretAccessKey: env.S3_SECRET_ACCESS_KEY };
}

/** The store options of an S3 store on the test endpoint (path-style: Swift's s3api has no virtual hosts). */
export function s3StoreOptions(bucket: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
  const { endpoint, region, accessKeyId, secretAccessKey } = s3Endpoint();
  return { endpoint, region, bucket, forcePathStyle: true, credentials: { accessKeyId, secretAccessKey }, ...extra };
}

/** An SDK client for checking what the store did, independent of the plugin under test. */
export function s3Client(): S3Client {
  const { endpoint, region, accessKeyId, secretAccessKey } = s3Endpoint();
  return new S3Client({
    endpoint,
    region,
    forcePathStyle: true,
    credentials: { accessKeyId, secretAccessKey },
    // Swift's s3api answers the SDK's default chunked checksum uploads with 501.
    requestChecksumCalculation: "WHEN_REQUIRED",
    responseChecksumValidation: "WHEN_REQUIRED",
  });
}

/** Creates a bucket with a fresh name starting with `prefix`. */
export async function createBucket(client: S3Client, prefix: string): Promise<string> {
  const bucket = `${prefix}-${randomBytes(4).toString("hex")}`;
  await client.send(new CreateBucketCommand({ Bucket: bucket }));
  return bucket;
}

/** The sha512 of an object, streamed; undefined when there is no such object. */
export async function objectSha512(client: S3Client, bucket: string, key: string): Promise<string | undefined> {
  if (!(await objectExists(client, bucket, key))) return undefined;
  const { Body } = await client.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
  const hash = createHash("sha512");
  for await (const chunk of Body as Readable) hash.update(chunk as Uint8Array);
  return hash.digest("hex");
}

export async function objectExists(client: S3Client, bucket: string, key: string): Promise<boolean> {
  try {
    await client.send(new HeadObjectCommand({ Bucket: bucket, Key: key }));
    return true;
  } catch (err) {
    if ((err as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode === 404) return false;
    throw err;
  }
}

/** The multipart uploads under way in a bucket, as "key" strings. */
export async function multipartUploads(client: S3Client, bucket: string): Promise<string[]> {
  const page = await client.send(new ListMultipartUploadsCommand({ Bucket: bucket }));
  return (page.Uploads ?? []).map((u) => u.Key!);
}

/** Empties a bucket (objects and unfinished uploads) and removes it. */
export async function removeBucket(client: S3Client, bucket: string): Promise<void> {
  for (;;) {
    const uploads = await client.send(new ListMultipartUploadsCommand({ Bucket: bucket }));
    for (const u of uploads.Uploads ?? []) {
      await client.send(new AbortMultipartUploadCommand({ Bucket: bucket, Key: u.Key, UploadId: u.UploadId }));
    }
    const page = await client.send(new ListObjectsV2Command({ Bucket: bucket }));
    for (const object of page.Contents ?? []) await client.send(new DeleteObjectCommand({ Bucket: bucket, Key: object.Key }));
    if (!page.IsTruncated && !uploads.IsTruncated) break;
  }
  await client.send(new DeleteBucketCommand({ Bucket: bucket }));
}

/** Runs curl as the holder of a presigned URL would, and returns the HTTP status it got. */
export async function curl(args: string[]): Promise<string> {
  const { stdout } = await promisify(execFile)("curl", ["-sS", "-w", "%{http_code}", ...args], { encoding: "utf8" });
  return stdout.trim();
}
