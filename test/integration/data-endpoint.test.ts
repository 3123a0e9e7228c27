/**
 * The data endpoint over real HTTP (node:http and h2c on 127.0.0.1), in front of real
 * store-filesystem instances under a temp directory. No mocks.
 */
import { createHash, createHmac, randomBytes } from "node:crypto";
import * as fs from "node:fs/promises";
import http from "node:http";
import http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import definition from "../../plugins/store-filesystem/index.js";
import type { ConfiguredStore } from "../../src/core/stores.js";
import { UrlSigner } from "../../src/core/signed-url.js";
import type { StoreDriver, StoreInstance } from "../../src/plugins/plugin-api.js";
import { createDataEndpoint } from "../../src/server/data-endpoint.js";
import { listen } from "../../src/server/listener.js";
import { registerPlugin } from "../helpers/register-plugin.js";

const MiB = 1024 * 1024;
const BIG_CAP = 32 * MiB;
const SMALL_CAP = 1 * MiB;

interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

interface Server {
  origin: string;
  port: number;
  close(): Promise<void>;
}

type Body = Buffer | (() => AsyncIterable<Uint8Array>);

let base: string;
let dataDir: string;
let root: string; // the "local" store's root
let otherRoot: string; // the "other" store's root
let local: StoreInstance;
let secret: Buffer;
let signer: UrlSigner;
let big: Server;
let small: Server;
const logLines: string[] = [];
const stores: ConfiguredStore[] = [];

async function registerDriver(): Promise<StoreDriver> {
  const { stores, converters } = await registerPlugin(definition);
  expect(converters, "a store plugin must not register converters").toHaveLength(0);
  expect(stores).toHaveLength(1);
  return stores[0]!;
}

async function startServer(maxImageBytes: number): Promise<Server> {
  const logger = pino({ level: "debug" }, { write: (line: string) => void logLines.push(line) });
  const handler = createDataEndpoint({ stores, signer, maxImageBytes, logger });
  const server = http.createServer(handler);
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    origin: `http://127.0.0.1:${port}`,
    port,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

/** The path and query of a signed URL (the host part is the server under test). */
function signed(method: "GET" | "PUT", key: string, options: { store?: string; ttl?: number; now?: number } = {}) {
  const { url } = signer.url("http://unused.example", method, options.store ?? "local", key, options.ttl ?? 300, options.now);
  const parsed = new URL(url);
  return parsed.pathname + parsed.search;
}

/** A signed path built by hand (the documented canonical string), for keys url() refuses to sign. */
function handSigned(method: "GET" | "PUT", store: string, key: string, rawPath: string): string {
  const expires = Math.floor(Date.now() / 1000) + 300;
  const signature = createHmac("sha256", secret).update(`${method}\n${store}\n${key}\n${expires}`).digest("hex");
  return `${rawPath}?expires=${expires}&signature=${signature}`;
}

/** One HTTP/1.1 request on its own connection; `target` is sent as is, never normalised. */
function send(
  server: Server,
  method: string,
  target: string,
  options: { headers?: http.OutgoingHttpHeaders; body?: Body } = {},
): Promise<Reply> {
  return new Promise<Reply>((resolve, reject) => {
    let replied = false;
    const req = http.request(
      { host: "127.0.0.1", port: server.port, method, path: target, headers: options.headers, agent: false },
      (res) => {
        replied = true;
        const parts: Buffer[] = [];
        res.on("data", (chunk: Buffer) => parts.push(chunk));
        res.on("end", () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(parts) }));
        res.on("error", reject);
      },
    );
    // Once the answer is in, a server that stops reading (413) may reset the connection.
    req.on("error", (err) => {
      if (!replied) reject(err);
    });
    const body = options.body;
    if (body === undefined) req.end();
    else if (Buffer.isBuffer(body)) req.end(body);
    else void pump(req, body(), () => replied);
  });
}

async function pump(req: http.ClientRequest, source: AsyncIterable<Uint8Array>, stop: () => boolean) {
  try {
    for await (const chunk of source) {
      if (stop() || req.destroyed) return;
      if (!req.write(chunk)) {
        await new Promise<void>((resolve) => {
          const done = () => {
            req.off("drain", done);
            req.off("close", done);
            resolve();
          };
          req.on("drain", done);
          req.on("close", done);
        });
      }
    }
    req.end();
  } catch {
    req.destroy();
  }
}

/** `total` pseudo-random bytes in 64 KiB chunks; `hash` sees every byte that is produced. */
function generated(total: number, hash?: ReturnType<typeof createHash>): () => AsyncGenerator<Uint8Array> {
  return async function* () {
    let left = total;
    while (left > 0) {
      const chunk = randomBytes(Math.min(64 * 1024, left));
      hash?.update(chunk);
      left -= chunk.length;
      yield chunk;
    }
  };
}

const sha256 = (data: Buffer) => createHash("sha256").update(data).digest("hex");

/** Every file and directory under `dir`, as relative paths, sorted. */
async function tree(dir: string): Promise<string[]> {
  const entries = await fs.readdir(dir, { recursive: true });
  return entries.map(String).sort();
}

async function waitFor(check: () => Promise<boolean>, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

async function clearRoots() {
  for (const dir of [root, otherRoot]) {
    for (const entry of await fs.readdir(dir)) await fs.rm(path.join(dir, entry), { recursive: true, force: true });
  }
}

beforeAll(async () => {
  base = await fs.realpath(await fs.mkdtemp(path.join(tmpdir(), "itx-data-endpoint-")));
  dataDir = path.join(base, "data");
  const driver = await registerDriver();
  const open = async (name: string, dir: string) =>
    driver.open({ name, region: "test", options: { root: dir }, dataDir });
  local = await open("local", "images");
  const other = await open("other", "other");
  root = path.join(dataDir, "images");
  otherRoot = path.join(dataDir, "other");
  const common = { plugin: "store-filesystem", region: "test", schemes: ["file"], capabilities: driver.capabilities };
  stores.push(
    { ...common, name: "local", isDefault: true, isStaging: true, instance: local },
    { ...common, name: "other", isDefault: false, isStaging: false, instance: other },
    { ...common, name: "broken", isDefault: false, isStaging: false, error: "cannot open: test" },
  );
  secret = randomBytes(32);
  signer = new UrlSigner(secret);
  big = await startServer(BIG_CAP);
  small = await startServer(SMALL_CAP);
});

afterAll(async () => {
  await big?.close();
  await small?.close();
  if (base) await fs.rm(base, { recursive: true, force: true });
});

describe("uploads and downloads", () => {
  it("round-trips a PUT and a GET", async () => {
    const data = randomBytes(100_000);
    const put = await send(big, "PUT", signed("PUT", "uploads/first image.qcow2"), { body: data });
    expect(put.status).toBe(201);
    expect(put.headers["content-type"]).toBe("application/json");
    expect(JSON.parse(put.body.toString())).toEqual({ size: data.length });
    expect(await fs.readFile(path.join(root, "uploads", "first image.qcow2"))).toEqual(data);

    const get = await send(big, "GET", signed("GET", "uploads/first image.qcow2"));
    expect(get.status).toBe(200);
    expect(get.headers["content-type"]).toBe("application/octet-stream");
    expect(get.headers["content-length"]).toBe(String(data.length));
    expect(get.headers["accept-ranges"]).toBe("bytes");
    expect(get.body.equals(data)).toBe(true);
  });

  it.each([
    ["with Content-Length", true],
    ["chunked", false],
  ])("streams a 20 MiB upload %s and serves it back intact", async (_name, withLength) => {
    const size = 20 * MiB;
    const hash = createHash("sha256");
    const key = `big/${withLength ? "sized" : "chunked"}.raw`;
    const put = await send(big, "PUT", signed("PUT", key), {
      headers: withLength ? { "Content-Length": size } : { "Transfer-Encoding": "chunked" },
      body: generated(size, hash),
    });
    expect(put.status, put.body.toString()).toBe(201);
    expect(JSON.parse(put.body.toString())).toEqual({ size });
    const sent = hash.digest("hex");

    const get = await send(big, "GET", signed("GET", key));
    expect(get.status).toBe(200);
    expect(get.body.length).toBe(size);
    expect(sha256(get.body)).toBe(sent);
  });

  it("overwrites an object atomically and reports an empty upload", async () => {
    expect((await send(big, "PUT", signed("PUT", "again.raw"), { body: Buffer.from("one") })).status).toBe(201);
    const put = await send(big, "PUT", signed("PUT", "again.raw"), { body: Buffer.alloc(0) });
    expect(put.status).toBe(201);
    expect(JSON.parse(put.body.toString())).toEqual({ size: 0 });
    const get = await send(big, "GET", signed("GET", "again.raw"));
    expect(get.status).toBe(200);
    expect(get.body.length).toBe(0);
  });

  it("answers 404 for a missing object", async () => {
    const get = await send(big, "GET", signed("GET", "no/such/object"));
    expect(get.status).toBe(404);
    expect(get.body.toString()).toBe("no such object\n");
    expect((await send(big, "HEAD", signed("GET", "no/such/object"))).status).toBe(404);
  });
});

describe("signatures", () => {
  it("refuses an expired URL and writes nothing", async () => {
    const target = signed("PUT", "late.raw", { ttl: 60, now: Date.now() - 3_600_000 });
    const put = await send(big, "PUT", target, { body: Buffer.from("too late") });
    expect(put.status).toBe(403);
    expect(put.body.toString()).toBe("URL expired\n");
    expect(await local.stat("late.raw")).toBeUndefined();
  });

  it("refuses requests without a signature", async () => {
    for (const target of ["/v1/data/local/x.raw", "/v1/data/local/x.raw?expires=99999999999", "/v1/data/local/x.raw?signature=00"]) {
      const put = await send(big, "PUT", target, { body: Buffer.from("x") });
      expect(put.status, target).toBe(403);
      expect(put.body.toString()).toBe("missing signature\n");
    }
    expect(await local.stat("x.raw")).toBeUndefined();
  });

  it("refuses tampered signatures and URLs reused for another key, store or method; writes nothing", async () => {
    await clearRoots();
    const good = signed("PUT", "victim.raw");
    const signature = new URL(good, "http://x").searchParams.get("signature")!;
    const flipped = good.replace(signature, (signature[0] === "a" ? "b" : "a") + signature.slice(1));
    const otherKey = good.replace("/victim.raw?", "/other.raw?");
    const otherStore = good.replace("/v1/data/local/", "/v1/data/other/");
    const getUrl = signed("GET", "victim.raw");
    const cases: Array<[string, string]> = [
      ["tampered", flipped],
      ["another key", otherKey],
      ["another store", otherStore],
      ["a GET URL used for PUT", getUrl],
      ["a repeated signature", `${good}&signature=${signature}`],
      ["a later expiry", good.replace(/expires=(\d+)/, (_m, e: string) => `expires=${Number(e) + 1}`)],
    ];
    for (const [name, target] of cases) {
      const put = await send(big, "PUT", target, { body: randomBytes(1000) });
      expect(put.status, name).toBe(403);
      expect(put.body.toString(), name).toBe("invalid signature\n");
    }
    expect(await tree(root)).toEqual([]);
    expect(await tree(otherRoot)).toEqual([]);

    // A PUT URL does not download either.
    await send(big, "PUT", good, { body: Buffer.from("secret") });
    expect((await send(big, "GET", good)).status).toBe(403);
    expect((await send(big, "HEAD", good)).status).toBe(403);
    expect((await send(big, "GET", getUrl)).body.toString()).toBe("secret");
  });

  it("answers 404 for an unknown store or one that did not open, once the signature holds", async () => {
    expect((await send(big, "GET", signed("GET", "a.raw", { store: "nowhere" }))).status).toBe(404);
    const put = await send(big, "PUT", signed("PUT", "a.raw", { store: "broken" }), { body: Buffer.from("x") });
    expect(put.status).toBe(404);
    expect(put.body.toString()).toBe("no such store\n");
    // Unsigned, the same request learns nothing about stores.
    expect((await send(big, "GET", "/v1/data/nowhere/a.raw")).status).toBe(403);
  });

  it("never lets a key leave the store root", async () => {
    await clearRoots();
    const outside = path.join(dataDir, "escape.txt");
    // Signed for a harmless key, sent with a path that climbs out.
    const harmless = new URL(signed("PUT", "harmless.raw"), "http://x").search;
    for (const raw of ["/v1/data/local/../escape.txt", "/v1/data/local/%2E%2E/escape.txt", "/v1/data/local/a/..%2F..%2Fescape.txt"]) {
      const put = await send(big, "PUT", raw + harmless, { body: Buffer.from("x") });
      expect(put.status, raw).toBe(403);
    }
    // Even correctly signed (by hand: the signer refuses such keys), they are refused.
    for (const [key, raw] of [
      ["../escape.txt", "/v1/data/local/../escape.txt"],
      ["../escape.txt", "/v1/data/local/%2E%2E/escape.txt"],
      ["a/../../escape.txt", "/v1/data/local/a/../../escape.txt"],
      ["/etc/passwd", "/v1/data/local/%2Fetc/passwd"],
    ] as const) {
      const put = await send(big, "PUT", handSigned("PUT", "local", key, raw), { body: Buffer.from("x") });
      expect(put.status, raw).toBe(400);
      const get = await send(big, "GET", handSigned("GET", "local", key, raw));
      expect(get.status, raw).toBe(400);
    }
    await expect(fs.stat(outside)).rejects.toThrow();
    expect(await tree(root)).toEqual([]);
    expect(await tree(dataDir)).toEqual(["images", "other"]);
  });

  it("never logs signatures or query strings", async () => {
    const put = signed("PUT", "logged.raw");
    const target = signed("GET", "logged.raw");
    const signatures = [put, target].map((t) => new URL(t, "http://x").searchParams.get("signature")!);
    logLines.length = 0;
    expect((await send(big, "PUT", put, { body: Buffer.from("logged") })).status).toBe(201);
    expect((await send(big, "GET", target)).status).toBe(200);
    // Change the signature's first digit (to one it is not), so the URL is always forged.
    const forged = target.replace(/signature=(.)/, (_, digit: string) => `signature=${digit === "0" ? "1" : "0"}`);
    expect((await send(big, "GET", forged)).status).toBe(403);
    const parsed = () => logLines.map((l) => JSON.parse(l) as Record<string, unknown>);
    await waitFor(async () => parsed().filter((l) => l.key === "logged.raw").length >= 2, "log lines");
    const text = logLines.join("");
    for (const signature of signatures) expect(text).not.toContain(signature);
    expect(text).not.toContain("signature=");
    expect(text).not.toContain("expires=");
    const lines = parsed().filter((l) => l.key === "logged.raw");
    expect(lines[0]).toMatchObject({ level: 20, method: "PUT", store: "local", status: 201, bytes: 6 });
    expect(lines[1]).toMatchObject({ level: 20, method: "GET", store: "local", status: 200, bytes: 6 });
    expect(typeof lines[1]!.durationMs).toBe("number");
    expect(parsed().some((l) => l.status === 403 && l.method === "GET")).toBe(true);
  });
});

describe("size limit and aborted uploads", () => {
  it("answers 413 at once to a Content-Length above the cap, reading nothing", async () => {
    const status = await new Promise<number>((resolve, reject) => {
      const req = http.request({
        host: "127.0.0.1",
        port: small.port,
        method: "PUT",
        path: signed("PUT", "huge.raw"),
        headers: { "Content-Length": SMALL_CAP + 1 },
        agent: false,
      });
      req.on("response", (res) => {
        res.resume();
        resolve(res.statusCode!);
        req.destroy();
      });
      req.on("error", reject);
      req.flushHeaders(); // headers only: the body is never sent
    });
    expect(status).toBe(413);
    expect(await local.stat("huge.raw")).toBeUndefined();
  });

  it("answers 413 to a chunked body that grows past the cap and leaves no file or temp file", async () => {
    await clearRoots();
    const put = await send(small, "PUT", signed("PUT", "deep/chunked-huge.raw"), {
      headers: { "Transfer-Encoding": "chunked" },
      body: generated(SMALL_CAP * 4),
    });
    expect(put.status).toBe(413);
    expect(put.body.toString()).toBe(`image larger than ${SMALL_CAP} bytes\n`);
    await waitFor(async () => (await tree(root)).length === 0, "an empty store root");
  });

  it("accepts a chunked body of exactly the cap", async () => {
    const put = await send(small, "PUT", signed("PUT", "exact.raw"), {
      headers: { "Transfer-Encoding": "chunked" },
      body: generated(SMALL_CAP),
    });
    expect(put.status).toBe(201);
    expect(JSON.parse(put.body.toString())).toEqual({ size: SMALL_CAP });
  });

  it("aborts the write when the client disconnects mid-upload, leaving nothing", async () => {
    await clearRoots();
    let sent = 0;
    const req = http.request({
      host: "127.0.0.1",
      port: big.port,
      method: "PUT",
      path: signed("PUT", "aborted/upload.raw"),
      headers: { "Transfer-Encoding": "chunked" },
      agent: false,
    });
    req.on("error", () => {});
    const stopped = pump(
      req,
      (async function* () {
        for (;;) {
          const chunk = randomBytes(64 * 1024);
          sent += chunk.length;
          yield chunk;
        }
      })(),
      () => false,
    );
    // Wait until the store is writing its temp file, then vanish.
    await waitFor(async () => sent > 2 * MiB && (await tree(root)).some((p) => p.includes(".tmp-")), "a temp file");
    req.destroy();
    await stopped;
    await waitFor(async () => (await tree(root)).length === 0, "the temp file and its directory to go");
    expect(await local.stat("aborted/upload.raw")).toBeUndefined();
  });
});

describe("downloads: ranges, HEAD and validators", () => {
  const key = "ranges/object.bin";
  const data = randomBytes(1000);

  beforeAll(async () => {
    const put = await send(big, "PUT", signed("PUT", key), { body: data });
    expect(put.status).toBe(201);
  });

  const get = (headers: http.OutgoingHttpHeaders) => send(big, "GET", signed("GET", key), { headers });

  it.each([
    ["the first byte", "bytes=0-0", 0, 0],
    ["the last 10 bytes", "bytes=-10", 990, 999],
    ["the middle", "bytes=100-199", 100, 199],
    ["open-ended", "bytes=990-", 990, 999],
    ["an end past the object, clamped", "bytes=995-5000", 995, 999],
    ["a suffix longer than the object", "bytes=-5000", 0, 999],
  ])("serves %s (%s) as 206", async (_name, range, start, end) => {
    const reply = await get({ Range: range });
    expect(reply.status).toBe(206);
    expect(reply.headers["content-range"]).toBe(`bytes ${start}-${end}/1000`);
    expect(reply.headers["content-length"]).toBe(String(end - start + 1));
    expect(reply.body.equals(data.subarray(start, end + 1))).toBe(true);
  });

  it.each(["bytes=1000-", "bytes=5000-6000", "bytes=-0"])("answers 416 to %s", async (range) => {
    const reply = await get({ Range: range });
    expect(reply.status).toBe(416);
    expect(reply.headers["content-range"]).toBe("bytes */1000");
  });

  it.each(["bytes=0-1,5-6", "bytes=5-1", "bytes=abc", "items=0-1", "bytes=", "bytes=-"])(
    "serves the whole object for a multi-range or malformed header (%s)",
    async (range) => {
      const reply = await get({ Range: range });
      expect(reply.status).toBe(200);
      expect(reply.headers["content-range"]).toBeUndefined();
      expect(reply.body.equals(data)).toBe(true);
    },
  );

  it("answers HEAD with the headers only", async () => {
    const reply = await send(big, "HEAD", signed("GET", key), { headers: { Range: "bytes=0-0" } });
    expect(reply.status).toBe(200);
    expect(reply.body.length).toBe(0);
    expect(reply.headers["content-length"]).toBe("1000");
    expect(reply.headers["content-type"]).toBe("application/octet-stream");
    expect(reply.headers["accept-ranges"]).toBe("bytes");
    expect(reply.headers.etag).toMatch(/^"[0-9a-f]+-[0-9a-f]+"$/);
    expect(new Date(reply.headers["last-modified"]!).getTime()).toBeGreaterThan(0);
  });

  it("keeps the ETag stable and honours If-Range only when it matches", async () => {
    const first = await get({});
    const second = await send(big, "HEAD", signed("GET", key));
    expect(first.headers.etag).toBeDefined();
    expect(second.headers.etag).toBe(first.headers.etag);
    expect(second.headers["last-modified"]).toBe(first.headers["last-modified"]);

    const matching = await get({ Range: "bytes=10-19", "If-Range": first.headers.etag! });
    expect(matching.status).toBe(206);
    expect(matching.body.equals(data.subarray(10, 20))).toBe(true);

    for (const ifRange of ['"something-else"', `W/${first.headers.etag!}`, "Thu, 01 Jan 1970 00:00:00 GMT"]) {
      const stale = await get({ Range: "bytes=10-19", "If-Range": ifRange });
      expect(stale.status, ifRange).toBe(200);
      expect(stale.body.equals(data)).toBe(true);
    }
  });

  it("changes the ETag when the object is replaced", async () => {
    const before = (await send(big, "HEAD", signed("GET", "etag.bin"))).headers.etag;
    expect(before).toBeUndefined(); // 404 has none
    await send(big, "PUT", signed("PUT", "etag.bin"), { body: Buffer.from("one") });
    const one = (await send(big, "HEAD", signed("GET", "etag.bin"))).headers.etag;
    await new Promise((resolve) => setTimeout(resolve, 5));
    await send(big, "PUT", signed("PUT", "etag.bin"), { body: Buffer.from("two!") });
    const two = (await send(big, "HEAD", signed("GET", "etag.bin"))).headers.etag;
    expect(one).toBeDefined();
    expect(two).not.toBe(one);
  });
});

describe("downloads larger than the reused buffers", () => {
  // The file store hands the endpoint open files, read into 4 buffers of 1 MiB that are reused
  // as the connection takes them: a buffer reused too early would corrupt a slow client's bytes.
  const key = "big/object.bin";
  const data = randomBytes(9 * MiB + 5);

  beforeAll(async () => {
    expect((await send(big, "PUT", signed("PUT", key), { body: data })).status).toBe(201);
  });

  /** A GET over HTTP/1.1 by a client that stops for a moment after each chunk; `onChunk` sees the bytes so far. */
  function slowGet(headers: http.OutgoingHttpHeaders, onChunk?: (received: number) => Promise<void>): Promise<Reply> {
    return new Promise<Reply>((resolve, reject) => {
      const req = http.get({ host: "127.0.0.1", port: big.port, path: signed("GET", key), headers, agent: false }, (res) => {
        const parts: Buffer[] = [];
        let received = 0;
        res.on("data", (chunk: Buffer) => {
          parts.push(chunk);
          received += chunk.length;
          res.pause();
          void Promise.all([new Promise((r) => setTimeout(r, 2)), onChunk?.(received)]).then(() => res.resume(), reject);
        });
        res.on("end", () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(parts) }));
        res.on("error", reject);
      });
      req.on("error", reject);
    });
  }

  it("sends a slow reader every byte, whole and as a range across buffer boundaries", async () => {
    const whole = await slowGet({});
    expect(whole.status).toBe(200);
    expect(sha256(whole.body)).toBe(sha256(data));
    const ranged = await slowGet({ Range: `bytes=${MiB - 7}-${5 * MiB + 11}` });
    expect(ranged.status).toBe(206);
    expect(sha256(ranged.body)).toBe(sha256(data.subarray(MiB - 7, 5 * MiB + 12)));
  });

  it("sends the object it started with when the object is replaced mid-way, under that object's ETag", async () => {
    const before = (await send(big, "HEAD", signed("GET", key))).headers.etag;
    const replacement = randomBytes(3 * MiB);
    let replaced = false;
    const reply = await slowGet({}, async (received) => {
      if (replaced || received < 2 * MiB) return;
      replaced = true;
      await new Promise((r) => setTimeout(r, 5)); // a new modification time, so a new ETag
      expect((await send(big, "PUT", signed("PUT", key), { body: replacement })).status).toBe(201);
    });
    expect(replaced).toBe(true);
    expect(reply.headers.etag).toBe(before);
    expect(sha256(reply.body)).toBe(sha256(data));
    expect((await send(big, "HEAD", signed("GET", key))).headers.etag).not.toBe(before);
    expect((await send(big, "PUT", signed("PUT", key), { body: data })).status).toBe(201);
  });
});

describe("other paths and methods", () => {
  it.each(["/", "/v1/data", "/v1/data/", "/v1/data/local", "/v1/data/local/", "/v1/other/local/x", "/imagetransfer.v1.AdminService/ListStores"])(
    "answers 404 to %s",
    async (target) => {
      const reply = await send(big, "GET", target);
      expect(reply.status).toBe(404);
      expect(reply.body.toString()).toBe("not found\n");
    },
  );

  it.each(["POST", "DELETE", "PATCH", "OPTIONS"])("answers 405 to %s with Allow", async (method) => {
    const reply = await send(big, method, signed("PUT", "some.raw"), {
      headers: { "Content-Length": 1 },
      body: Buffer.from("x"),
    });
    expect(reply.status).toBe(405);
    expect(reply.headers.allow).toBe("GET, HEAD, PUT");
    expect(await local.stat("some.raw")).toBeUndefined();
  });

  it("answers errors with one short line of plain text", async () => {
    const reply = await send(big, "GET", "/v1/data/local/x?expires=1&signature=zz");
    expect(reply.status).toBe(403);
    expect(reply.headers["content-type"]).toBe("text/plain; charset=utf-8");
    expect(reply.body.toString()).toMatch(/^[^\n]{1,80}\n$/);
  });
});

describe("over HTTP/2", () => {
  it("uploads and serves a range through the same handler", async () => {
    const logger = pino({ level: "silent" });
    const server = http2.createServer(createDataEndpoint({ stores, signer, maxImageBytes: BIG_CAP, logger }));
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const client = http2.connect(`http://127.0.0.1:${(server.address() as AddressInfo).port}`);
    const request = (headers: http2.OutgoingHttpHeaders, body?: Buffer) =>
      new Promise<{ status: number; headers: http2.IncomingHttpHeaders; body: Buffer }>((resolve, reject) => {
        const stream = client.request(headers);
        const parts: Buffer[] = [];
        let responseHeaders: http2.IncomingHttpHeaders = {};
        stream.on("response", (h) => (responseHeaders = h));
        stream.on("data", (chunk: Buffer) => parts.push(chunk));
        stream.on("end", () =>
          resolve({ status: Number(responseHeaders[":status"]), headers: responseHeaders, body: Buffer.concat(parts) }),
        );
        stream.on("error", reject);
        stream.end(body);
      });
    try {
      const data = randomBytes(300_000);
      const put = await request({ ":method": "PUT", ":path": signed("PUT", "h2/image.raw") }, data);
      expect(put.status).toBe(201);
      expect(JSON.parse(put.body.toString())).toEqual({ size: data.length });
      const ranged = await request({ ":method": "GET", ":path": signed("GET", "h2/image.raw"), range: "bytes=-100" });
      expect(ranged.status).toBe(206);
      expect(ranged.body.equals(data.subarray(data.length - 100))).toBe(true);
      const denied = await request({ ":method": "PUT", ":path": signed("GET", "h2/image.raw") }, data);
      expect(denied.status).toBe(403);
    } finally {
      client.close();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });
});

describe("behind the one-port listener", () => {
  it("serves HTTP/1.1 uploads and HTTP/2 downloads on one port", async () => {
    const logger = pino({ level: "silent" });
    const listener = await listen(createDataEndpoint({ stores, signer, maxImageBytes: BIG_CAP, logger }), {
      address: "127.0.0.1:0",
    });
    const server: Server = { origin: listener.url, port: listener.port, close: () => listener.close() };
    const client = http2.connect(listener.url);
    try {
      const hash = createHash("sha256");
      const put = await send(server, "PUT", signed("PUT", "listener/image.raw"), {
        headers: { "Transfer-Encoding": "chunked" },
        body: generated(3 * MiB, hash),
      });
      expect(put.status).toBe(201);
      const body = await new Promise<Buffer>((resolve, reject) => {
        const stream = client.request({ ":method": "GET", ":path": signed("GET", "listener/image.raw") });
        const parts: Buffer[] = [];
        stream.on("data", (chunk: Buffer) => parts.push(chunk));
        stream.on("end", () => resolve(Buffer.concat(parts)));
        stream.on("error", reject);
        stream.end();
      });
      expect(sha256(body)).toBe(hash.digest("hex"));
    } finally {
      client.close();
      await server.close();
    }
  });
});
