/**
 * store-swift pieces that need no Swift: the TempURL signature against openssl's HMAC of
 * the documented "METHOD\nEXPIRES\nPATH", option checking, and the Keystone v3 login
 * (which cannot run here) against a small fake identity + object server.
 */
import { execFile } from "node:child_process";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { promisify } from "node:util";
import { afterEach, describe, expect, it } from "vitest";
import { PassThrough } from "node:stream";
import { parseOptions } from "../../plugins/store-swift/options.js";
import { PartsReader, segmentParts, split, type Part } from "../../plugins/store-swift/parallel-read.js";
import { tempUrl, tempUrlSignature } from "../../plugins/store-swift/temp-url.js";
import { isStoreError } from "../../src/plugins/plugin-api.js";
import { openSwiftStore } from "../helpers/swift.js";

const run = promisify(execFile);

async function opensslHmac(digest: string, key: string, message: string): Promise<string> {
  const child = run("openssl", ["dgst", `-${digest}`, "-hmac", key, "-r"]);
  child.child.stdin!.end(message);
  return (await child).stdout.split(" ")[0]!;
}

function invalidMessage(options: Record<string, unknown>): string {
  try {
    parseOptions(options);
  } catch (err) {
    expect(isStoreError(err) && err.kind).toBe("invalid");
    return (err as Error).message;
  }
  return expect.unreachable("the options were accepted");
}

const base = { authUrl: "http://127.0.0.1:1/auth/v1.0", user: "acct:user", key: "secret", container: "images" };

describe("TempURL signature", () => {
  it.each(["sha256", "sha512"] as const)("is the %s HMAC of METHOD, EXPIRES and PATH joined by newlines", async (digest) => {
    const path = "/v1/AUTH_test/images/uploads/0b5e";
    const expected = await opensslHmac(digest, "the key", `PUT\n1800000000\n${path}`);
    expect(tempUrlSignature(digest, "the key", "PUT", 1800000000, path)).toBe(expected);
    expect(expected).toHaveLength(digest === "sha256" ? 64 : 128);
  });

  it("signs the decoded path and puts the encoded one in the URL", () => {
    const url = tempUrl("https://swift.example.com:8443/v1/AUTH_x", "/v1/AUTH_x/c/a b/ü", "ab", 5);
    expect(url).toBe("https://swift.example.com:8443/v1/AUTH_x/c/a%20b/%C3%BC?temp_url_sig=ab&temp_url_expires=5");
  });
});

describe("options", () => {
  it("accepts tempauth settings with defaults", () => {
    expect(parseOptions(base)).toMatchObject({
      auth: { version: "1.0", user: "acct:user" },
      container: "images",
      createContainer: false,
      segmentSize: 1024 ** 3,
      tempUrlDigest: "sha256",
      timeoutMs: 60_000,
    });
  });

  it("names the option and what it wants", () => {
    expect(invalidMessage({ ...base, colour: "blue" })).toMatch(/unknown option "colour"; the Swift store accepts authUrl/);
    expect(invalidMessage({ ...base, authUrl: undefined })).toBe(`option "authUrl" is required`);
    expect(invalidMessage({ ...base, authUrl: "ftp://x/auth" })).toBe(`option "authUrl" must be an http:// or https:// URL`);
    expect(invalidMessage({ ...base, container: undefined })).toMatch(/option "container" is required: the Swift container/);
    expect(invalidMessage({ ...base, container: "a/b" })).toMatch(/option "container" must be a container name/);
    expect(invalidMessage({ ...base, user: "nocolon" })).toMatch(/option "user" must be "account:user" for tempauth/);
    expect(invalidMessage({ ...base, segmentSize: 1000 })).toMatch(/option "segmentSize" must be a whole number of bytes from 1048576/);
    expect(invalidMessage({ ...base, segmentSize: 6 * 1024 ** 3 })).toMatch(/to 5368709120 \(5 GiB\)/);
    expect(invalidMessage({ ...base, tempUrlDigest: "sha1" })).toBe(`option "tempUrlDigest" must be one of "sha256", "sha512"`);
    expect(invalidMessage({ ...base, authVersion: "2" })).toBe(`option "authVersion" must be one of "1.0", "3"`);
    expect(invalidMessage({ ...base, authVersion: "3" })).toMatch(/option "project" is required/);
    expect(invalidMessage({ ...base, createContainer: "yes" })).toBe(`option "createContainer" must be true or false`);
    expect(invalidMessage({ ...base, authUrl: "http://u:p@host/auth" })).toMatch(/must not carry credentials/);
    expect(invalidMessage({ ...base, parallelReads: 0 })).toBe(`option "parallelReads" must be a whole number from 1 to 16`);
    expect(invalidMessage({ ...base, readPartSize: 1000 })).toMatch(/option "readPartSize" must be a whole number of bytes from 65536/);
  });
});

describe("Keystone v3 login (against a fake)", () => {
  let server: Server | undefined;
  afterEach(() => new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve())));

  /** A fake Keystone at /v3 and Swift account at /v1/AUTH_p (the catalog's public endpoint in region two). */
  async function fakeCloud(handle?: (req: IncomingMessage, res: ServerResponse, body: string) => boolean) {
    const seen = { logins: [] as Array<Record<string, any>>, tokens: [] as string[], issued: 0 };
    server = createServer((req, res) => {
      let body = "";
      req.on("data", (c: Buffer) => (body += c.toString()));
      req.on("end", () => {
        if (handle?.(req, res, body)) return;
        const origin = `http://127.0.0.1:${(server!.address() as { port: number }).port}`;
        if (req.method === "POST" && req.url === "/v3/auth/tokens") {
          const login = JSON.parse(body);
          seen.logins.push(login);
          if (login.auth.identity.password.user.password !== "pw") {
            res.writeHead(401).end();
            return;
          }
          seen.issued++;
          res.writeHead(201, { "x-subject-token": `token-${seen.issued}`, "content-type": "application/json" });
          res.end(
            JSON.stringify({
              token: {
                expires_at: new Date(Date.now() + 3600_000).toISOString(),
                catalog: [
                  { type: "identity", endpoints: [{ interface: "public", region: "two", url: `${origin}/v3` }] },
                  {
                    type: "object-store",
                    endpoints: [
                      { interface: "public", region: "one", url: `${origin}/wrong-region` },
                      { interface: "internal", region: "two", url: `${origin}/wrong-interface` },
                      { interface: "public", region: "two", url: `${origin}/v1/AUTH_p` },
                    ],
                  },
                ],
              },
            }),
          );
          return;
        }
        seen.tokens.push(String(req.headers["x-auth-token"]));
        if (!req.url!.startsWith("/v1/AUTH_p")) res.writeHead(404).end();
        else if (req.url === "/v1/AUTH_p") res.writeHead(204, { "x-account-meta-temp-url-key": "k" }).end();
        else if (req.method === "HEAD") res.writeHead(204).end();
        else res.writeHead(200, { "content-length": "5" }).end("hello");
      });
    });
    await new Promise<void>((resolve) => server!.listen(0, "127.0.0.1", resolve));
    const url = `http://127.0.0.1:${(server!.address() as { port: number }).port}/v3`;
    return { url, seen };
  }

  const keystone = (url: string, extra: Record<string, unknown> = {}) => ({
    authUrl: url,
    authVersion: "3",
    user: "svc",
    key: "pw",
    project: "images",
    projectDomain: "Ops",
    endpointRegion: "two",
    container: "c",
    ...extra,
  });

  it("logs in with the password method scoped to the project, and uses the catalog's endpoint for the region and interface", async () => {
    const { url, seen } = await fakeCloud();
    const store = await openSwiftStore(keystone(url));
    const stream = await store.read("obj");
    let text = "";
    for await (const chunk of stream) text += chunk.toString();
    expect(text).toBe("hello");
    expect(seen.logins).toEqual([
      {
        auth: {
          identity: { methods: ["password"], password: { user: { name: "svc", domain: { name: "Default" }, password: "pw" } } },
          scope: { project: { name: "images", domain: { name: "Ops" } } },
        },
      },
    ]);
    expect(new Set(seen.tokens)).toEqual(new Set(["token-1"]));
  });

  it("logs in again once when Swift answers 401, and repeats the request", async () => {
    let refusedOnce = false;
    const { url, seen } = await fakeCloud((req, res) => {
      if (req.url === "/v1/AUTH_p/c/obj" && req.method === "GET" && !refusedOnce) {
        refusedOnce = true;
        res.writeHead(401).end();
        return true;
      }
      return false;
    });
    const store = await openSwiftStore(keystone(url));
    const stream = await store.read("obj");
    stream.resume();
    expect(seen.issued).toBe(2);
    expect(seen.tokens.at(-1)).toBe("token-2");
  });

  it("a refused password is a permission error that names the user but not the password", async () => {
    const { url } = await fakeCloud();
    const err = await openSwiftStore(keystone(url, { key: "wrong-pw" })).catch((e: unknown) => e);
    expect(isStoreError(err) && err.kind).toBe("permission");
    expect((err as Error).message).toContain(`user "svc"`);
    expect((err as Error).message).not.toContain("wrong-pw");
  });

  it("a catalog without a matching object-store endpoint says which one it looked for", async () => {
    const { url } = await fakeCloud();
    const err = await openSwiftStore(keystone(url, { endpointRegion: "three" })).catch((e: unknown) => e);
    expect(isStoreError(err) && err.kind).toBe("invalid");
    expect((err as Error).message).toBe(
      `the Keystone catalog of project "images" has no public object-store endpoint in region three; set "storageUrl" or "endpointRegion"`,
    );
  });
});

describe("reads in parts", () => {
  /** A fake part GET: a stream the test feeds, standing in for Swift's response. */
  function fakeSwift(data: Buffer) {
    const started: Array<{ part: Part; response: PassThrough }> = [];
    const fetchPart = async (part: Part) => {
      const response = new PassThrough();
      started.push({ part, response });
      return response as never;
    };
    const serve = (i: number, bytes = started[i]!.part.length) => {
      const { part, response } = started[i]!;
      response.end(data.subarray(part.offset, part.offset + bytes));
    };
    return { started, fetchPart, serve };
  }

  async function collect(stream: AsyncIterable<Buffer>): Promise<Buffer> {
    const chunks: Buffer[] = [];
    for await (const chunk of stream) chunks.push(chunk);
    return Buffer.concat(chunks);
  }

  it("splits ranges into parts within segments", () => {
    expect(split("/c/o", 10, 25, 10)).toEqual([{ path: "/c/o", offset: 10, length: 10 }, { path: "/c/o", offset: 20, length: 10 }, { path: "/c/o", offset: 30, length: 5 }]);
    const segments = [{ path: "/s/1", size: 8 }, { path: "/s/2", size: 8 }, { path: "/s/3", size: 4 }];
    expect(segmentParts(segments, 6, 19, 5)).toEqual([
      { path: "/s/1", offset: 6, length: 2 },
      { path: "/s/2", offset: 0, length: 5 },
      { path: "/s/2", offset: 5, length: 3 },
      { path: "/s/3", offset: 0, length: 3 },
    ]);
  });

  it("emits the parts in order whatever order they arrive in, with at most `window` under way", async () => {
    const data = Buffer.from("abcdefghijklmnopqrstuvwxyz");
    const swift = fakeSwift(data);
    const first = new PassThrough();
    const parts = split("/c/o", 4, 22, 4);
    const reader = new PartsReader({ part: { path: "/c/o", offset: 0, length: 4 }, response: first as never }, parts, swift.fetchPart, 3, (e) => e);
    const all = collect(reader);
    await new Promise((r) => setImmediate(r));
    expect(swift.started).toHaveLength(2); // the first part is the third under way
    swift.serve(1);
    swift.serve(0);
    await new Promise((r) => setImmediate(r));
    expect(swift.started).toHaveLength(2); // nothing is done until the head part is
    first.end(data.subarray(0, 4));
    for (let i = 2; i < parts.length; i++) {
      await new Promise((r) => setImmediate(r));
      swift.serve(i);
    }
    expect((await all).toString()).toBe(data.toString());
  });

  it("hands on the chunks the responses delivered, not copies of them", async () => {
    const sent = Array.from({ length: 12 }, (_, i) => Buffer.alloc(1000, i));
    const fetchPart = async (part: Part) => {
      const response = new PassThrough();
      const index = part.offset / 4000;
      setImmediate(() => {
        for (const chunk of sent.slice(index * 4, index * 4 + 4)) response.write(chunk);
        response.end();
      });
      return response as never;
    };
    const first = new PassThrough();
    const reader = new PartsReader({ part: { path: "/c/o", offset: 0, length: 4000 }, response: first as never }, split("/c/o", 4000, 8000, 4000), fetchPart, 3, (e) => e);
    for (const chunk of sent.slice(0, 4)) first.write(chunk);
    first.end();
    await new Promise((r) => setTimeout(r, 20)); // everything has arrived and waits in the reader
    const got: Buffer[] = [];
    for await (const chunk of reader) got.push(chunk as Buffer);
    expect(got).toHaveLength(sent.length);
    got.forEach((chunk, i) => expect(chunk.buffer === sent[i]!.buffer && chunk.byteOffset === sent[i]!.byteOffset).toBe(true));
  });

  it("a part that comes back short fails the read as unavailable, so the caller resumes", async () => {
    const data = Buffer.alloc(40, 1);
    const swift = fakeSwift(data);
    const first = new PassThrough();
    const describe = (err: unknown) => Object.assign(new Error(`read failed: ${(err as Error).message}`), { code: (err as { code?: string }).code });
    const reader = new PartsReader({ part: { path: "/c/o", offset: 0, length: 10 }, response: first as never }, split("/c/o", 10, 30, 10), swift.fetchPart, 2, describe);
    const all = collect(reader);
    first.end(data.subarray(0, 10));
    await new Promise((r) => setImmediate(r));
    swift.serve(0, 7);
    await expect(all).rejects.toThrow(/read failed: \/c\/o: 7 of 10 bytes came/);
  });
});
