/**
 * The service's own temporary URLs, for stores that cannot presign URLs themselves (the
 * filesystem store). A URL names one object of one store and one method, and expires:
 *
 *   BASE/v1/data/STORE/KEY?expires=UNIX_SECONDS&signature=HEX
 *
 * KEY is the object key with each '/'-separated segment percent-encoded. The signature is
 * HMAC-SHA256, under the service's secret key, of the canonical string
 *
 *   METHOD "\n" STORE "\n" KEY "\n" EXPIRES
 *
 * (HEAD is signed and verified as GET). METHOD, STORE and EXPIRES never contain a newline,
 * so the string is unambiguous even for keys that do: a URL signed for one object, store,
 * method or lifetime never verifies for another.
 */
import { createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import * as fs from "node:fs/promises";
import * as path from "node:path";

/** The least secret key length, in bytes (the HMAC-SHA256 output size). */
export const MIN_SIGNING_KEY_BYTES = 32;
/** The key file under the data directory, made on first start when no key is configured. */
export const SIGNING_KEY_FILE = "url-signing.key";

export type SignedMethod = "GET" | "PUT";
export type Verdict = "ok" | "expired" | "invalid";

/** The path prefix of every signed URL; the data endpoint serves it. */
export const DATA_PATH_PREFIX = "/v1/data/";

const EXPIRES = /^[0-9]{1,15}$/;
const SIGNATURE = /^[0-9a-fA-F]{64}$/;

export class UrlSigner {
  readonly #key: Buffer;

  constructor(key: Buffer) {
    if (!Buffer.isBuffer(key) || key.length < MIN_SIGNING_KEY_BYTES) {
      throw new Error(`the URL signing key must be at least ${MIN_SIGNING_KEY_BYTES} bytes`);
    }
    this.#key = Buffer.from(key); // a copy: later changes to the caller's buffer do not matter
  }

  /**
   * A URL for `method` on `key` in `store`, valid for `expiresInSeconds` (whole seconds,
   * rounded up; the expiry is a whole Unix second, so the URL lives at most that long).
   */
  url(
    base: string,
    method: SignedMethod,
    store: string,
    key: string,
    expiresInSeconds: number,
    now = Date.now(),
  ): { url: string; expireTime: Date } {
    if (method !== "GET" && method !== "PUT") throw new Error(`cannot sign a URL for method ${String(method)}`);
    checkStore(store);
    const segments = checkKey(key);
    if (!Number.isFinite(expiresInSeconds) || expiresInSeconds <= 0) {
      throw new Error(`a signed URL's lifetime must be a positive number of seconds, not ${String(expiresInSeconds)}`);
    }
    const expires = Math.floor(now / 1000) + Math.ceil(expiresInSeconds);
    const signature = this.#sign(method, store, key, String(expires));
    const encodedKey = segments.map(encodeURIComponent).join("/");
    const prefix = base.replace(/\/+$/, "");
    return {
      url: `${prefix}${DATA_PATH_PREFIX}${encodeURIComponent(store)}/${encodedKey}?expires=${expires}&signature=${signature}`,
      expireTime: new Date(expires * 1000),
    };
  }

  /**
   * Checks a URL's `expires` and `signature` for `method` on `key` in `store`. HEAD counts
   * as GET; any other method is invalid. The signature is checked before the expiry, so
   * "expired" is only ever said of URLs this service signed.
   */
  verify(method: string, store: string, key: string, expires: string, signature: string, now = Date.now()): Verdict {
    const signedAs = method === "HEAD" ? "GET" : method;
    if (signedAs !== "GET" && signedAs !== "PUT") return "invalid";
    if (typeof store !== "string" || store.includes("\n") || typeof key !== "string") return "invalid";
    if (typeof expires !== "string" || !EXPIRES.test(expires)) return "invalid";
    if (typeof signature !== "string" || !SIGNATURE.test(signature)) return "invalid";
    const expected = Buffer.from(this.#sign(signedAs, store, key, expires), "hex");
    const given = Buffer.from(signature, "hex");
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) return "invalid";
    return now < Number(expires) * 1000 ? "ok" : "expired";
  }

  #sign(method: SignedMethod, store: string, key: string, expires: string): string {
    return createHmac("sha256", this.#key).update(`${method}\n${store}\n${key}\n${expires}`, "utf8").digest("hex");
  }
}

/**
 * The URL signing key: the configured one (hex or base64, at least 32 bytes) if given;
 * else the one in `<dataDir>/url-signing.key`, made with 32 random bytes (mode 0600) on
 * first start. Several processes sharing one database must share one key: configure it,
 * or share the data directory.
 */
export async function loadSigningKey(dataDir: string, configured?: string): Promise<Buffer> {
  if (configured !== undefined) {
    const key = decodeKey(configured);
    if (key === undefined || key.length < MIN_SIGNING_KEY_BYTES) {
      throw new Error(
        `urlSigningKey: must be hex or base64 of at least ${MIN_SIGNING_KEY_BYTES} bytes ` +
          `(${MIN_SIGNING_KEY_BYTES * 2} hex digits), e.g. from: openssl rand -hex ${MIN_SIGNING_KEY_BYTES}`,
      );
    }
    return key;
  }

  const dir = path.resolve(dataDir);
  const file = path.join(dir, SIGNING_KEY_FILE);
  await fs.mkdir(dir, { recursive: true });
  const fresh = randomBytes(MIN_SIGNING_KEY_BYTES);
  let handle: fs.FileHandle | undefined;
  try {
    // "wx" (O_CREAT|O_EXCL): of several processes racing here exactly one creates the file.
    handle = await fs.open(file, "wx", 0o600);
  } catch (err) {
    if ((err as { code?: unknown }).code !== "EEXIST") {
      throw new Error(`cannot create the URL signing key file ${file}: ${describe(err)}`, { cause: err });
    }
  }
  if (handle !== undefined) {
    try {
      await handle.chmod(0o600); // whatever the umask
      await handle.writeFile(`${fresh.toString("hex")}\n`);
      await handle.sync();
    } catch (err) {
      await handle.close().catch(() => {});
      await fs.rm(file, { force: true }).catch(() => {});
      throw new Error(`cannot write the URL signing key file ${file}: ${describe(err)}`, { cause: err });
    }
    await handle.close();
    return fresh;
  }
  return readKeyFile(file);
}

/** Reads an existing key file, waiting briefly if another process is still writing it. */
async function readKeyFile(file: string): Promise<Buffer> {
  for (let attempt = 0; ; attempt++) {
    let text: string;
    try {
      text = await fs.readFile(file, "utf8");
    } catch (err) {
      throw new Error(`cannot read the URL signing key file ${file}: ${describe(err)}`, { cause: err });
    }
    const key = decodeKey(text);
    if (key !== undefined && key.length >= MIN_SIGNING_KEY_BYTES) return key;
    // A racing process created the file but has not written it yet.
    if (attempt >= 40) {
      throw new Error(
        `the URL signing key file ${file} does not hold a key of at least ${MIN_SIGNING_KEY_BYTES} bytes ` +
          `(hex or base64); remove it to have a new key made, or set urlSigningKey`,
      );
    }
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

/** Hex (an even number of hex digits) or base64/base64url; undefined when it is neither. */
function decodeKey(text: string): Buffer | undefined {
  const value = text.trim();
  if (value === "") return undefined;
  if (/^(?:[0-9a-fA-F]{2})+$/.test(value)) return Buffer.from(value, "hex");
  if (/^[A-Za-z0-9+/]+={0,2}$/.test(value) || /^[A-Za-z0-9_-]+={0,2}$/.test(value)) {
    const bytes = Buffer.from(value.replace(/-/g, "+").replace(/_/g, "/"), "base64");
    // Reject strings that are not canonical base64 of whole bytes (stray trailing bits).
    const canonical = bytes.toString("base64").replace(/=+$/, "");
    if (canonical !== value.replace(/-/g, "+").replace(/_/g, "/").replace(/=+$/, "")) return undefined;
    return bytes;
  }
  return undefined;
}

function checkStore(store: string): void {
  if (typeof store !== "string" || !/^[a-z0-9][a-z0-9-]{0,62}$/.test(store)) {
    throw new Error(`cannot sign a URL for store ${JSON.stringify(store)}: not a store name`);
  }
}

/**
 * The key's segments. Keys that a URL cannot carry unchanged (empty, empty segments, '.'
 * or '..' segments that clients would resolve away, NUL bytes) are refused.
 */
function checkKey(key: string): string[] {
  if (typeof key !== "string" || key === "") throw new Error("cannot sign a URL for an empty object key");
  const segments = key.split("/");
  if (key.includes("\0") || segments.some((s) => s === "" || s === "." || s === "..")) {
    throw new Error(`cannot sign a URL for object key ${JSON.stringify(key)}`);
  }
  return segments;
}

function describe(err: unknown): string {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === "string" ? code : err instanceof Error ? err.message : String(err);
}
