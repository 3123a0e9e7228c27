import { randomBytes } from "node:crypto";
import * as fs from "node:fs/promises";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { loadSigningKey, UrlSigner } from "../../src/core/signed-url.js";

const NOW = Date.UTC(2030, 0, 1, 12, 0, 0);
const BASE = "http://127.0.0.1:50051";

/** The `expires` and `signature` of a signed URL, and its path. */
function partsOf(url: string) {
  const parsed = new URL(url);
  return {
    path: parsed.pathname,
    expires: parsed.searchParams.get("expires")!,
    signature: parsed.searchParams.get("signature")!,
  };
}

describe("UrlSigner", () => {
  const signer = new UrlSigner(randomBytes(32));

  it("refuses keys shorter than 32 bytes", () => {
    expect(() => new UrlSigner(randomBytes(31))).toThrow(/32 bytes/);
  });

  it("builds BASE/v1/data/STORE/KEY?expires=SECONDS&signature=HEX", () => {
    const { url, expireTime } = signer.url(`${BASE}/`, "PUT", "local", "uploads/a b/ü.qcow2", 900, NOW);
    const expires = NOW / 1000 + 900;
    expect(url).toMatch(
      new RegExp(`^${BASE}/v1/data/local/uploads/a%20b/%C3%BC\\.qcow2\\?expires=${expires}&signature=[0-9a-f]{64}$`),
    );
    expect(expireTime.getTime()).toBe(expires * 1000);
  });

  it("verifies its own URLs, HEAD as GET", () => {
    const get = partsOf(signer.url(BASE, "GET", "local", "dir/image.raw", 60, NOW).url);
    expect(signer.verify("GET", "local", "dir/image.raw", get.expires, get.signature, NOW)).toBe("ok");
    expect(signer.verify("HEAD", "local", "dir/image.raw", get.expires, get.signature, NOW)).toBe("ok");
    const put = partsOf(signer.url(BASE, "PUT", "local", "dir/image.raw", 60, NOW).url);
    expect(signer.verify("PUT", "local", "dir/image.raw", put.expires, put.signature, NOW)).toBe("ok");
  });

  it("binds method, store, key and expiry", () => {
    const { expires, signature } = partsOf(signer.url(BASE, "GET", "local", "a/b", 60, NOW).url);
    expect(signer.verify("PUT", "local", "a/b", expires, signature, NOW)).toBe("invalid");
    expect(signer.verify("POST", "local", "a/b", expires, signature, NOW)).toBe("invalid");
    expect(signer.verify("GET", "other", "a/b", expires, signature, NOW)).toBe("invalid");
    expect(signer.verify("GET", "local", "a/c", expires, signature, NOW)).toBe("invalid");
    expect(signer.verify("GET", "local", "a/b\n", expires, signature, NOW)).toBe("invalid");
    expect(signer.verify("GET", "local", "a/b", String(Number(expires) + 1), signature, NOW)).toBe("invalid");
    expect(signer.verify("GET", "local", "a/b", `0${expires}`, signature, NOW)).toBe("invalid");
  });

  it("keeps fields apart: moving a newline between store and key does not verify", () => {
    const { expires, signature } = partsOf(signer.url(BASE, "GET", "a", "b", 60, NOW).url);
    expect(signer.verify("GET", "a\nb", "", expires, signature, NOW)).toBe("invalid");
  });

  it("rejects tampered, truncated and non-hex signatures", () => {
    const { expires, signature } = partsOf(signer.url(BASE, "GET", "local", "k", 60, NOW).url);
    const flipped = (signature[0] === "0" ? "1" : "0") + signature.slice(1);
    expect(signer.verify("GET", "local", "k", expires, flipped, NOW)).toBe("invalid");
    expect(signer.verify("GET", "local", "k", expires, signature.slice(0, 62), NOW)).toBe("invalid");
    expect(signer.verify("GET", "local", "k", expires, `${signature}00`, NOW)).toBe("invalid");
    expect(signer.verify("GET", "local", "k", expires, `${signature.slice(0, 62)}zz`, NOW)).toBe("invalid");
    expect(signer.verify("GET", "local", "k", expires, "", NOW)).toBe("invalid");
    expect(signer.verify("GET", "local", "k", expires, signature.toUpperCase(), NOW)).toBe("ok");
  });

  it("rejects malformed expiries", () => {
    const { signature } = partsOf(signer.url(BASE, "GET", "local", "k", 60, NOW).url);
    for (const expires of ["", "-1", "1e10", " 1", "12.5", "9".repeat(16)]) {
      expect(signer.verify("GET", "local", "k", expires, signature, NOW), expires).toBe("invalid");
    }
  });

  it("expires at the expiry second, and says so only of genuine URLs", () => {
    const { expires, signature } = partsOf(signer.url(BASE, "GET", "local", "k", 60, NOW).url);
    expect(signer.verify("GET", "local", "k", expires, signature, NOW + 59_999)).toBe("ok");
    expect(signer.verify("GET", "local", "k", expires, signature, NOW + 60_000)).toBe("expired");
    const other = new UrlSigner(randomBytes(32));
    expect(other.verify("GET", "local", "k", expires, signature, NOW + 60_000)).toBe("invalid");
  });

  it("does not verify URLs signed under another key", () => {
    const { expires, signature } = partsOf(signer.url(BASE, "GET", "local", "k", 60, NOW).url);
    expect(new UrlSigner(randomBytes(32)).verify("GET", "local", "k", expires, signature, NOW)).toBe("invalid");
  });

  it("refuses to sign what a URL cannot carry", () => {
    expect(() => signer.url(BASE, "GET", "local", "", 60, NOW)).toThrow();
    expect(() => signer.url(BASE, "GET", "local", "../etc/passwd", 60, NOW)).toThrow();
    expect(() => signer.url(BASE, "GET", "local", "a//b", 60, NOW)).toThrow();
    expect(() => signer.url(BASE, "GET", "Local Store", "a", 60, NOW)).toThrow();
    expect(() => signer.url(BASE, "GET", "local", "a", 0, NOW)).toThrow();
    expect(() => signer.url(BASE, "DELETE" as "GET", "local", "a", 60, NOW)).toThrow();
  });
});

describe("loadSigningKey", () => {
  let dir: string;
  beforeEach(async () => {
    dir = await fs.mkdtemp(path.join(tmpdir(), "itx-signing-key-"));
  });
  afterEach(async () => {
    await fs.rm(dir, { recursive: true, force: true });
  });

  it("creates a 0600 key file once and reuses it", async () => {
    const dataDir = path.join(dir, "data", "nested");
    const first = await loadSigningKey(dataDir);
    expect(first.length).toBe(32);
    const file = path.join(dataDir, "url-signing.key");
    const stats = await fs.stat(file);
    expect(stats.mode & 0o777).toBe(0o600);
    const second = await loadSigningKey(dataDir);
    expect(second.equals(first)).toBe(true);
    expect((await fs.stat(file)).mtimeMs).toBe(stats.mtimeMs);
  });

  it("ends with one key when several loaders race to create it", async () => {
    const keys = await Promise.all(Array.from({ length: 8 }, () => loadSigningKey(dir)));
    for (const key of keys) expect(key.equals(keys[0]!)).toBe(true);
  });

  it("prefers a configured key, hex or base64", async () => {
    const raw = randomBytes(32);
    expect((await loadSigningKey(dir, raw.toString("hex"))).equals(raw)).toBe(true);
    expect((await loadSigningKey(dir, raw.toString("base64"))).equals(raw)).toBe(true);
    expect((await loadSigningKey(dir, raw.toString("base64url"))).equals(raw)).toBe(true);
    await expect(fs.stat(path.join(dir, "url-signing.key"))).rejects.toThrow();
  });

  it("refuses a configured key that is too short or not hex/base64, naming urlSigningKey", async () => {
    await expect(loadSigningKey(dir, randomBytes(31).toString("hex"))).rejects.toThrow(/urlSigningKey/);
    await expect(loadSigningKey(dir, randomBytes(16).toString("base64"))).rejects.toThrow(/urlSigningKey/);
    await expect(loadSigningKey(dir, "not a key at all, though it is long enough to be one")).rejects.toThrow(
      /urlSigningKey/,
    );
  });

  it("refuses a damaged key file, naming it", async () => {
    await fs.writeFile(path.join(dir, "url-signing.key"), "short\n", { mode: 0o600 });
    await expect(loadSigningKey(dir)).rejects.toThrow(/url-signing\.key/);
  });
});
