/**
 * The store-swift plugin against a real Swift (test/global-setup.ts): the store contract,
 * Static Large Objects with 1 MiB segments, cleanup after failures and aborts, listing
 * pages, the call's trace context on every request, TempURLs used without a token, and the
 * errors of bad credentials and containers.
 */
import { createHmac, randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { buffer as readAll } from "node:stream/consumers";
import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { isStoreError, type StoreInstance } from "../../src/plugins/plugin-api.js";
import { startHttpRelay } from "../helpers/http-relay.js";
import {
  chunksOf,
  createContainer,
  objectNames,
  openSwiftStore,
  removeContainer,
  swiftRequest,
  swiftSettings,
  swiftStoreOptions,
  swiftToken,
  TEST_TEMP_URL_KEY,
  uniqueContainer,
} from "../helpers/swift.js";

const MiB = 1024 * 1024;
const containers: string[] = [];
let container: string;
let store: StoreInstance;

async function rejection(promise: Promise<unknown>): Promise<unknown> {
  return promise.then(
    () => expect.unreachable("expected a rejection"),
    (err: unknown) => err,
  );
}

async function newContainer(label: string): Promise<string> {
  const name = uniqueContainer(label);
  containers.push(name);
  await createContainer(name);
  return name;
}

beforeAll(async () => {
  container = await newContainer("store");
  store = await openSwiftStore(swiftStoreOptions(container));
});

afterAll(async () => {
  for (const name of containers) await removeContainer(name);
});

describe("objects", () => {
  it("a missing object: stat says undefined, read rejects not-found, delete succeeds", async () => {
    expect(await store.stat("no/such/object")).toBeUndefined();
    const err = await rejection(store.read("no/such/object"));
    expect(isStoreError(err) && err.kind).toBe("not-found");
    expect((err as Error).message).toContain(`object "no/such/object" in container "${container}"`);
    await store.delete("no/such/object");
  });

  it("writes and reads back 0 bytes and 1 byte as plain objects", async () => {
    expect(await store.write("empty", chunksOf(Buffer.alloc(0)))).toMatchObject({ key: "empty", size: 0 });
    expect(await store.write("one", chunksOf(Buffer.from("x")))).toMatchObject({ key: "one", size: 1 });
    expect(await store.stat("empty")).toMatchObject({ key: "empty", size: 0 });
    expect((await readAll(await store.read("empty"))).length).toBe(0);
    expect((await readAll(await store.read("one"))).toString()).toBe("x");
    expect(await objectNames(`${container}_segments`)).toEqual([]);
  });

  it("an object over the segment size is an SLO of 1 MiB segments, read whole and by ranges across segments", async () => {
    const data = randomBytes(3.5 * MiB);
    expect(await store.write("images/large", chunksOf(data, 100_000))).toMatchObject({ key: "images/large", size: data.length });
    const head = await swiftRequest("HEAD", `/${container}/images/large`);
    expect(head.headers.get("x-static-large-object")).toBe("True");
    expect(await objectNames(`${container}_segments`)).toHaveLength(4);

    expect(await store.stat("images/large")).toMatchObject({ size: data.length });
    expect((await readAll(await store.read("images/large"))).equals(data)).toBe(true);
    const across = await readAll(await store.read("images/large", { range: { offset: MiB - 10, length: MiB + 20 } }));
    expect(across.equals(data.subarray(MiB - 10, 2 * MiB + 10))).toBe(true);
    const tail = await readAll(await store.read("images/large", { range: { offset: 3 * MiB } }));
    expect(tail.equals(data.subarray(3 * MiB))).toBe(true);
    expect((await readAll(await store.read("images/large", { range: { offset: data.length } }))).length).toBe(0);
    expect((await readAll(await store.read("images/large", { range: { offset: data.length, length: 0 } }))).length).toBe(0);

    const beyond = await rejection(store.read("images/large", { range: { offset: data.length - 1, length: 2 } }));
    expect(isStoreError(beyond) && beyond.kind).toBe("invalid");
    const after = await rejection(store.read("images/large", { range: { offset: data.length + 1 } }));
    expect(isStoreError(after) && after.kind).toBe("invalid");
  });

  it("overwriting an SLO removes the old segments; deleting an SLO removes its segments", async () => {
    await store.write("images/replaced", chunksOf(randomBytes(2 * MiB + 1)));
    const before = await objectNames(`${container}_segments`);
    expect(before.filter((n) => n.startsWith("images/replaced/"))).toHaveLength(3);
    await store.write("images/replaced", chunksOf(randomBytes(1.5 * MiB)));
    const after = (await objectNames(`${container}_segments`)).filter((n) => n.startsWith("images/replaced/"));
    expect(after).toHaveLength(2);
    expect(after.some((n) => before.includes(n))).toBe(false);

    await store.delete("images/replaced");
    expect(await store.stat("images/replaced")).toBeUndefined();
    expect((await objectNames(`${container}_segments`)).filter((n) => n.startsWith("images/replaced/"))).toEqual([]);
  });

  it("an aborted write leaves no object and no segments, and rejects at once", async () => {
    const controller = new AbortController();
    async function* stalls() {
      yield* chunksOf(randomBytes(2.5 * MiB));
      setTimeout(() => controller.abort(), 200);
      await new Promise(() => {}); // never yields again
    }
    const started = Date.now();
    const err = await rejection(store.write("images/aborted", stalls(), { signal: controller.signal }));
    expect((err as Error).name).toBe("AbortError");
    expect(Date.now() - started).toBeLessThan(10_000);
    expect(await store.stat("images/aborted")).toBeUndefined();
    expect((await objectNames(`${container}_segments`)).filter((n) => n.startsWith("images/aborted/"))).toEqual([]);
  });

  it("a source that fails half-way fails the write with its own error and leaves nothing", async () => {
    async function* breaks() {
      yield* chunksOf(randomBytes(2.5 * MiB));
      throw new Error("the source broke");
    }
    const err = await rejection(store.write("images/broken", breaks()));
    expect((err as Error).message).toBe("the source broke");
    expect(await store.stat("images/broken")).toBeUndefined();
    expect((await objectNames(`${container}_segments`)).filter((n) => n.startsWith("images/broken/"))).toEqual([]);
  });

  it("removePartialWrites deletes the segments of a writer that died, not those of stored objects", async () => {
    const own = await newContainer("partial");
    const partial = await openSwiftStore(swiftStoreOptions(own));
    await partial.write("images/kept", chunksOf(randomBytes(1.5 * MiB)));
    // What a killed writer leaves: segments under a write id, and no manifest naming them.
    for (const index of ["00000001", "00000002"]) {
      const response = await swiftRequest("PUT", `/${own}_segments/images/lost/0123456789abcdef/${index}`, { body: randomBytes(1000) });
      expect(response.status).toBe(201);
    }
    expect(await partial.removePartialWrites!(new Date(Date.now() - 60_000))).toBe(0); // too recent
    expect(await partial.removePartialWrites!(new Date(Date.now() + 5_000))).toBe(2);
    const left = await objectNames(`${own}_segments`);
    expect(left).toHaveLength(2);
    expect(left.every((n) => n.startsWith("images/kept/"))).toBe(true);
    expect((await readAll(await partial.read("images/kept"))).length).toBe(1.5 * MiB);
  });
});

/** Bytes this process has taken from files and sockets so far (Linux's /proc/self/io rchar). */
function bytesReadByProcess(): number {
  return Number(/^rchar: (\d+)$/m.exec(readFileSync("/proc/self/io", "utf8"))![1]);
}

describe("reads in parts", () => {
  /** Parts of 256 KiB, three at a time: a few MiB exercise what a large image does. */
  const partsOptions = { parallelReads: 3, readPartSize: 256 * 1024 };

  it("an SLO, a DLO and a plain object read in parts come back whole and in order, by any range", async () => {
    const parts = await openSwiftStore(swiftStoreOptions(container, partsOptions));
    const data = randomBytes(3.5 * MiB + 12345);
    await parts.write("images/parts-slo", chunksOf(data, 100_000));
    expect((await swiftRequest("PUT", `/${container}/images/parts-plain`, { body: data })).status).toBe(201);
    // A Dynamic Large Object, as older Swift clients upload them: segments under a prefix.
    for (let i = 0; i * 2 * MiB < data.length; i++) {
      const body = data.subarray(i * 2 * MiB, (i + 1) * 2 * MiB);
      expect((await swiftRequest("PUT", `/${container}_segments/dlo-parts/${i}`, { body })).status).toBe(201);
    }
    const manifest = { "x-object-manifest": `${container}_segments/dlo-parts/` };
    expect((await swiftRequest("PUT", `/${container}/images/parts-dlo`, { headers: manifest, body: Buffer.alloc(0) })).status).toBe(201);
    for (const key of ["images/parts-slo", "images/parts-plain", "images/parts-dlo"]) {
      expect((await readAll(await parts.read(key))).equals(data), key).toBe(true);
      for (const [offset, length] of [[MiB - 10, 2 * MiB + 20], [1, 300_000], [3 * MiB + 7, undefined], [0, data.length]] as const) {
        const got = await readAll(await parts.read(key, { range: { offset, length } }));
        expect(got.equals(data.subarray(offset, length === undefined ? undefined : offset + length)), `${key} ${offset}+${length}`).toBe(true);
      }
      const beyond = await rejection(parts.read(key, { range: { offset: 1, length: data.length } }));
      expect(isStoreError(beyond) && beyond.kind).toBe("invalid");
      expect((await readAll(await parts.read(key, { range: { offset: data.length } }))).length).toBe(0);
    }
  });

  it("an object replaced while it is read in parts fails the read instead of mixing both", async () => {
    const parts = await openSwiftStore(swiftStoreOptions(container, { parallelReads: 2, readPartSize: 64 * 1024 }));
    const data = randomBytes(4 * MiB);
    for (const [key, write] of [
      ["images/parts-replaced-slo", () => parts.write("images/parts-replaced-slo", chunksOf(randomBytes(4 * MiB)))],
      ["images/parts-replaced-plain", () => swiftRequest("PUT", `/${container}/images/parts-replaced-plain`, { body: randomBytes(4 * MiB) })],
    ] as const) {
      if (key.endsWith("slo")) await parts.write(key, chunksOf(data));
      else await swiftRequest("PUT", `/${container}/${key}`, { body: data });
      const stream = await parts.read(key);
      const iterator = stream[Symbol.asyncIterator]();
      const first = (await iterator.next()).value as Buffer;
      expect(first.equals(data.subarray(0, first.length))).toBe(true);
      await write();
      const err = await rejection((async () => {
        for (let next = await iterator.next(); !next.done; next = await iterator.next());
      })());
      expect(isStoreError(err) && err.kind, key).toBe("not-found");
      expect((err as Error).message).toMatch(/replaced or deleted while it was read/);
    }
  });

  it("a consumer that stops reading holds the parts ahead in the kernel, not in the process's memory", async () => {
    const parts = await openSwiftStore(swiftStoreOptions(container, { parallelReads: 4, readPartSize: 4 * MiB }));
    const data = randomBytes(32 * MiB);
    expect((await swiftRequest("PUT", `/${container}/images/parts-stalled`, { body: data })).status).toBe(201);
    const iterator = (await parts.read("images/parts-stalled"))[Symbol.asyncIterator]();
    const got = [(await iterator.next()).value as Buffer];
    const before = bytesReadByProcess();
    // Time for the four parts under way to arrive whole, were they read ahead: up to 16 MiB.
    await sleep(1500);
    const readMeanwhile = bytesReadByProcess() - before;
    for (let next = await iterator.next(); !next.done; next = await iterator.next()) got.push(next.value as Buffer);
    expect(Buffer.concat(got).equals(data)).toBe(true);
    expect(readMeanwhile, `${(readMeanwhile / MiB).toFixed(1)} MiB read while the consumer waited`).toBeLessThan(2 * MiB);
  });

  it("parts waiting their turn behind a slow consumer outlast the idle timeout", async () => {
    const parts = await openSwiftStore(swiftStoreOptions(container, { parallelReads: 3, readPartSize: 64 * 1024, timeoutSeconds: 0.5 }));
    const data = randomBytes(MiB);
    expect((await swiftRequest("PUT", `/${container}/images/parts-slow`, { body: data })).status).toBe(201);
    const got: Buffer[] = [];
    for await (const chunk of await parts.read("images/parts-slow")) {
      got.push(chunk as Buffer);
      // Each part waits for the one before it: three times the timeout in all.
      if (got.length <= 3) await sleep(500);
    }
    expect(Buffer.concat(got).equals(data)).toBe(true);
  });
});

describe("listing", () => {
  it("lists by prefix in pages whose token is the last key, without segments", async () => {
    const own = await newContainer("list");
    const listed = await openSwiftStore(swiftStoreOptions(own));
    for (const name of ["a/1", "a/2", "a/3", "a/4", "a/5", "b/1"]) await listed.write(name, chunksOf(Buffer.from(name)));
    await listed.write("a/6-large", chunksOf(randomBytes(1.5 * MiB)));

    const keys: string[] = [];
    let pageToken: string | undefined;
    let pages = 0;
    do {
      const page = await listed.list({ prefix: "a/", pageSize: 2, pageToken });
      pages++;
      keys.push(...page.objects.map((o) => o.key));
      pageToken = page.nextPageToken;
      if (pageToken) expect(pageToken).toBe(page.objects.at(-1)!.key);
    } while (pageToken);
    expect(keys).toEqual(["a/1", "a/2", "a/3", "a/4", "a/5", "a/6-large"]);
    expect(pages).toBe(3);
    const all = await listed.list({});
    expect(all.nextPageToken).toBeUndefined();
    expect(all.objects.find((o) => o.key === "a/6-large")).toMatchObject({ size: 1.5 * MiB });
    expect(all.objects.every((o) => o.modifiedTime instanceof Date && !Number.isNaN(o.modifiedTime.getTime()))).toBe(true);
  });
});

describe("trace context", () => {
  it("every request of a write, a read in parts, a list, a stat and a delete carries the call's traceparent", async () => {
    const { storageUrl } = await swiftToken();
    const account = new URL(storageUrl).pathname;
    const proxy = await startHttpRelay(new URL(storageUrl));
    try {
      const traced = await openSwiftStore(
        swiftStoreOptions(container, { storageUrl: `${proxy.url}${account}`, parallelReads: 3, readPartSize: 64 * 1024 }),
      );
      const traceparent = `00-${randomBytes(16).toString("hex")}-${randomBytes(8).toString("hex")}-01`;
      const call = { traceContext: { traceparent } };
      const data = randomBytes(2.5 * MiB);

      expect(await traced.write("traced/large", chunksOf(data), call)).toMatchObject({ size: data.length });
      expect((await readAll(await traced.read("traced/large", call))).equals(data)).toBe(true);
      expect((await traced.list({ prefix: "traced/", ...call })).objects.map((o) => o.key)).toEqual(["traced/large"]);
      expect(await traced.stat("traced/large", call)).toMatchObject({ size: data.length });
      await traced.delete("traced/large", call);
      const recorded = proxy.relayed.map((r) => ({ method: r.method, path: r.path, traceparent: r.headers.traceparent }));
      expect(await traced.stat("traced/large")).toBeUndefined();

      const objects = `${account}/${container}/`;
      const segments = `${account}/${container}_segments/`;
      const listings = `${account}/${container}?`;
      // The checks at open (HEAD of the containers and the account) are no call's requests.
      const ours = recorded.filter((r) => [objects, segments, listings].some((prefix) => r.path.startsWith(prefix)));
      const untraced = ours.filter((r) => r.traceparent !== traceparent).map((r) => `${r.method} ${r.path}`);
      expect(untraced, "requests without the call's traceparent").toEqual([]);
      const kinds = {
        "segment PUT": ours.filter((r) => r.method === "PUT" && r.path.startsWith(segments)),
        "manifest PUT": ours.filter((r) => r.method === "PUT" && r.path.includes("multipart-manifest=put")),
        "part GET": ours.filter((r) => r.method === "GET" && r.path.startsWith(segments)),
        "listing GET": ours.filter((r) => r.method === "GET" && r.path.startsWith(listings)),
        HEAD: ours.filter((r) => r.method === "HEAD" && r.path.startsWith(objects)),
        DELETE: ours.filter((r) => r.method === "DELETE" && r.path.startsWith(objects)),
      };
      for (const [kind, requests] of Object.entries(kinds)) expect(requests.length, kind).toBeGreaterThan(0);
    } finally {
      await proxy.close();
    }
  });
});

describe("temporary URLs", () => {
  it("a TempURL GET and PUT work without a token, and the PUT lands where stat sees it", async () => {
    const data = randomBytes(3 * MiB);
    await store.write("exports/x.vmdk", chunksOf(data));
    const get = await store.presign!("exports/x.vmdk", { method: "GET", expiresInSeconds: 60 });
    expect(get.url).toMatch(/temp_url_sig=[0-9a-f]{64}&temp_url_expires=\d+$/);
    expect(get.expireTime.getTime()).toBeGreaterThan(Date.now() + 55_000);
    const fetched = await fetch(get.url);
    expect(fetched.status).toBe(200);
    expect(Buffer.from(await fetched.arrayBuffer()).equals(data)).toBe(true);

    const put = await store.presign!("uploads/abc", { method: "PUT", expiresInSeconds: 60 });
    const upload = randomBytes(2 * MiB);
    expect((await fetch(put.url, { method: "PUT", body: upload })).status).toBe(201);
    expect(await store.stat("uploads/abc")).toMatchObject({ size: upload.length });
    // A URL signed for PUT does not read, nor one for GET write.
    expect((await fetch(put.url)).status).toBe(401);
    expect((await fetch(get.url, { method: "PUT", body: "x" })).status).toBe(401);
  });

  it("Swift accepts a signature computed here from its documented definition, SHA-256 and SHA-512", async () => {
    await store.write("signed", chunksOf(Buffer.from("signed bytes")));
    const { storageUrl } = await swiftToken();
    const path = `${new URL(storageUrl).pathname}/${container}/signed`;
    const expires = Math.floor(Date.now() / 1000) + 60;
    for (const digest of ["sha256", "sha512"]) {
      const sig = createHmac(digest, TEST_TEMP_URL_KEY).update(`GET\n${expires}\n${path}`).digest("hex");
      const response = await fetch(`${new URL(storageUrl).origin}${path}?temp_url_sig=${sig}&temp_url_expires=${expires}`);
      expect(response.status, digest).toBe(200);
      expect(await response.text()).toBe("signed bytes");
    }
    const sha512Store = await openSwiftStore(swiftStoreOptions(container, { tempUrlDigest: "sha512" }));
    const url = (await sha512Store.presign!("signed", { method: "GET", expiresInSeconds: 60 })).url;
    expect(url).toMatch(/temp_url_sig=[0-9a-f]{128}&/);
    expect(await (await fetch(url)).text()).toBe("signed bytes");
  });

  it("expired, tampered and SHA-1 URLs are refused", async () => {
    await store.write("guarded", chunksOf(Buffer.from("guarded")));
    const { url } = await store.presign!("guarded", { method: "GET", expiresInSeconds: 1 });
    const tampered = url.replace(/temp_url_sig=([0-9a-f])/, (_, c: string) => `temp_url_sig=${c === "0" ? "1" : "0"}`);
    expect((await fetch(tampered)).status).toBe(401);
    const otherObject = url.replace("/guarded?", "/signed?");
    expect((await fetch(otherObject)).status).toBe(401);
    const { storageUrl } = await swiftToken();
    const path = `${new URL(storageUrl).pathname}/${container}/guarded`;
    const expires = Math.floor(Date.now() / 1000) + 60;
    const sha1 = createHmac("sha1", TEST_TEMP_URL_KEY).update(`GET\n${expires}\n${path}`).digest("hex");
    expect((await fetch(`${new URL(storageUrl).origin}${path}?temp_url_sig=${sha1}&temp_url_expires=${expires}`)).status).toBe(401);
    await sleep(2_100);
    expect((await fetch(url)).status).toBe(401);
  });
});

describe("refusals at open", () => {
  it("a wrong key is a permission error naming the user, never the key", async () => {
    const err = await rejection(openSwiftStore(swiftStoreOptions(container, { key: "not-the-key" })));
    expect(isStoreError(err) && err.kind).toBe("permission");
    expect((err as Error).message).toContain(`user "${swiftSettings().user}"`);
    expect((err as Error).message).not.toContain("not-the-key");
  });

  it("a user without rights on the account is a permission error", async () => {
    const { readerUser, readerKey } = swiftSettings();
    const err = await rejection(openSwiftStore(swiftStoreOptions(container, { user: readerUser, key: readerKey })));
    expect(isStoreError(err) && err.kind).toBe("permission");
  });

  it("a missing container is refused with what to do, unless createContainer is set", async () => {
    const missing = uniqueContainer("missing");
    containers.push(missing);
    const err = await rejection(openSwiftStore(swiftStoreOptions(missing)));
    expect(isStoreError(err) && err.kind).toBe("invalid");
    expect((err as Error).message).toContain(`container "${missing}" does not exist`);
    expect((err as Error).message).toContain("createContainer");
    const created = await openSwiftStore(swiftStoreOptions(missing, { createContainer: true }));
    await created.write("k", chunksOf(Buffer.from("v")));
    expect(await objectNames(missing)).toEqual(["k"]);
  });

  it("a Swift that does not answer at open is retried at the first call instead", async () => {
    const opened = await openSwiftStore(swiftStoreOptions(container, { authUrl: "http://127.0.0.1:9/auth/v1.0", timeoutSeconds: 2 }));
    const err = await rejection(opened.stat("one"));
    expect(isStoreError(err) && err.kind).toBe("unavailable");
    expect((err as Error).message).toMatch(/did not answer \(ECONNREFUSED\)/);
  });
});
