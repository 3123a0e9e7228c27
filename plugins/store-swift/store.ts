import { randomBytes } from "node:crypto";
import type { IncomingHttpHeaders, IncomingMessage } from "node:http";
import { Readable } from "node:stream";
import { setTimeout as sleep } from "node:timers/promises";
import {
  isStoreError,
  StoreError,
  type ByteRange,
  type CallOptions,
  type ListOptions,
  type ObjectInfo,
  type ObjectPage,
  type PresignedUrl,
  type PresignOptions,
  type ReadOptions,
  type StoreConfig,
  type StoreInstance,
} from "../../src/plugins/plugin-api.js";
import { isTransientStatus, networkError, statusError, SwiftConnection } from "./connection.js";
import { discard, header, type Answer } from "./http.js";
import { parseOptions, type SwiftOptions } from "./options.js";
import { PartsReader, segmentParts, split, type Part, type Segment } from "./parallel-read.js";
import { tempUrl, tempUrlSignature } from "./temp-url.js";

/** Objects that end within this many bytes are one plain PUT; longer ones become an SLO. */
const SMALL_OBJECT_BYTES = 1024 * 1024;
/** Swift's default max_manifest_segments. */
const MAX_SEGMENTS = 1000;
/** Leaves room under Swift's 1024-byte object names for a segment's "/<write id>/<index>". */
const MAX_KEY_BYTES = 960;
const DEFAULT_PAGE_SIZE = 1000;
/** Swift's default (and largest) container listing. */
const MAX_LISTING = 10_000;
/** Tries of requests whose body is in memory (manifests, small objects) on transient faults, as many as the host gives reads. */
const ATTEMPTS = 6;

interface SegmentEntry {
  path: string;
  etag: string;
  size_bytes: number;
}

/**
 * One Swift container seen as a store instance; see index.ts for the mapping and the rules.
 * Every request made on behalf of a call carries the call's trace context, so a traced
 * Swift proxy joins the host's trace; the helpers get the call's options for that.
 */
export class SwiftStore implements StoreInstance {
  private readonly segmentsContainer: string;
  private prepared?: Promise<string>;

  private constructor(
    private readonly connection: SwiftConnection,
    private readonly options: SwiftOptions,
  ) {
    this.segmentsContainer = `${options.container}_segments`;
  }

  /**
   * Checks the options, logs in and checks the containers and the Temp-URL-Key. Wrong
   * credentials, a missing container or a missing key fail here with the reason; a Swift
   * that does not answer yet does not: the checks run again at the first call.
   */
  static async open(config: StoreConfig): Promise<SwiftStore> {
    const options = parseOptions(config.options ?? {});
    const store = new SwiftStore(new SwiftConnection(options), options);
    try {
      await store.ready();
    } catch (err) {
      if (!(isStoreError(err) && err.kind === "unavailable")) throw err;
    }
    return store;
  }

  async stat(key: string, options?: CallOptions): Promise<ObjectInfo | undefined> {
    checkKey(key);
    await this.ready();
    const what = `stat ${this.describe(key)}`;
    const response = await this.connection.request("HEAD", this.objectPath(key), { headers: { ...options?.traceContext }, signal: options?.signal }, what);
    discard(response);
    if (response.statusCode === 404) return undefined;
    if (!ok(response.statusCode)) throw statusError(response.statusCode ?? 0, what);
    return info(key, response.headers);
  }

  async read(key: string, options?: ReadOptions): Promise<Readable> {
    checkKey(key);
    const range = options?.range;
    if (range) checkRange(range);
    await this.ready();
    const signal = options?.signal;
    const what = `read ${this.describe(key)}`;
    if (range?.length === 0) {
      const found = await this.stat(key, options);
      if (!found) throw new StoreError("not-found", `${what}: not found`);
      if (range.offset > found.size) throw beyondEnd(what, range, found.size);
      return Readable.from([]);
    }
    const headers: Record<string, string> = { ...options?.traceContext };
    if (range && (range.offset > 0 || range.length !== undefined)) {
      headers.range = `bytes=${range.offset}-${range.length === undefined ? "" : range.offset + range.length - 1}`;
    }
    const offset = range?.offset ?? 0;
    const partSize = this.options.readPartSize;
    // A read longer than a part starts with its first part; the rest follow side by side.
    const inParts = this.options.parallelReads > 1 && (range?.length === undefined || range.length > partSize);
    if (inParts) headers.range = `bytes=${offset}-${offset + partSize - 1}`;
    const response = await this.connection.request("GET", this.objectPath(key), { headers, signal }, what);
    const status = response.statusCode ?? 0;
    if (status === 416) {
      // Swift refuses a range that starts at the very end; the contract reads nothing there.
      discard(response);
      const found = await this.stat(key, options);
      if (!found) throw new StoreError("not-found", `${what}: not found`);
      if (offset === found.size && range?.length === undefined) return Readable.from([]);
      throw beyondEnd(what, range ?? { offset }, found.size);
    }
    if (!ok(status)) {
      discard(response);
      throw statusError(status, what);
    }
    // Swift shortens a range that runs past the end; the contract refuses it.
    const total = Number(/\/(\d+)$/.exec(header(response.headers, "content-range") ?? "")?.[1] ?? header(response.headers, "content-length"));
    if (range?.length !== undefined && range.offset + range.length > total) {
      response.destroy();
      throw beyondEnd(what, range, total);
    }
    const end = range?.length !== undefined ? range.offset + range.length : total;
    if (!inParts || status !== 206 || end - offset <= partSize) return response;
    const first = { part: { path: this.objectPath(key), offset, length: partSize }, response };
    try {
      return await this.readParts(key, first, response.headers, end, options, what);
    } catch (err) {
      response.destroy();
      throw err;
    }
  }

  /**
   * The rest of a long read, after its first part, as parts fetched side by side. The
   * parts of a Static Large Object are read from its segments themselves: that skips the
   * proxy's SLO middleware, which costs Swift about as much CPU again as the GET. A
   * plain object (or an SLO whose manifest changed since the first part, or names ranges
   * or other SLOs) is read by ranges of the object, each made to match the first part's
   * ETag, so a replaced object fails the read instead of mixing two versions.
   */
  private async readParts(
    key: string,
    first: { part: Part; response: IncomingMessage },
    headers: IncomingHttpHeaders,
    end: number,
    call: CallOptions | undefined,
    what: string,
  ): Promise<Readable> {
    const from = first.part.offset + first.part.length;
    const partSize = this.options.readPartSize;
    const large = header(headers, "x-static-large-object")?.toLowerCase() === "true";
    const segments = large ? await this.segmentList(key, header(headers, "x-timestamp"), call) : undefined;
    const parts = segments ? segmentParts(segments, from, end, partSize) : split(this.objectPath(key), from, end - from, partSize);
    const etag = header(headers, "etag");
    const fetchPart = async (part: Part, partSignal: AbortSignal) => {
      const partWhat = `${what}: bytes ${part.offset}-${part.offset + part.length - 1} of ${part.path}`;
      const range = `bytes=${part.offset}-${part.offset + part.length - 1}`;
      const partHeaders: Record<string, string> = { ...call?.traceContext, range };
      if (!segments && etag) partHeaders["if-match"] = etag;
      const response = await this.connection.request("GET", part.path, { headers: partHeaders, signal: partSignal }, partWhat);
      if (response.statusCode === 206) return response;
      discard(response);
      if (response.statusCode === 412 || response.statusCode === 404) {
        throw new StoreError("not-found", `${what}: the object was replaced or deleted while it was read (HTTP ${response.statusCode}); read it again`);
      }
      throw statusError(response.statusCode ?? 0, partWhat);
    };
    return new PartsReader(first, parts, fetchPart, this.options.parallelReads, (err) => networkError(err, what), call?.signal);
  }

  /**
   * The segments of the SLO at `key`, when they can be read directly: the manifest is the
   * one the first part came from (same X-Timestamp) and names whole plain objects only.
   */
  private async segmentList(key: string, timestamp: string | undefined, call: CallOptions | undefined): Promise<Segment[] | undefined> {
    if (!timestamp) return undefined;
    const what = `look up the segments of ${this.describe(key)}`;
    const query = { "multipart-manifest": "get" };
    const answer = await this.callRetrying("GET", this.objectPath(key), { query, headers: { ...call?.traceContext }, signal: call?.signal }, what);
    if (!ok(answer.status) || header(answer.headers, "x-timestamp") !== timestamp) return undefined;
    const entries = JSON.parse(answer.body.toString("utf8")) as Array<{ name?: unknown; bytes?: unknown; range?: unknown; sub_slo?: unknown }>;
    if (!entries.every((e) => typeof e.name === "string" && e.name.startsWith("/") && typeof e.bytes === "number" && !e.range && !e.sub_slo)) return undefined;
    return entries.map((e) => ({ path: e.name as string, size: e.bytes as number }));
  }

  /**
   * Streams `source` to the object. The first MiB decides: a source that ends within it is
   * one PUT. Anything longer goes as segments of `segmentSize` bytes into the segments
   * container, streamed with chunked encoding and never held in memory, and becomes the
   * object only when the SLO manifest is stored. Any failure or abort deletes the
   * segments already written; a successful write deletes the segments of the object it
   * replaced.
   */
  async write(key: string, source: AsyncIterable<Uint8Array>, options?: CallOptions): Promise<ObjectInfo> {
    checkKey(key);
    const signal = options?.signal;
    signal?.throwIfAborted();
    await this.ready();
    const reader = new ChunkReader(source[Symbol.asyncIterator]());
    const what = `write ${this.describe(key)}`;
    const head: Buffer[] = [];
    // A source that stalls must not hold up an abort.
    await untilAborted(
      (async () => {
        for await (const chunk of reader.take(Math.min(SMALL_OBJECT_BYTES, this.options.segmentSize))) head.push(chunk);
      })(),
      signal,
    );
    const replaced = await this.segmentsOf(key, options);
    let answer: Answer;
    let size: number;
    if (!(await reader.more())) {
      const body = Buffer.concat(head);
      size = body.length;
      answer = await this.callRetrying("PUT", this.objectPath(key), { body, headers: { ...options?.traceContext }, signal }, what);
      if (!ok(answer.status)) throw this.putError(answer.status, this.options.container, what);
    } else {
      ({ answer, size } = await this.writeLargeObject(key, head, reader, options, what));
    }
    await this.deleteSegments(replaced, options);
    return { key, size, modifiedTime: modified(answer.headers) };
  }

  private async writeLargeObject(key: string, head: Buffer[], reader: ChunkReader, call: CallOptions | undefined, what: string) {
    const signal = call?.signal;
    const trace = { ...call?.traceContext };
    const prefix = `${key}/${randomBytes(8).toString("hex")}`;
    const written: string[] = [];
    const manifest: SegmentEntry[] = [];
    let size = 0;
    try {
      let first = true;
      while (first || (await reader.more())) {
        if (manifest.length >= MAX_SEGMENTS) {
          throw new StoreError("invalid", `${what}: more than ${MAX_SEGMENTS} segments of ${this.options.segmentSize} bytes; raise "segmentSize"`);
        }
        const name = `${prefix}/${String(manifest.length + 1).padStart(8, "0")}`;
        const segmentWhat = `${what}: segment ${manifest.length + 1}`;
        let bytes = 0;
        const replay = first ? head : [];
        const limit = this.options.segmentSize - replay.reduce((n, c) => n + c.length, 0);
        const body = (async function* () {
          for (const chunk of replay) {
            bytes += chunk.length;
            yield chunk;
          }
          for await (const chunk of reader.take(limit)) {
            bytes += chunk.length;
            yield chunk;
          }
        })();
        // Recorded before the PUT: an abort half-way may still leave the segment stored.
        written.push(name);
        const answer = await this.connection.putStream(`/${this.segmentsContainer}/${name}`, trace, body, signal, segmentWhat);
        if (!ok(answer.status)) throw this.putError(answer.status, this.segmentsContainer, segmentWhat);
        manifest.push({ path: `/${this.segmentsContainer}/${name}`, etag: header(answer.headers, "etag") ?? "", size_bytes: bytes });
        size += bytes;
        first = false;
      }
      const answer = await this.callRetrying(
        "PUT",
        this.objectPath(key),
        { query: { "multipart-manifest": "put" }, headers: trace, body: Buffer.from(JSON.stringify(manifest)), signal },
        `${what}: manifest`,
      );
      if (!ok(answer.status)) throw this.putError(answer.status, this.options.container, `${what}: manifest`);
      return { answer, size };
    } catch (err) {
      await this.deleteSegments(written.map((name) => `/${this.segmentsContainer}/${name}`), call);
      throw err;
    }
  }

  async delete(key: string, options?: CallOptions): Promise<void> {
    checkKey(key);
    await this.ready();
    const signal = options?.signal;
    const trace = { ...options?.traceContext };
    const what = `delete ${this.describe(key)}`;
    const head = await this.connection.call("HEAD", this.objectPath(key), { headers: trace, signal }, what);
    if (head.status === 404) return;
    if (!ok(head.status)) throw statusError(head.status, what);
    // An SLO goes with its segments; Swift refuses multipart-manifest=delete for plain objects.
    const large = header(head.headers, "x-static-large-object")?.toLowerCase() === "true";
    const answer = await this.connection.call(
      "DELETE",
      this.objectPath(key),
      large ? { query: { "multipart-manifest": "delete" }, headers: { ...trace, accept: "application/json" }, signal } : { headers: trace, signal },
      what,
    );
    if (answer.status === 404 || (ok(answer.status) && (!large || bulkOk(answer)))) return;
    throw statusError(ok(answer.status) ? bulkStatus(answer) : answer.status, what);
  }

  async list(options?: ListOptions): Promise<ObjectPage> {
    const prefix = options?.prefix ?? "";
    if (typeof prefix !== "string") throw new StoreError("invalid", "list prefix must be a string");
    const pageSize = options?.pageSize || DEFAULT_PAGE_SIZE;
    if (!Number.isSafeInteger(pageSize) || pageSize < 1) {
      throw new StoreError("invalid", `list pageSize must be a positive integer, not ${String(options?.pageSize)}`);
    }
    await this.ready();
    const limit = Math.min(pageSize, MAX_LISTING - 1);
    // One more than asked: whether more follow is then known without an empty last page.
    const items = await this.listing(this.options.container, { prefix, marker: options?.pageToken ?? "", limit: limit + 1 }, options);
    const objects = items.slice(0, limit).map((item) => ({ key: item.name, size: item.bytes, modifiedTime: listingTime(item.last_modified) }));
    return items.length > limit ? { objects, nextPageToken: objects.at(-1)!.key } : { objects };
  }

  /**
   * Deletes segments of writes that never stored their manifest (a writer killed half-way):
   * segments older than `olderThan` that the object's current manifest does not name.
   */
  async removePartialWrites(olderThan: Date, options?: CallOptions): Promise<number> {
    await this.ready();
    const writes = new Map<string, { key: string; paths: string[]; newest: number }>();
    for (let marker = ""; ; ) {
      const items = await this.listing(this.segmentsContainer, { prefix: "", marker, limit: MAX_LISTING }, options);
      for (const item of items) {
        const write = item.name.slice(0, item.name.lastIndexOf("/"));
        const key = write.slice(0, write.lastIndexOf("/"));
        if (key === "") continue; // not one of our segments
        const entry = writes.get(write) ?? { key, paths: [], newest: 0 };
        entry.paths.push(`/${this.segmentsContainer}/${item.name}`);
        entry.newest = Math.max(entry.newest, listingTime(item.last_modified).getTime());
        writes.set(write, entry);
      }
      if (items.length < MAX_LISTING) break;
      marker = items.at(-1)!.name;
    }
    let removed = 0;
    for (const { key, paths, newest } of writes.values()) {
      if (newest >= olderThan.getTime()) continue;
      const current = new Set(await this.segmentsOf(key, options));
      if (paths.some((p) => current.has(p))) continue;
      await this.deleteSegments(paths, options);
      removed += paths.length;
    }
    return removed;
  }

  /** A Swift TempURL for the object, signed with HMAC-SHA256 or -SHA512 and the account's Temp-URL-Key. */
  async presign(key: string, options: PresignOptions): Promise<PresignedUrl> {
    checkKey(key);
    if (options.method !== "GET" && options.method !== "PUT") throw new StoreError("invalid", `presign method must be GET or PUT`);
    if (!Number.isSafeInteger(options.expiresInSeconds) || options.expiresInSeconds < 1) {
      throw new StoreError("invalid", `presign expiresInSeconds must be a positive whole number`);
    }
    const tempUrlKey = await this.ready();
    const storageUrl = await this.connection.storageUrl();
    const expires = Math.floor(Date.now() / 1000) + options.expiresInSeconds;
    const path = `${decodeURIComponent(new URL(storageUrl).pathname).replace(/\/+$/, "")}${this.objectPath(key)}`;
    const signature = tempUrlSignature(this.options.tempUrlDigest, tempUrlKey, options.method, expires, path);
    return { url: tempUrl(storageUrl, path, signature, expires), expireTime: new Date(expires * 1000) };
  }

  async close(): Promise<void> {}

  /** The checks of open(), once; after a transient failure the next call runs them again. Yields the Temp-URL-Key. */
  private ready(): Promise<string> {
    this.prepared ??= this.prepare().catch((err: unknown) => {
      this.prepared = undefined;
      throw err;
    });
    return this.prepared;
  }

  private async prepare(): Promise<string> {
    await this.ensureContainer(this.options.container, this.options.createContainer);
    // The segments container is the plugin's own business: made when missing.
    await this.ensureContainer(this.segmentsContainer, true);
    return this.temporaryUrlKey();
  }

  private async ensureContainer(container: string, create: boolean): Promise<void> {
    const what = `container "${container}"`;
    const head = await this.connection.call("HEAD", `/${container}`, {}, `look up ${what}`);
    if (ok(head.status)) return;
    if (head.status !== 404) throw statusError(head.status, `look up ${what}`);
    if (!create) {
      throw new StoreError("invalid", `${what} does not exist; create it (swift post ${container}) or set option "createContainer": true`);
    }
    const put = await this.connection.call("PUT", `/${container}`, {}, `create ${what}`);
    if (!ok(put.status)) throw statusError(put.status, `create ${what}`);
  }

  /**
   * The key TempURLs are signed with: option tempUrlKey, set on the account when the
   * account has another (or none), else the account's own Temp-URL-Key.
   */
  private async temporaryUrlKey(): Promise<string> {
    const account = await this.connection.call("HEAD", "", {}, "look up the account");
    if (!ok(account.status)) throw statusError(account.status, "look up the account");
    const keys = [header(account.headers, "x-account-meta-temp-url-key"), header(account.headers, "x-account-meta-temp-url-key-2")];
    const wanted = this.options.tempUrlKey;
    if (wanted === undefined) {
      const existing = keys.find((k) => k);
      if (!existing) throw new StoreError("invalid", `the Swift account has no Temp-URL-Key and option "tempUrlKey" is not set; temporary URLs need one`);
      return existing;
    }
    if (keys.includes(wanted)) return wanted;
    const set = await this.connection.call("POST", "", { headers: { "x-account-meta-temp-url-key": wanted } }, "set the account's Temp-URL-Key");
    if (set.status === 403) {
      throw new StoreError("permission", `the Swift user may not set the account's Temp-URL-Key (it is not an account admin); set it once as an admin`);
    }
    if (!ok(set.status)) throw statusError(set.status, "set the account's Temp-URL-Key");
    return wanted;
  }

  /** The segment paths ("/container/name") of the SLO at `key`; none for a plain or missing object. */
  private async segmentsOf(key: string, call: CallOptions | undefined): Promise<string[]> {
    const what = `look up the segments of ${this.describe(key)}`;
    const query = { "multipart-manifest": "get", format: "raw" };
    const answer = await this.callRetrying("GET", this.objectPath(key), { query, headers: { ...call?.traceContext }, signal: call?.signal }, what);
    if (answer.status === 404) return [];
    if (!ok(answer.status)) throw statusError(answer.status, what);
    if (header(answer.headers, "x-static-large-object")?.toLowerCase() !== "true") return [];
    const entries = JSON.parse(answer.body.toString("utf8")) as Array<{ path?: string }>;
    // Only our own segments of this key: a manifest written by someone else may name anything.
    const own = `/${this.segmentsContainer}/${key}/`;
    return entries.flatMap((e) => (typeof e.path === "string" && e.path.startsWith(own) ? [e.path] : []));
  }

  /**
   * Best effort: what is left is found later by removePartialWrites. The first failure
   * ends it, so a Swift that has gone away does not hold up the caller once per segment.
   * Not under the call's signal: the segments of an aborted write go too.
   */
  private async deleteSegments(paths: string[], call: CallOptions | undefined): Promise<void> {
    for (const path of paths) {
      const answer = await this.callRetrying("DELETE", path, { headers: { ...call?.traceContext } }, `delete segment ${path}`).catch(() => undefined);
      if (!answer || !(ok(answer.status) || answer.status === 404)) return;
    }
  }

  private async listing(
    container: string,
    query: { prefix: string; marker: string; limit: number },
    call: CallOptions | undefined,
  ): Promise<Array<{ name: string; bytes: number; last_modified: string }>> {
    const what = `list container "${container}"`;
    const answer = await this.connection.call(
      "GET",
      `/${container}`,
      {
        query: { format: "json", prefix: query.prefix, marker: query.marker, limit: String(query.limit) },
        headers: { ...call?.traceContext },
        signal: call?.signal,
      },
      what,
    );
    if (answer.status === 204) return [];
    if (!ok(answer.status)) throw statusError(answer.status, what);
    return JSON.parse(answer.body.toString("utf8"));
  }

  /** A request with an in-memory body, tried again with back-off on transient faults. */
  private async callRetrying(method: string, path: string, options: Parameters<SwiftConnection["call"]>[2], what: string): Promise<Answer> {
    for (let attempt = 1; ; attempt++) {
      let answer: Answer | undefined;
      let failure: unknown;
      try {
        answer = await this.connection.call(method, path, options, what);
      } catch (err) {
        failure = networkError(err, what);
      }
      const transient = answer ? isTransientStatus(answer.status) : isStoreError(failure) && failure.kind === "unavailable";
      if (!transient || attempt >= ATTEMPTS || options.signal?.aborted) {
        if (answer) return answer;
        throw failure;
      }
      const ceiling = 200 * 2 ** (attempt - 1);
      await sleep(ceiling / 2 + Math.random() * (ceiling / 2), undefined, { signal: options.signal });
    }
  }

  /** A refused PUT; a 404 there means the container is gone. */
  private putError(status: number, container: string, what: string): StoreError {
    if (status !== 404) return statusError(status, what);
    return new StoreError("not-found", `${what}: container "${container}" does not exist (HTTP 404); create it again`);
  }

  private objectPath(key: string): string {
    return `/${this.options.container}/${key}`;
  }

  private describe(key: string): string {
    return `object "${key}" in container "${this.options.container}"`;
  }
}

/**
 * Reads a byte stream in slices of a given length, carrying over the part of a chunk
 * that belongs to the next slice.
 */
class ChunkReader {
  private carry?: Buffer;
  private ended = false;

  constructor(private readonly source: AsyncIterator<Uint8Array>) {}

  /** Whether another byte follows; waits for the source to tell. */
  async more(): Promise<boolean> {
    while (!this.carry && !this.ended) {
      const next = await this.source.next();
      if (next.done) this.ended = true;
      else if (next.value.length > 0) this.carry = Buffer.from(next.value.buffer, next.value.byteOffset, next.value.byteLength);
    }
    return this.carry !== undefined;
  }

  /** The next `limit` bytes, or fewer where the source ends. */
  async *take(limit: number): AsyncGenerator<Buffer> {
    for (let left = limit; left > 0 && (await this.more()); ) {
      const chunk = this.carry!;
      if (chunk.length <= left) {
        this.carry = undefined;
        left -= chunk.length;
        yield chunk;
      } else {
        this.carry = chunk.subarray(left);
        yield chunk.subarray(0, left);
        left = 0;
      }
    }
  }
}

/** Settles like `promise`, or rejects with the signal's AbortError as soon as it aborts. */
function untilAborted<T>(promise: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return promise;
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(abortError(signal));
    if (signal.aborted) onAbort();
    else signal.addEventListener("abort", onAbort, { once: true });
    promise.then(resolve, reject).finally(() => signal.removeEventListener("abort", onAbort));
  });
}

/** Shaped like the AbortError of Node's own calls (the signal's reason is its cause), so every abort looks the same. */
function abortError(signal: AbortSignal): Error {
  return Object.assign(new Error("The operation was aborted", { cause: signal.reason }), { name: "AbortError", code: "ABORT_ERR" });
}

/**
 * Keys follow the rules of the other stores, so an image copies between stores under the
 * same key; "." and ".." segments would also be resolved away in the URL.
 */
function checkKey(key: unknown): void {
  if (typeof key !== "string") throw new StoreError("invalid", `object key must be a string, not ${typeof key}`);
  const quoted = JSON.stringify(key);
  if (key === "") throw new StoreError("invalid", "object key must not be empty");
  if (key.startsWith("/")) throw new StoreError("invalid", `object key ${quoted} is absolute; keys are relative to the store`);
  // eslint-disable-next-line no-control-regex
  if (/[\x00-\x1f\x7f]/.test(key)) throw new StoreError("invalid", `object key ${quoted} contains a control character`);
  if (Buffer.byteLength(key) > MAX_KEY_BYTES) throw new StoreError("invalid", `object key ${quoted} is longer than ${MAX_KEY_BYTES} bytes`);
  for (const segment of key.split("/")) {
    if (segment === "") throw new StoreError("invalid", `object key ${quoted} has an empty segment (a doubled or trailing '/')`);
    if (segment === "." || segment === "..") throw new StoreError("invalid", `object key ${quoted} contains a '${segment}' segment`);
  }
}

function checkRange(range: ByteRange): void {
  if (!Number.isSafeInteger(range.offset) || range.offset < 0) {
    throw new StoreError("invalid", `range offset must be a non-negative integer, not ${String(range.offset)}`);
  }
  if (range.length !== undefined && (!Number.isSafeInteger(range.length) || range.length < 0)) {
    throw new StoreError("invalid", `range length must be a non-negative integer, not ${String(range.length)}`);
  }
}

function beyondEnd(what: string, range: ByteRange, size: number): StoreError {
  const described = range.length === undefined ? `from offset ${range.offset}` : `of ${range.length} bytes at offset ${range.offset}`;
  return new StoreError("invalid", `${what}: the range ${described} lies beyond the end (${size} bytes)`);
}

function ok(status: number | undefined): boolean {
  return status !== undefined && status >= 200 && status < 300;
}

function info(key: string, headers: Answer["headers"]): ObjectInfo {
  return { key, size: Number(header(headers, "content-length") ?? 0), modifiedTime: modified(headers) };
}

function modified(headers: Answer["headers"]): Date {
  const value = header(headers, "last-modified");
  const time = value ? Date.parse(value) : NaN;
  return Number.isFinite(time) ? new Date(time) : new Date();
}

/** Swift's listings give UTC times without a zone. */
function listingTime(value: string): Date {
  return new Date(`${value}Z`);
}

/** An SLO delete answers 200 with a bulk report whose own status tells whether all went. */
function bulkStatus(answer: Answer): number {
  try {
    const report = JSON.parse(answer.body.toString("utf8")) as { "Response Status"?: string };
    return Number.parseInt(report["Response Status"] ?? "200", 10) || 200;
  } catch {
    return answer.status;
  }
}

function bulkOk(answer: Answer): boolean {
  const status = bulkStatus(answer);
  return ok(status) || status === 404;
}
