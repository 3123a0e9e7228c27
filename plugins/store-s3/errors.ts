/**
 * Maps what the AWS SDK throws to StoreError kinds, in one place. Messages name the
 * object as s3://STORE/KEY and the bucket, and say what to check; they never carry
 * credentials (the SDK's own messages do not either, and request details stay in `cause`).
 */
import { isStoreError, StoreError, type StoreErrorKind } from "../../src/plugins/plugin-api.js";

/** What a failed call was doing, for its message. */
export interface Failed {
  store: string;
  bucket: string;
  /** e.g. "read", "write", "list" */
  action: string;
  key?: string;
}

/** S3 error codes meaning the credentials or the policy do not allow the call. */
const PERMISSION_CODES = new Set([
  "AccessDenied",
  "AllAccessDisabled",
  "AccountProblem",
  "ExpiredToken",
  "InvalidAccessKeyId",
  "InvalidToken",
  "SignatureDoesNotMatch",
  "TokenRefreshRequired",
  "CredentialsProviderError",
]);

/** Codes of a busy or struggling service: worth another try after a pause. */
const UNAVAILABLE_CODES = new Set([
  "InternalError",
  "RequestTimeout",
  "ServiceUnavailable",
  "SlowDown",
  "Throttling",
  "ThrottlingException",
  "TooManyRequests",
  "RequestLimitExceeded",
  "TimeoutError",
]);

/** Node's codes for a connection that could not be made or broke off. */
const NETWORK_CODES = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "EPIPE",
  "ETIMEDOUT",
  "ENOTFOUND",
  "EAI_AGAIN",
  "ENETUNREACH",
  "EHOSTUNREACH",
  "ECONNABORTED",
  "ERR_STREAM_PREMATURE_CLOSE",
]);

interface SdkError {
  name?: string;
  message?: string;
  code?: string;
  $metadata?: { httpStatusCode?: number };
}

/** The HTTP status of an S3 answer, or undefined when no answer came. */
export function statusOf(err: unknown): number | undefined {
  return (err as SdkError | null)?.$metadata?.httpStatusCode;
}

/** The S3 error code (NoSuchKey, AccessDenied, ...) or the SDK's error name. */
export function codeOf(err: unknown): string | undefined {
  const name = (err as SdkError | null)?.name;
  return typeof name === "string" ? name : undefined;
}

/** Wraps an SDK error in a StoreError; StoreErrors and abort errors pass through unchanged. */
export function toStoreError(err: unknown, failed: Failed): unknown {
  if (isStoreError(err) || (err instanceof Error && err.name === "AbortError")) return err;
  const { kind, reason } = classify(err, failed);
  return new StoreError(kind, message(failed, reason), { cause: err });
}

/** The error for an object that is not there, found without an S3 error to map. */
export function notFound(failed: Failed): StoreError {
  return new StoreError("not-found", message(failed, "the object does not exist"));
}

/** The error for a bucket that is not there, found without an S3 error to map. */
export function bucketNotFound(failed: Failed): StoreError {
  return new StoreError("not-found", message(failed, noBucket(failed)));
}

function noBucket(failed: Failed): string {
  return `the bucket "${failed.bucket}" does not exist (NoSuchBucket); create it or fix the store's "bucket" option`;
}

function message(failed: Failed, reason: string): string {
  const where = failed.key === undefined ? `in bucket "${failed.bucket}"` : `s3://${failed.store}/${failed.key} (bucket "${failed.bucket}")`;
  return `cannot ${failed.action} ${where}: ${reason}`;
}

function classify(err: unknown, failed: Failed): { kind: StoreErrorKind; reason: string } {
  const status = statusOf(err);
  const code = codeOf(err) ?? "Error";
  const sdk = err as SdkError | null;
  if (code === "NoSuchBucket") return { kind: "not-found", reason: noBucket(failed) };
  if (code === "NoSuchKey" || code === "NoSuchUpload" || status === 404) return { kind: "not-found", reason: `the object does not exist (${code})` };
  if (PERMISSION_CODES.has(code) || status === 401 || status === 403) {
    return { kind: "permission", reason: `access denied (${code === "Unknown" || status === undefined ? answer(status, code) : code}); check the store's credentials and the bucket's policy` };
  }
  if (status === 501) {
    // Some S3-compatible servers (Swift's s3api among them) refuse the SDK's chunked checksum uploads.
    return { kind: "invalid", reason: `the server does not implement this request (HTTP 501 ${code}); with S3-compatible servers set the store's checksumMode to WHEN_REQUIRED` };
  }
  // Node's code first: the SDK names a reset connection a TimeoutError.
  if (status === undefined && typeof sdk?.code === "string" && NETWORK_CODES.has(sdk.code)) {
    return { kind: "unavailable", reason: `the connection to the endpoint failed (${sdk.code})` };
  }
  if (UNAVAILABLE_CODES.has(code) || status === 429 || (status !== undefined && status >= 500)) {
    return { kind: "unavailable", reason: `the service is unavailable or busy (${answer(status, code)}); try again later` };
  }
  const detail = typeof sdk?.message === "string" && sdk.message !== "" && sdk.message !== "UnknownError" ? `: ${sdk.message.slice(0, 300)}` : "";
  return { kind: "invalid", reason: `${answer(status, code)}${detail}` };
}

/** "HTTP 503 SlowDown"; answers without a body (HEAD) have only their status. */
function answer(status: number | undefined, code: string): string {
  if (status === undefined) return code;
  return code === "Unknown" ? `HTTP ${status}` : `HTTP ${status} ${code}`;
}
