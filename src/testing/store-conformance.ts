/**
 * The store conformance suite: vitest suites that hold a store plugin to the contract in
 * plugin-api.ts. A plugin author calls {@link runStoreConformance} from a test file of
 * their own; it uses only the public plugin API, as the host does.
 */
import { createHash, randomBytes } from "node:crypto";
import type { Readable } from "node:stream";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { apiVersionProblem } from "../plugins/loader.js";
import {
  isStoreError,
  PLUGIN_API_VERSION,
  type ObjectInfo,
  type StoreCapabilities,
  type StoreConfig,
  type StoreDriver,
  type StoreErrorKind,
  type StoreInstance,
  type StorePluginDefinition,
} from "../plugins/plugin-api.js";
import { registerForTest } from "./register.js";

export interface StoreConformanceOptions {
  /** The suite's title, e.g. the plugin's name and backend. */
  name: string;
  /** The plugin entry module's default export. */
  plugin: StorePluginDefinition;
  /** A fresh, empty instance config that no other suite uses (its own root, bucket or container). */
  config(): Promise<StoreConfig> | StoreConfig;
  /** Removes what the instance left behind, after the suite. */
  cleanup?(config: StoreConfig): Promise<void>;
  /**
   * Size of the largest streaming write, generated on the fly and verified by hash.
   * Default 64 MiB; the environment variable ITX_CONFORMANCE_LARGE_BYTES overrides it,
   * e.g. for a GiB-scale run.
   */
  largeObjectBytes?: number;
  /**
   * An instance that cannot reach its backend (e.g. a closed port): its calls must fail
   * with StoreError "unavailable". Leave out for stores without a backend to lose.
   */
  unavailableConfig?(): StoreConfig;
}

const MiB = 1024 * 1024;
const DEFAULT_LARGE_OBJECT_BYTES = 64 * MiB;
/** How soon an aborted call must reject, counted from the abort. */
export const ABORT_DEADLINE_MS = 1_500;

/**
 * Declares the conformance suites for one store plugin. Each test works under its own key
 * prefix, so the tests of one suite never see each other's objects.
 */
export function runStoreConformance(options: StoreConformanceOptions): void {
  const largeObjectBytes = largeSize(options.largeObjectBytes);

  // The suite factory is async: which tests apply depends on the capabilities the plugin
  // registers, and only tests that apply are declared.
  describe(`store conformance: ${options.name}`, async () => {
    const driver = await registerStoreDriver(options.plugin);
    const capabilities = driver.capabilities;
    let config: StoreConfig;
    let store: StoreInstance;
    const run = `itx-conformance-${randomBytes(4).toString("hex")}`;
    let testNumber = 0;
    /** A key prefix of the calling test's own. */
    const area = () => `${run}/t${++testNumber}/`;

    beforeAll(async () => {
      config = await options.config();
      store = await driver.open(config);
    });

    afterAll(async () => {
      await store?.close?.();
      if (config !== undefined) await options.cleanup?.(config);
    });

    /** `it` for a test of a capability: declared only when the store advertises it. */
    const itNeeds = (capability: keyof StoreCapabilities, title: string, test: () => Promise<void>, timeout?: number) => {
      if (capabilities[capability]) it(title, test, timeout);
    };

    describe("registration", () => {
      it("targets a plugin API this host loads and registers one store driver with lower-case schemes and every capability flag", () => {
        expect(options.plugin.kind).toBe("store");
        expect(apiVersionProblem(options.plugin.apiVersion, PLUGIN_API_VERSION)).toBeUndefined();
        expect(driver.schemes.length).toBeGreaterThan(0);
        for (const scheme of driver.schemes) expect(scheme).toMatch(/^[a-z][a-z0-9+.-]*$/);
        for (const flag of ["readRanges", "write", "delete", "list", "presignGet", "presignPut"] as const) {
          expect(typeof capabilities[flag], `capabilities.${flag}`).toBe("boolean");
        }
        expect(Number.isSafeInteger(capabilities.maxObjectSize) && capabilities.maxObjectSize >= 0).toBe(true);
        expect(capabilities.write, "the conformance suite needs a writable store").toBe(true);
      });
    });

    describe("missing objects", () => {
      it("stat answers undefined and read rejects with not-found", async () => {
        const key = `${area()}missing`;
        expect(await store.stat(key)).toBeUndefined();
        expect(await store.stat(`${key}/deeper/still`)).toBeUndefined();
        await expectStoreError(store.read(key), "not-found");
      });
    });

    describe("writes", () => {
      const sizes = [0, 1, 7, 4_099, 65_537, MiB + 3];
      it.each(sizes)("streams %i bytes in odd-sized chunks and reads them back", async (size) => {
        const key = `${area()}object-${size}`;
        const source = generatedSource(size, 4_099);
        const written = await store.write(key, source.chunks());
        expect(written).toMatchObject({ key, size });
        expect(await store.stat(key)).toMatchObject({ key, size });
        expect(await digestOf(await store.read(key))).toEqual({ size, sha256: source.sha256() });
      });

      it(`streams a ${largeObjectBytes}-byte object generated on the fly and verified by hash`, async (ctx) => {
        const key = `${area()}large`;
        const source = generatedSource(largeObjectBytes, MiB);
        const rssBefore = process.memoryUsage.rss();
        let started = performance.now();
        const written = await store.write(key, source.chunks());
        const writeSeconds = (performance.now() - started) / 1000;
        expect(written.size).toBe(largeObjectBytes);
        expect((await store.stat(key))?.size).toBe(largeObjectBytes);
        started = performance.now();
        expect(await digestOf(await store.read(key))).toEqual({ size: largeObjectBytes, sha256: source.sha256() });
        const readSeconds = (performance.now() - started) / 1000;
        // Figures for the author, not limits: a busy machine makes them vary.
        const mib = largeObjectBytes / MiB;
        ctx.annotate(
          `write ${(mib / writeSeconds).toFixed(0)} MiB/s, read ${(mib / readSeconds).toFixed(0)} MiB/s, ` +
            `resident memory ${((process.memoryUsage.rss() - rssBefore) / MiB).toFixed(0)} MiB above its level before the write`,
        );
      }, timeoutFor(largeObjectBytes));

      it("replaces an object that is overwritten", async () => {
        const key = `${area()}overwritten`;
        await store.write(key, chunksOf("first version"));
        await store.write(key, chunksOf("second"));
        expect(await store.stat(key)).toMatchObject({ size: 6 });
        expect((await readAll(await store.read(key))).toString()).toBe("second");
      });
    });

    describe("atomic visibility", () => {
      it("shows nothing while a write is under way, and the whole object once it is done", async () => {
        const prefix = area();
        const key = `${prefix}in-flight`;
        const gate = new Gate();
        async function* source(): AsyncGenerator<Uint8Array> {
          yield Buffer.alloc(64 * 1024, 1);
          await gate.opened;
          yield Buffer.alloc(64 * 1024, 2);
        }
        const writing = store.write(key, source());
        await new Promise((resolve) => setTimeout(resolve, 200));
        expect(await store.stat(key)).toBeUndefined();
        if (capabilities.list) expect(await keysUnder(store, prefix)).toEqual([]);
        gate.open();
        await writing;
        expect(await store.stat(key)).toMatchObject({ size: 128 * 1024 });
      });

      it("a write whose source throws midway leaves no object and no listing entry", async () => {
        const prefix = area();
        const key = `${prefix}broken`;
        const failure = new Error("the source broke");
        async function* source(): AsyncGenerator<Uint8Array> {
          for (let i = 0; i < 4; i++) yield randomBytes(64 * 1024);
          throw failure;
        }
        await expect(store.write(key, source())).rejects.toThrow();
        await expectNothingAt(store, capabilities, prefix, key);
      });

      it("a write aborted midway leaves no object and no listing entry", async () => {
        const prefix = area();
        const key = `${prefix}aborted`;
        const controller = new AbortController();
        let sent = 0;
        async function* source(): AsyncGenerator<Uint8Array> {
          // Bounded, so that a store that ignores the abort finishes the write and fails the test.
          while (sent < 64) {
            yield randomBytes(64 * 1024);
            if (++sent === 8) controller.abort(new Error("cancelled by the conformance suite"));
          }
        }
        await expect(store.write(key, source(), { signal: controller.signal })).rejects.toThrow();
        await expectNothingAt(store, capabilities, prefix, key);
      });

      it("a failed overwrite keeps the previous object", async () => {
        const key = `${area()}kept`;
        await store.write(key, chunksOf("original"));
        async function* source(): AsyncGenerator<Uint8Array> {
          yield Buffer.from("a replacement that never completes");
          throw new Error("the source broke");
        }
        await expect(store.write(key, source())).rejects.toThrow();
        expect((await readAll(await store.read(key))).toString()).toBe("original");
      });
    });

    if (capabilities.readRanges) describe("ranged reads", () => {
      const content = Buffer.from(Array.from({ length: 100 }, (_, i) => i));
      let key: string;
      const range = async (offset: number, length?: number) =>
        [...(await readAll(await store.read(key, { range: { offset, length } })))];

      beforeAll(async () => {
        key = `${area()}ranged`;
        await store.write(key, chunksOf(content));
      });

      it("reads from offset 0, with and without a length", async () => {
        expect(await range(0, 10)).toEqual([...content.subarray(0, 10)]);
        expect(await range(0)).toEqual([...content]);
        expect(await range(0, 100)).toEqual([...content]);
      });

      it("reads the last byte", async () => {
        expect(await range(99, 1)).toEqual([99]);
        expect(await range(99)).toEqual([99]);
        expect(await range(37, 5)).toEqual([37, 38, 39, 40, 41]);
      });

      it("reads nothing for a length of 0", async () => {
        expect(await range(0, 0)).toEqual([]);
        expect(await range(40, 0)).toEqual([]);
      });

      it("rejects ranges past the end with StoreError invalid", async () => {
        for (const [offset, length] of [[100, 1], [101, undefined], [90, 11], [0, 101], [1_000, 5]] as const) {
          await expectStoreError(store.read(key, { range: { offset, length } }), "invalid");
        }
      });
    });

    if (capabilities.openFile) describe("open files", () => {
      it("reads the object at any position into the caller's buffer, and 0 at the end", async () => {
        const key = `${area()}opened`;
        const source = generatedSource(MiB + 3, 4_099);
        await store.write(key, source.chunks());
        expect(store.openFile, "a store advertising openFile must have openFile()").toBeTypeOf("function");
        const file = (await store.openFile!(key))!;
        expect(file, "openFile of a plain object written through write()").toBeDefined();
        try {
          expect(file.info).toMatchObject({ key, size: MiB + 3 });
          const whole = Buffer.alloc(MiB + 3);
          for (let at = 0; at < whole.length; ) {
            const count = await file.read(whole.subarray(at, at + 65_536), at);
            expect(count, `a read at ${at} of ${whole.length} bytes`).toBeGreaterThan(0);
            at += count;
          }
          expect(createHash("sha256").update(whole).digest("hex")).toBe(source.sha256());
          const tail = Buffer.alloc(10);
          expect(await file.read(tail, MiB)).toBe(3);
          expect([...tail.subarray(0, 3)]).toEqual([...whole.subarray(MiB)]);
          expect(await file.read(tail, MiB + 3)).toBe(0);
        } finally {
          await file.close();
        }
      });

      it("rejects a missing object with not-found, and keeps reading the bytes it opened when the object is replaced", async () => {
        const key = `${area()}replaced`;
        await expectStoreError(store.openFile!(key), "not-found");
        await store.write(key, chunksOf("first version"));
        const file = (await store.openFile!(key))!;
        expect(file, "openFile of a plain object written through write()").toBeDefined();
        try {
          await store.write(key, chunksOf("second"));
          const bytes = Buffer.alloc(32);
          const count = await file.read(bytes, 0);
          expect(bytes.subarray(0, count).toString()).toBe("first version");
          expect(file.info.size).toBe(13);
        } finally {
          await file.close();
        }
      });
    });

    if (capabilities.delete) describe("delete", () => {
      it("removes an object, and removing it again or a key never written succeeds", async () => {
        const prefix = area();
        const key = `${prefix}doomed`;
        await store.write(key, chunksOf("short-lived"));
        await store.delete(key);
        expect(await store.stat(key)).toBeUndefined();
        await expectStoreError(store.read(key), "not-found");
        if (capabilities.list) expect(await keysUnder(store, prefix)).toEqual([]);
        await store.delete(key);
        await store.delete(`${prefix}never/written`);
      });
    });

    if (capabilities.list) describe("list", () => {
      let prefix: string;
      const names = ["dir/a", "dir/b", "dir/c", "dir/sub/d", "dir-e"];

      beforeAll(async () => {
        prefix = area();
        for (const name of names) await store.write(prefix + name, chunksOf(name));
      });

      it("lists objects under a prefix in key order, with their sizes", async () => {
        const page = await store.list({ prefix });
        expect(page.objects.map((o) => o.key)).toEqual(names.map((n) => prefix + n).sort());
        for (const object of page.objects) expect(object.size).toBe(object.key.length - prefix.length);
        expect(page.nextPageToken).toBeUndefined();
      });

      it("filters by prefix, which need not end at a '/'", async () => {
        expect(await keysUnder(store, `${prefix}dir/`)).toEqual(["dir/a", "dir/b", "dir/c", "dir/sub/d"].map((n) => prefix + n));
        expect(await keysUnder(store, `${prefix}dir`)).toEqual(names.map((n) => prefix + n).sort());
        expect(await keysUnder(store, `${prefix}dir/s`)).toEqual([`${prefix}dir/sub/d`]);
        expect(await keysUnder(store, `${prefix}nothing-here`)).toEqual([]);
      });

      it("pages through 5 objects 2 at a time, each exactly once", async () => {
        const seen: string[] = [];
        let pageToken: string | undefined;
        let pages = 0;
        do {
          const page = await store.list({ prefix, pageSize: 2, pageToken });
          expect(page.objects.length).toBeLessThanOrEqual(2);
          seen.push(...page.objects.map((o) => o.key));
          pageToken = page.nextPageToken;
          expect(++pages, "pagination does not end").toBeLessThanOrEqual(names.length + 1);
        } while (pageToken);
        expect(seen).toEqual(names.map((n) => prefix + n).sort());
        expect(pages).toBeGreaterThanOrEqual(3);
      });
    });

    if (capabilities.presignGet || capabilities.presignPut) describe("temporary URLs", () => {
      itNeeds("presignGet", "a GET URL returns the object's bytes until it expires", async () => {
        const prefix = area();
        const key = `${prefix}shared`;
        const content = randomBytes(10_000);
        await store.write(key, chunksOf(content));
        const before = Date.now();
        const presigned = await presign(store, key, "GET", 60);
        expect(presigned.expireTime.getTime()).toBeGreaterThanOrEqual(before + 55_000);
        expect(presigned.expireTime.getTime()).toBeLessThanOrEqual(Date.now() + 65_000);
        const response = await fetch(presigned.url);
        expect(response.status).toBe(200);
        expect(Buffer.from(await response.arrayBuffer()).equals(content)).toBe(true);
      });

      itNeeds("presignGet", "a tampered GET URL is refused", async () => {
        const prefix = area();
        // Contents no error page could echo: only serving an object would show them.
        const [shared, secret] = [`shared-${randomBytes(8).toString("hex")}`, `secret-${randomBytes(8).toString("hex")}`];
        await store.write(`${prefix}shared`, chunksOf(shared));
        await store.write(`${prefix}private`, chunksOf(secret));
        const { url } = await presign(store, `${prefix}shared`, "GET", 60);
        for (const tampered of tamperedUrls(url, "shared", "private")) {
          const response = await fetch(tampered);
          expect(response.status, `tampered URL ${tampered}`).toBeGreaterThanOrEqual(400);
          expect(response.status).toBeLessThan(500);
          const body = await response.text();
          expect(body).not.toContain(secret);
          expect(body).not.toContain(shared);
        }
      });

      itNeeds("presignGet", "an expired GET URL is refused", async () => {
        const key = `${area()}short-lived`;
        await store.write(key, chunksOf("short-lived"));
        const { url, expireTime } = await presign(store, key, "GET", 1);
        await new Promise((resolve) => setTimeout(resolve, Math.max(0, expireTime.getTime() - Date.now()) + 1_500));
        const response = await fetch(url);
        expect(response.status).toBeGreaterThanOrEqual(400);
        expect(response.status).toBeLessThan(500);
      }, 15_000);

      itNeeds("presignPut", "a PUT URL stores the body as the object", async () => {
        const key = `${area()}uploaded`;
        const content = randomBytes(10_000);
        const { url } = await presign(store, key, "PUT", 60);
        const response = await fetch(url, { method: "PUT", body: content });
        expect(response.status, await response.text()).toBeGreaterThanOrEqual(200);
        expect(response.status).toBeLessThan(300);
        expect(await store.stat(key)).toMatchObject({ size: content.length });
        expect((await readAll(await store.read(key))).equals(content)).toBe(true);
      });

      itNeeds("presignPut", "a tampered or expired PUT URL is refused and stores nothing", async () => {
        const prefix = area();
        const { url } = await presign(store, `${prefix}upload`, "PUT", 60);
        for (const tampered of tamperedUrls(url, "upload", "elsewhere")) {
          const response = await fetch(tampered, { method: "PUT", body: "unwanted" });
          expect(response.status, `tampered URL ${tampered}`).toBeGreaterThanOrEqual(400);
          expect(response.status).toBeLessThan(500);
        }
        const expiring = await presign(store, `${prefix}late`, "PUT", 1);
        await new Promise((resolve) => setTimeout(resolve, Math.max(0, expiring.expireTime.getTime() - Date.now()) + 1_500));
        const late = await fetch(expiring.url, { method: "PUT", body: "too late" });
        expect(late.status).toBeGreaterThanOrEqual(400);
        expect(late.status).toBeLessThan(500);
        for (const name of ["upload", "elsewhere", "late"]) expect(await store.stat(prefix + name)).toBeUndefined();
      }, 15_000);
    });

    describe("abort signals", () => {
      it("every call rejects at once when its signal is already aborted", async () => {
        const prefix = area();
        const key = `${prefix}object`;
        await store.write(key, chunksOf("present"));
        const signal = AbortSignal.abort();
        await expect(store.stat(key, { signal })).rejects.toThrow();
        await expect(store.read(key, { signal })).rejects.toThrow();
        await expect(store.write(`${prefix}other`, chunksOf("never"), { signal })).rejects.toThrow();
        if (capabilities.delete) await expect(store.delete(key, { signal })).rejects.toThrow();
        if (capabilities.list) await expect(store.list({ prefix, signal })).rejects.toThrow();
        expect(await store.stat(`${prefix}other`)).toBeUndefined();
        expect(await store.stat(key)).toMatchObject({ size: 7 });
      });

      it(`a write whose source stalls rejects within ${ABORT_DEADLINE_MS} ms of the abort and leaves nothing`, async (ctx) => {
        const prefix = area();
        const key = `${prefix}stalled`;
        const controller = new AbortController();
        const gate = new Gate();
        async function* source(): AsyncGenerator<Uint8Array> {
          yield randomBytes(64 * 1024);
          await gate.opened; // a source that hangs until the test ends
          yield randomBytes(64 * 1024);
        }
        const writing = settled(store.write(key, source(), { signal: controller.signal }));
        try {
          await new Promise((resolve) => setTimeout(resolve, 200));
          controller.abort(new Error("cancelled by the conformance suite"));
          const abortedAt = performance.now();
          const outcome = await Promise.race([writing, timeout(10_000)]);
          const elapsed = performance.now() - abortedAt;
          expect(outcome.state, "the aborted write did not reject").toBe("rejected");
          ctx.annotate(`rejected ${Math.round(elapsed)} ms after the abort`);
          expect(elapsed, "milliseconds from abort to rejection").toBeLessThan(ABORT_DEADLINE_MS);
        } finally {
          gate.open();
        }
        await expectNothingAt(store, capabilities, prefix, key);
      });

      it(`a read stream aborted midway errors within ${ABORT_DEADLINE_MS} ms`, async (ctx) => {
        const key = `${area()}streamed`;
        const size = 8 * MiB;
        await store.write(key, generatedSource(size, MiB).chunks());
        const controller = new AbortController();
        const stream = await store.read(key, { signal: controller.signal });
        let received = 0;
        let abortedAt = 0;
        const consuming = settled(
          (async () => {
            for await (const chunk of stream) {
              received += (chunk as Uint8Array).length;
              if (abortedAt === 0) {
                controller.abort(new Error("cancelled by the conformance suite"));
                abortedAt = performance.now();
              }
              // A slow consumer: the rest of the object must not simply be delivered.
              await new Promise((resolve) => setTimeout(resolve, 10));
            }
          })(),
        );
        const outcome = await Promise.race([consuming, timeout(10_000)]);
        const elapsed = performance.now() - abortedAt;
        expect(outcome.state, "the aborted read stream did not error").toBe("rejected");
        ctx.annotate(`errored ${Math.round(elapsed)} ms after the abort, ${received} of ${size} bytes read`);
        expect(elapsed, "milliseconds from abort to the stream's error").toBeLessThan(ABORT_DEADLINE_MS);
        expect(received).toBeLessThan(size);
      });
    });

    if (options.unavailableConfig) {
      const unavailableConfig = options.unavailableConfig;
      describe("unreachable backend", () => {
        it("calls fail with StoreError unavailable", async () => {
          let instance: StoreInstance;
          try {
            instance = await driver.open(unavailableConfig());
          } catch (err) {
            // Opening may already find the backend gone; that must say so, too.
            expectKind(err, "unavailable");
            return;
          }
          try {
            await expectStoreError(instance.stat("some/key"), "unavailable");
            await expectStoreError(instance.read("some/key"), "unavailable");
            await expectStoreError(instance.write("some/key", chunksOf("bytes")), "unavailable");
            if (capabilities.delete) await expectStoreError(instance.delete("some/key"), "unavailable");
            if (capabilities.list) await expectStoreError(instance.list(), "unavailable");
          } finally {
            await instance.close?.();
          }
        }, 60_000);
      });
    }
  });
}

/** Registers the plugin as the host would and returns its one store driver. */
async function registerStoreDriver(plugin: StorePluginDefinition): Promise<StoreDriver> {
  if (plugin?.kind !== "store") throw new Error(`not a store plugin definition (kind ${String(plugin?.kind)})`);
  const { stores, converters } = await registerForTest(plugin);
  if (converters.length !== 0 || stores.length !== 1) {
    throw new Error(`a store plugin registers exactly one store driver; this one registered ${stores.length} stores and ${converters.length} converters`);
  }
  return stores[0]!;
}

function largeSize(option: number | undefined): number {
  const fromEnv = process.env.ITX_CONFORMANCE_LARGE_BYTES;
  const size = fromEnv !== undefined && fromEnv !== "" ? Number(fromEnv) : (option ?? DEFAULT_LARGE_OBJECT_BYTES);
  if (!Number.isSafeInteger(size) || size < 1) {
    throw new Error(`the large object size must be a positive whole number of bytes, not ${fromEnv ?? option}`);
  }
  return size;
}

/** Generous: 60 s plus 2 s per 10 MiB, for slow disks and networks on a busy machine. */
function timeoutFor(bytes: number): number {
  return 60_000 + Math.ceil(bytes / (10 * MiB)) * 2_000;
}

/**
 * Pseudo-random bytes made chunk by chunk as the store asks for them (never held whole),
 * hashed as they go. A fresh buffer per chunk: the store may keep what it was given.
 */
function generatedSource(size: number, chunkSize: number) {
  const hash = createHash("sha256");
  return {
    async *chunks(): AsyncGenerator<Uint8Array> {
      for (let done = 0; done < size; ) {
        const chunk = randomBytes(Math.min(chunkSize, size - done));
        hash.update(chunk);
        done += chunk.length;
        yield chunk;
      }
    },
    sha256: () => hash.copy().digest("hex"),
  };
}

async function* chunksOf(content: string | Uint8Array): AsyncGenerator<Uint8Array> {
  yield typeof content === "string" ? Buffer.from(content) : content;
}

async function readAll(stream: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const chunk of stream) parts.push(Buffer.from(chunk as Uint8Array));
  return Buffer.concat(parts);
}

async function digestOf(stream: Readable): Promise<{ size: number; sha256: string }> {
  const hash = createHash("sha256");
  let size = 0;
  for await (const chunk of stream) {
    size += (chunk as Uint8Array).length;
    hash.update(chunk as Uint8Array);
  }
  return { size, sha256: hash.digest("hex") };
}

/** Every key under `prefix`, across all pages, in the order the store gives them. */
async function keysUnder(store: StoreInstance, prefix: string): Promise<string[]> {
  const keys: string[] = [];
  let pageToken: string | undefined;
  do {
    const page = await store.list({ prefix, pageToken });
    keys.push(...page.objects.map((o: ObjectInfo) => o.key));
    pageToken = page.nextPageToken;
  } while (pageToken);
  return keys;
}

async function expectNothingAt(store: StoreInstance, capabilities: StoreCapabilities, prefix: string, key: string) {
  expect(await store.stat(key), "a failed write left an object").toBeUndefined();
  await expectStoreError(store.read(key), "not-found");
  if (capabilities.list) expect(await keysUnder(store, prefix), "a failed write left a listing entry").toEqual([]);
}

function expectKind(err: unknown, kind: StoreErrorKind): void {
  expect(isStoreError(err), `expected StoreError "${kind}", got ${String(err)}`).toBe(true);
  expect((err as { kind: string }).kind, (err as Error).message).toBe(kind);
}

async function expectStoreError(promise: Promise<unknown>, kind: StoreErrorKind): Promise<void> {
  const outcome = await settled(promise);
  expect(outcome.state, `expected StoreError "${kind}", but the call succeeded`).toBe("rejected");
  if (outcome.state === "rejected") expectKind(outcome.reason, kind);
}

async function presign(store: StoreInstance, key: string, method: "GET" | "PUT", expiresInSeconds: number) {
  expect(store.presign, "the store advertises temporary URLs but has no presign()").toBeTypeOf("function");
  return store.presign!(key, { method, expiresInSeconds });
}

/**
 * Variants of a signed URL that must all be refused: another object's key in the path,
 * and each query parameter's value with its last character changed (one of them is the
 * signature, another usually the expiry).
 */
function tamperedUrls(url: string, keyName: string, otherName: string): string[] {
  const variants: string[] = [];
  const original = new URL(url);
  if (original.pathname.includes(keyName)) {
    const moved = new URL(url);
    moved.pathname = original.pathname.replace(keyName, otherName);
    variants.push(moved.href);
  }
  for (const [name, value] of original.searchParams) {
    if (value === "") continue;
    const changed = new URL(url);
    const last = value.at(-1)!;
    changed.searchParams.set(name, value.slice(0, -1) + (last === "0" ? "1" : last === "A" ? "B" : "0"));
    variants.push(changed.href);
  }
  expect(variants.length, "a signed URL should carry its signature in the path or query").toBeGreaterThan(1);
  return variants;
}

type Outcome = { state: "fulfilled" } | { state: "rejected"; reason: unknown } | { state: "pending" };

function settled(promise: Promise<unknown>): Promise<Outcome> {
  return promise.then(
    () => ({ state: "fulfilled" }) as const,
    (reason: unknown) => ({ state: "rejected", reason }) as const,
  );
}

function timeout(ms: number): Promise<Outcome> {
  return new Promise((resolve) => setTimeout(() => resolve({ state: "pending" }), ms).unref());
}

/** A promise a test opens when it chooses: stands in for a source that waits on the network. */
class Gate {
  open!: () => void;
  readonly opened = new Promise<void>((resolve) => (this.open = resolve));
}
