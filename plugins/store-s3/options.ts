/**
 * The S3 store's options, as written under a store's `options` in the service's config,
 * checked before any connection is made so a mistake stops start-up with its name.
 */
import { StoreError, type StoreConfig } from "../../src/plugins/plugin-api.js";

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

/** S3's bounds on multipart parts: every part but the last is at least 5 MiB, at most 5 GiB. */
export const MIN_PART_SIZE = 5 * MiB;
export const MAX_PART_SIZE = 5 * GiB;
/** S3 numbers parts 1 to 10,000, so one object is at most 10,000 parts. */
export const MAX_PARTS = 10_000;
/** Presigned SigV4 URLs live at most 7 days. */
export const MAX_PRESIGN_SECONDS = 7 * 24 * 3600;

export type ChecksumMode = "WHEN_REQUIRED" | "WHEN_SUPPORTED";

export interface S3StoreOptions {
  store: string;
  /** Absent: the AWS endpoint of `region`. */
  endpoint?: string;
  region: string;
  bucket: string;
  forcePathStyle: boolean;
  /** Absent: the SDK's default chain (environment, shared files, instance or container role). */
  credentials?: { accessKeyId: string; secretAccessKey: string; sessionToken?: string };
  partSize: number;
  queueSize: number;
  checksumMode: ChecksumMode;
}

const OPTION_NAMES = ["endpoint", "region", "bucket", "forcePathStyle", "credentials", "partSize", "queueSize", "checksumMode"];
const CREDENTIAL_NAMES = ["accessKeyId", "secretAccessKey", "sessionToken"];
/** AWS's rules for new bucket names: 3-63 lower-case letters, digits, dots and dashes. */
const BUCKET_NAME = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/;

/** Reads and checks a store's options; throws StoreError "invalid" naming the option at fault. */
export function parseOptions(config: StoreConfig): S3StoreOptions {
  const options: Record<string, unknown> = config.options ?? {};
  for (const name of Object.keys(options)) {
    if (!OPTION_NAMES.includes(name)) invalid(`unknown option "${name}"; the S3 store accepts ${OPTION_NAMES.join(", ")}`);
  }
  const bucket = options.bucket;
  if (bucket === undefined) invalid(`option "bucket" is required: the bucket that holds this store's objects`);
  if (typeof bucket !== "string" || !BUCKET_NAME.test(bucket)) {
    invalid(`option "bucket" must be an S3 bucket name (3-63 lower-case letters, digits, dots and dashes), not ${JSON.stringify(bucket)}`);
  }
  return {
    store: config.name,
    endpoint: optionalEndpoint(options.endpoint),
    region: text(options.region ?? config.region, "region"),
    bucket,
    forcePathStyle: flag(options.forcePathStyle, "forcePathStyle", false),
    credentials: optionalCredentials(options.credentials),
    // A write holds about (queueSize + 1) x partSize, up to twice that until garbage is
    // collected: 16 MiB parts two at a time keep it near 100 MiB and allow objects of 156 GiB.
    partSize: integer(options.partSize, "partSize", 16 * MiB, MIN_PART_SIZE, MAX_PART_SIZE, "bytes"),
    queueSize: integer(options.queueSize, "queueSize", 2, 1, 16, "parts uploaded at once"),
    checksumMode: checksumMode(options.checksumMode),
  };
}

function optionalEndpoint(value: unknown): string | undefined {
  if (value === undefined) return undefined;
  let url: URL | undefined;
  try {
    url = typeof value === "string" ? new URL(value) : undefined;
  } catch {
    url = undefined;
  }
  if (!url || (url.protocol !== "http:" && url.protocol !== "https:") || url.search !== "" || url.hash !== "" || url.username !== "") {
    invalid(`option "endpoint" must be an http:// or https:// URL without credentials or query, e.g. https://s3.example.com, not ${JSON.stringify(value)}`);
  }
  return value as string;
}

function optionalCredentials(value: unknown): S3StoreOptions["credentials"] {
  if (value === undefined) return undefined;
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    invalid(`option "credentials" must be a mapping with accessKeyId and secretAccessKey (or left out to use the SDK's default chain)`);
  }
  const fields = value as Record<string, unknown>;
  for (const name of Object.keys(fields)) {
    if (!CREDENTIAL_NAMES.includes(name)) invalid(`unknown option "credentials.${name}"; credentials take ${CREDENTIAL_NAMES.join(", ")}`);
  }
  // The values are secrets: messages name the field, never its value.
  const field = (name: string, required: boolean) => {
    const v = fields[name];
    if (v === undefined && !required) return undefined;
    if (typeof v !== "string" || v === "") invalid(`option "credentials.${name}" must be a non-empty string`);
    return v;
  };
  const sessionToken = field("sessionToken", false);
  return {
    accessKeyId: field("accessKeyId", true)!,
    secretAccessKey: field("secretAccessKey", true)!,
    ...(sessionToken === undefined ? {} : { sessionToken }),
  };
}

function checksumMode(value: unknown): ChecksumMode {
  if (value === undefined) return "WHEN_REQUIRED";
  if (value !== "WHEN_REQUIRED" && value !== "WHEN_SUPPORTED") {
    invalid(`option "checksumMode" must be "WHEN_REQUIRED" or "WHEN_SUPPORTED", not ${JSON.stringify(value)}`);
  }
  return value;
}

function text(value: unknown, name: string): string {
  if (typeof value !== "string" || value.trim() === "") invalid(`option "${name}" must be a non-empty string`);
  return value;
}

function flag(value: unknown, name: string, fallback: boolean): boolean {
  if (value === undefined) return fallback;
  if (typeof value !== "boolean") invalid(`option "${name}" must be true or false, not ${JSON.stringify(value)}`);
  return value;
}

function integer(value: unknown, name: string, fallback: number, min: number, max: number, unit: string): number {
  if (value === undefined) return fallback;
  if (typeof value !== "number" || !Number.isSafeInteger(value) || value < min || value > max) {
    invalid(`option "${name}" must be a whole number from ${min} to ${max} (${unit}), not ${JSON.stringify(value)}`);
  }
  return value;
}

function invalid(message: string): never {
  throw new StoreError("invalid", message);
}
