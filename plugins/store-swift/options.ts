import { StoreError } from "../../src/plugins/plugin-api.js";

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
/** Swift's default smallest SLO segment is 1 byte, but less than 1 MiB only multiplies requests. */
export const MIN_SEGMENT_SIZE = MiB;
/** Swift's default max_file_size: no single object (segment) may be larger. */
export const MAX_SEGMENT_SIZE = 5 * GiB;

export interface TempAuth {
  version: "1.0";
  url: string;
  /** "account:user" */
  user: string;
  key: string;
}

export interface KeystoneAuth {
  version: "3";
  /** The identity API root, e.g. https://keystone.example.com/v3 */
  url: string;
  user: string;
  password: string;
  userDomain: string;
  project: string;
  projectDomain: string;
  /** Which object-store endpoint of the catalog to use. */
  endpointRegion?: string;
  endpointInterface: "public" | "internal" | "admin";
}

export interface SwiftOptions {
  auth: TempAuth | KeystoneAuth;
  /** Overrides the storage URL that authentication returns (e.g. one reachable from here). */
  storageUrl?: string;
  container: string;
  /** Create the container (and its segments container) when it does not exist. */
  createContainer: boolean;
  segmentSize: number;
  tempUrlKey?: string;
  tempUrlDigest: "sha256" | "sha512";
  /** A request (or a response stream) idle this long fails as "unavailable". */
  timeoutMs: number;
  /** GETs one read runs side by side (1: one GET per read). */
  parallelReads: number;
  /** Bytes per GET of a read in parts; also what a read buffers ahead per GET. */
  readPartSize: number;
}

const NAMES = [
  "authUrl",
  "authVersion",
  "user",
  "key",
  "userDomain",
  "project",
  "projectDomain",
  "endpointRegion",
  "endpointInterface",
  "storageUrl",
  "container",
  "createContainer",
  "segmentSize",
  "tempUrlKey",
  "tempUrlDigest",
  "timeoutSeconds",
  "parallelReads",
  "readPartSize",
];

/** Checks a store's options from the config file; every message names the option and what it wants. */
export function parseOptions(options: Record<string, unknown>): SwiftOptions {
  for (const name of Object.keys(options)) {
    if (!NAMES.includes(name)) {
      throw invalid(`unknown option "${name}"; the Swift store accepts ${NAMES.join(", ")}`);
    }
  }
  const authUrl = httpUrl(options, "authUrl", true)!;
  const version = oneOf(options, "authVersion", ["1.0", "3"] as const, "1.0");
  const user = text(options, "user", true)!;
  const key = text(options, "key", true)!;
  let auth: TempAuth | KeystoneAuth;
  if (version === "1.0") {
    if (!/^[^:]+:[^:]+$/.test(user)) throw invalid(`option "user" must be "account:user" for tempauth (authVersion 1.0)`);
    auth = { version, url: authUrl, user, key };
  } else {
    auth = {
      version,
      url: authUrl.replace(/\/+$/, ""),
      user,
      password: key,
      userDomain: text(options, "userDomain", false) ?? "Default",
      project: text(options, "project", true, `the Keystone project whose object store to use`)!,
      projectDomain: text(options, "projectDomain", false) ?? "Default",
      endpointRegion: text(options, "endpointRegion", false),
      endpointInterface: oneOf(options, "endpointInterface", ["public", "internal", "admin"] as const, "public"),
    };
  }

  const container = text(options, "container", true, "the Swift container that holds this store's objects")!;
  if (container.includes("/") || Buffer.byteLength(container) > 250) {
    throw invalid(`option "container" must be a container name: no '/', at most 250 bytes`);
  }

  const segmentSize = options.segmentSize ?? GiB;
  if (!Number.isSafeInteger(segmentSize) || (segmentSize as number) < MIN_SEGMENT_SIZE || (segmentSize as number) > MAX_SEGMENT_SIZE) {
    throw invalid(`option "segmentSize" must be a whole number of bytes from ${MIN_SEGMENT_SIZE} (1 MiB) to ${MAX_SEGMENT_SIZE} (5 GiB)`);
  }

  const timeoutSeconds = options.timeoutSeconds ?? 60;
  if (typeof timeoutSeconds !== "number" || !(timeoutSeconds > 0) || timeoutSeconds > 3600) {
    throw invalid(`option "timeoutSeconds" must be a number of seconds above 0 and at most 3600`);
  }

  const parallelReads = options.parallelReads ?? 3;
  if (!Number.isSafeInteger(parallelReads) || (parallelReads as number) < 1 || (parallelReads as number) > 16) {
    throw invalid(`option "parallelReads" must be a whole number from 1 to 16`);
  }
  const readPartSize = options.readPartSize ?? 16 * MiB;
  if (!Number.isSafeInteger(readPartSize) || (readPartSize as number) < 64 * 1024 || (readPartSize as number) > 256 * MiB) {
    throw invalid(`option "readPartSize" must be a whole number of bytes from 65536 (64 KiB) to ${256 * MiB} (256 MiB)`);
  }

  const createContainer = options.createContainer ?? false;
  if (typeof createContainer !== "boolean") throw invalid(`option "createContainer" must be true or false`);

  return {
    auth,
    storageUrl: httpUrl(options, "storageUrl", false)?.replace(/\/+$/, ""),
    container,
    createContainer,
    segmentSize: segmentSize as number,
    tempUrlKey: text(options, "tempUrlKey", false),
    tempUrlDigest: oneOf(options, "tempUrlDigest", ["sha256", "sha512"] as const, "sha256"),
    timeoutMs: timeoutSeconds * 1000,
    parallelReads: parallelReads as number,
    readPartSize: readPartSize as number,
  };
}

function text(options: Record<string, unknown>, name: string, required: boolean, what?: string): string | undefined {
  const value = options[name];
  if (value === undefined || value === null) {
    if (required) throw invalid(`option "${name}" is required${what ? `: ${what}` : ""}`);
    return undefined;
  }
  if (typeof value !== "string" || value.trim() === "") throw invalid(`option "${name}" must be a non-empty string`);
  return value;
}

function httpUrl(options: Record<string, unknown>, name: string, required: boolean): string | undefined {
  const value = text(options, name, required);
  if (value === undefined) return undefined;
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw invalid(`option "${name}" must be an http:// or https:// URL`);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") throw invalid(`option "${name}" must be an http:// or https:// URL`);
  if (url.username || url.password) throw invalid(`option "${name}" must not carry credentials; use "user" and "key"`);
  return value;
}

function oneOf<T extends string>(options: Record<string, unknown>, name: string, allowed: readonly T[], fallback: T): T {
  const value = options[name] ?? fallback;
  if (!allowed.includes(value as T)) throw invalid(`option "${name}" must be one of ${allowed.map((a) => `"${a}"`).join(", ")}`);
  return value as T;
}

function invalid(message: string): StoreError {
  return new StoreError("invalid", message);
}
