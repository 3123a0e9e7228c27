/**
 * The data endpoint: where customers PUT an upload and GET (or HEAD) a download through a
 * temporary URL the service signed (see ../core/signed-url.ts), for stores that cannot
 * presign URLs themselves. End users have no other way to move image bytes, so every
 * request must carry a valid signature for its method and object before anything is read
 * from its body, looked up or written.
 *
 *   PUT  /v1/data/STORE/KEY?expires=..&signature=..   streams the body into the store (atomic)
 *   GET  /v1/data/STORE/KEY?expires=..&signature=..   the object, or one byte range of it
 *   HEAD /v1/data/STORE/KEY?expires=..&signature=..   the headers of GET
 *
 * Bodies are streamed both ways with back-pressure; memory use does not grow with size.
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import { constants as http2Constants, type Http2ServerRequest, type Http2ServerResponse } from "node:http2";
import type { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import type { Logger } from "pino";
import type { ConfiguredStore } from "../core/stores.js";
import { DATA_PATH_PREFIX, type UrlSigner } from "../core/signed-url.js";
import { isStoreError, type ByteRange, type ObjectInfo, type OpenFile, type StoreInstance } from "../plugins/plugin-api.js";

type Request = IncomingMessage | Http2ServerRequest;
type Response = ServerResponse | Http2ServerResponse;

export interface DataEndpointOptions {
  stores: ConfiguredStore[];
  signer: UrlSigner;
  /** The largest upload accepted, in bytes. */
  maxImageBytes: number;
  logger: Logger;
  /** The listener's name, for the audit log. */
  listener?: string;
  /** Whether the listener's policy serves temporary URLs for this method (rules data_put and data_get). */
  allows?: (action: "data_put" | "data_get") => boolean;
}

const ALLOW = "GET, HEAD, PUT";
/** How often GET re-opens an object that was replaced between its stat and its read. */
const READ_ATTEMPTS = 3;

/** Ends a request with a status and a short plain-text line. */
class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

/** The upload grew past the size limit. */
class TooLarge extends Error {}
/** The client went away (or broke the body off) before the upload was complete. */
class ClientGone extends Error {}

/** Per-request facts for the log line. */
interface Exchange {
  method: string;
  store?: string;
  key?: string;
  bytes: number;
}

export function createDataEndpoint(options: DataEndpointOptions): (req: Request, res: Response) => void {
  const { signer, logger } = options;
  if (!Number.isSafeInteger(options.maxImageBytes) || options.maxImageBytes < 0) {
    throw new Error(`maxImageBytes must be a non-negative integer, not ${String(options.maxImageBytes)}`);
  }

  return (req, res) => {
    const started = process.hrtime.bigint();
    const exchange: Exchange = { method: req.method ?? "", bytes: 0 };
    // Errors of the request stream (a client that resets) are handled where the body is read.
    req.on("error", () => {});
    res.once("close", () => {
      // Writes are audited; the URL is not logged, as its query holds the signature.
      if (exchange.method === "PUT") {
        logger.info(
          {
            audit: true,
            time: new Date().toISOString(),
            subject: "temporary-url",
            listener: options.listener ?? "default",
            action: "data_put",
            targets: { store: exchange.store, key: exchange.key },
            outcome: finished(res) ? res.statusCode : "client-gone",
          },
          "audit",
        );
      }
      logger.debug(
        {
          method: exchange.method,
          store: exchange.store,
          key: exchange.key,
          status: res.statusCode,
          bytes: exchange.bytes,
          durationMs: Number((process.hrtime.bigint() - started) / 1000n) / 1000,
          completed: finished(res),
        },
        "data request",
      );
    });
    let gone = false; // the connection closed before the response was complete
    res.once("close", () => (gone = !finished(res)));
    handle(req, res, exchange).catch((err: unknown) => {
      if (gone) return; // nobody to answer (a stat or read aborted because the client left)
      if (err instanceof HttpError) {
        sendError(req, res, err.status, err.message, err.headers);
        return;
      }
      logger.warn({ method: exchange.method, store: exchange.store, err: describe(err) }, "data request failed");
      if (res.headersSent) res.destroy();
      else sendError(req, res, 500, "internal error");
    });
  };

  async function handle(req: Request, res: Response, exchange: Exchange): Promise<void> {
    const target = parseTarget(req.url ?? "");
    if (target === undefined) throw new HttpError(404, "not found");
    const method = req.method ?? "";
    if (method !== "GET" && method !== "HEAD" && method !== "PUT") {
      throw new HttpError(405, "method not allowed", { Allow: ALLOW });
    }
    if (options.allows && !options.allows(method === "PUT" ? "data_put" : "data_get")) {
      throw new HttpError(403, "this listener does not serve temporary URLs");
    }
    // The signature first: unsigned requests learn nothing, not even whether a store exists.
    const expires = single(target.query, "expires");
    const signature = single(target.query, "signature");
    if (expires === null || signature === null) throw new HttpError(403, "invalid signature");
    if (expires === undefined || signature === undefined) throw new HttpError(403, "missing signature");
    if (target.store === undefined || target.key === undefined) throw new HttpError(403, "invalid signature");
    const verdict = signer.verify(method, target.store, target.key, expires, signature);
    if (verdict === "expired") throw new HttpError(403, "URL expired");
    if (verdict !== "ok") throw new HttpError(403, "invalid signature");

    exchange.store = target.store;
    exchange.key = target.key;
    if (!isSafeKey(target.key)) throw new HttpError(400, "invalid object key");
    const store = options.stores.find((s) => s.name === target.store);
    if (store?.instance === undefined) throw new HttpError(404, "no such store");

    if (method === "PUT") await put(req, res, store, target.key, exchange);
    else await get(req, res, store, target.key, method === "HEAD", exchange);
  }

  async function put(req: Request, res: Response, store: ConfiguredStore, key: string, exchange: Exchange) {
    if (store.capabilities && !store.capabilities.write) {
      throw new HttpError(405, "this store is read-only", { Allow: "GET, HEAD" });
    }
    const storeLimit = store.capabilities?.maxObjectSize ?? 0;
    const limit = storeLimit > 0 ? Math.min(options.maxImageBytes, storeLimit) : options.maxImageBytes;
    const declared = contentLength(req);
    if (declared !== undefined && declared > limit) {
      throw new HttpError(413, `image larger than ${limit} bytes`);
    }

    const abort = abortWhenClientLeaves(req, res);
    let info: ObjectInfo;
    try {
      info = await store.instance!.write(key, countedBody(req, limit, declared, exchange), { signal: abort.signal });
    } catch (err) {
      if (err instanceof TooLarge) throw new HttpError(413, `image larger than ${limit} bytes`);
      if (err instanceof ClientGone || abort.signal.aborted) {
        // Nobody is left to answer; the store removed whatever it had written.
        res.destroy();
        return;
      }
      throw storeHttpError(err);
    } finally {
      abort.done();
    }
    const body = `${JSON.stringify({ size: info.size })}\n`;
    res.writeHead(201, {
      "Content-Type": "application/json",
      "Content-Length": String(Buffer.byteLength(body)),
      "Cache-Control": "no-store",
    });
    res.end(body);
  }

  async function get(req: Request, res: Response, store: ConfiguredStore, key: string, head: boolean, exchange: Exchange) {
    const instance = store.instance!;
    const abort = abortWhenClientLeaves(req, res);
    try {
      // An open file keeps the bytes it was opened on: its info describes exactly what is sent.
      const file = store.capabilities?.openFile && instance.openFile && (await openObject(instance.openFile.bind(instance), key, abort.signal));
      if (file) {
        try {
          const answer = answerFor(req, store, file.info, head);
          res.writeHead(answer.status, answer.headers);
          if (head) return void res.end();
          await sendFile(file, res, answer, abort.signal, (count) => (exchange.bytes += count));
        } catch (err) {
          if (!res.headersSent) throw err;
          if (!abort.signal.aborted) logger.warn({ store: store.name, err: describe(err) }, "data read failed");
          res.destroy();
        } finally {
          await file.close().catch(() => undefined);
        }
        return;
      }
      for (let attempt = 1; ; attempt++) {
        const info = await statObject(instance.stat.bind(instance), key, abort.signal);
        if (info === undefined) throw new HttpError(404, "no such object");
        const answer = answerFor(req, store, info, head);
        if (head) {
          res.writeHead(answer.status, answer.headers);
          res.end();
          return;
        }

        const readRange: ByteRange = { offset: answer.start, length: answer.length };
        let stream: Readable;
        try {
          stream = await instance.read(key, { range: readRange, signal: abort.signal });
        } catch (err) {
          if (abort.signal.aborted) return;
          // Removed or shrunk since the stat: look again.
          if (isStoreError(err) && (err.kind === "not-found" || err.kind === "invalid") && attempt < READ_ATTEMPTS) continue;
          throw storeHttpError(err);
        }
        // The object may have been replaced between the stat and the read; then the headers
        // would describe one object and the bytes come from another. Check, and start over.
        const again = await statObject(instance.stat.bind(instance), key, abort.signal).catch(() => undefined);
        if (again === undefined || again.size !== info.size || etagOf(again) !== etagOf(info)) {
          stream.destroy();
          if (attempt < READ_ATTEMPTS) continue;
          throw new HttpError(503, "object is changing, try again", { "Retry-After": "1" });
        }

        res.writeHead(answer.status, answer.headers);
        stream.on("data", (chunk: Uint8Array) => (exchange.bytes += chunk.length));
        try {
          await pipeline(stream, res as unknown as NodeJS.WritableStream, { signal: abort.signal });
        } catch (err) {
          // The client left, or the store failed mid-way: the status is out, so cut the response.
          if (!abort.signal.aborted) logger.warn({ store: store.name, err: describe(err) }, "data read failed");
          stream.destroy();
          res.destroy();
        }
        return;
      }
    } finally {
      abort.done();
    }
  }
}

/** What a GET or HEAD of the object answers: status, headers and the bytes to send. */
interface Answer {
  status: number;
  headers: Record<string, string>;
  start: number;
  length: number;
}

function answerFor(req: Request, store: ConfiguredStore, info: ObjectInfo, head: boolean): Answer {
  const size = info.size;
  const etag = etagOf(info);
  const headers: Record<string, string> = {
    "Content-Type": "application/octet-stream",
    "Accept-Ranges": store.capabilities?.readRanges === false ? "none" : "bytes",
    "Cache-Control": "private, no-cache",
    "X-Content-Type-Options": "nosniff",
  };
  if (etag !== undefined) headers.ETag = etag;
  if (info.modifiedTime !== undefined) headers["Last-Modified"] = info.modifiedTime.toUTCString();

  // Range is defined for GET only (RFC 9110 14.2); HEAD answers as a plain GET would.
  let range: { start: number; end: number } | undefined;
  const rangeHeader = header(req, "range");
  if (!head && rangeHeader !== undefined && store.capabilities?.readRanges !== false && ifRangeHolds(req, info, etag)) {
    const parsed = parseRange(rangeHeader, size);
    if (parsed === "unsatisfiable") {
      throw new HttpError(416, "range not satisfiable", { "Content-Range": `bytes */${size}` });
    }
    range = parsed;
  }
  if (range) headers["Content-Range"] = `bytes ${range.start}-${range.end}/${size}`;
  const length = range ? range.end - range.start + 1 : size;
  headers["Content-Length"] = String(length);
  return { status: range ? 206 : 200, headers, start: range?.start ?? 0, length };
}

async function openObject(open: NonNullable<StoreInstance["openFile"]>, key: string, signal: AbortSignal): Promise<OpenFile | undefined> {
  try {
    return await open(key, { signal });
  } catch (err) {
    if (isStoreError(err) && err.kind === "not-found") throw new HttpError(404, "no such object");
    throw storeHttpError(err);
  }
}

/** Buffers one file download reads into and reuses: enough to keep the connection busy. */
const SEND_BUFFERS = 4;
const SEND_CHUNK_BYTES = 1024 * 1024;

/**
 * Sends the answer's bytes of an open file, reading into a few buffers that each go back to
 * the pool once the connection has taken them (the write's callback), so a download
 * allocates nothing per chunk. A new buffer per chunk made V8 collect garbage every ~30 MiB,
 * and once the process had served gRPC streams those were full collections: 1 GiB then took
 * 1.7 CPU-s instead of 0.5.
 */
async function sendFile(file: OpenFile, res: Response, answer: Answer, signal: AbortSignal, onBytes: (count: number) => void): Promise<void> {
  const free = Array.from({ length: SEND_BUFFERS }, () => Buffer.allocUnsafeSlow(Math.min(SEND_CHUNK_BYTES, Math.max(answer.length, 1))));
  // Both response kinds write so; TypeScript cannot call the union's overloads.
  const write = res.write.bind(res) as (chunk: Uint8Array, callback: (err?: Error | null) => void) => boolean;
  let failure: Error | undefined;
  let wake: (() => void) | undefined;
  const woken = () => {
    const resume = wake;
    wake = undefined;
    resume?.();
  };
  signal.addEventListener("abort", woken);
  try {
    for (let position = answer.start, end = answer.start + answer.length; position < end; ) {
      while (free.length === 0 && failure === undefined && !signal.aborted) await new Promise<void>((resolve) => (wake = resolve));
      if (failure) throw failure;
      signal.throwIfAborted();
      const buffer = free.pop()!;
      const count = await file.read(buffer.subarray(0, Math.min(buffer.length, end - position)), position);
      if (count === 0) throw new Error(`the object ended ${end - position} bytes early`);
      position += count;
      onBytes(count);
      write(buffer.subarray(0, count), (err) => {
        if (err) failure ??= err;
        free.push(buffer);
        woken();
      });
    }
    res.end();
  } finally {
    signal.removeEventListener("abort", woken);
  }
}

/** The parts of a request target `/v1/data/STORE/KEY?QUERY`; undefined for any other path. */
function parseTarget(url: string): { store?: string; key?: string; query: URLSearchParams } | undefined {
  // Origin-form only: the raw path is used, never one normalised by a URL parser, so that
  // what is verified is exactly what was asked for.
  if (!url.startsWith(DATA_PATH_PREFIX)) return undefined;
  const q = url.indexOf("?");
  const rawPath = q < 0 ? url : url.slice(0, q);
  const query = new URLSearchParams(q < 0 ? "" : url.slice(q + 1));
  const rest = rawPath.slice(DATA_PATH_PREFIX.length);
  const slash = rest.indexOf("/");
  if (slash <= 0 || slash === rest.length - 1) return undefined; // no store, or no key
  const store = decode(rest.slice(0, slash));
  const segments = rest.slice(slash + 1).split("/").map(decode);
  if (store === undefined || segments.includes(undefined)) return { query };
  return { store, key: segments.join("/"), query };
}

function decode(segment: string): string | undefined {
  try {
    return decodeURIComponent(segment);
  } catch {
    return undefined;
  }
}

/** A query parameter given once; undefined when absent, null when repeated. */
function single(query: URLSearchParams, name: string): string | undefined | null {
  const values = query.getAll(name);
  if (values.length === 0 || (values.length === 1 && values[0] === "")) return undefined;
  return values.length === 1 ? values[0]! : null;
}

/** Lexical key checks, before any store sees the key (stores check again). */
function isSafeKey(key: string): boolean {
  if (key === "" || key.includes("\0") || key.includes("\\") || key.startsWith("/")) return false;
  return key.split("/").every((s) => s !== "" && s !== "." && s !== "..");
}

function header(req: Request, name: string): string | undefined {
  const value = req.headers[name];
  return Array.isArray(value) ? value.join(", ") : value;
}

/** The declared body length; undefined for chunked bodies. Malformed values are refused. */
function contentLength(req: Request): number | undefined {
  const value = header(req, "content-length");
  if (value === undefined) return undefined;
  if (!/^[0-9]{1,16}$/.test(value.trim())) throw new HttpError(400, "invalid Content-Length");
  return Number(value.trim());
}

/** The request body, counted as it passes; throws TooLarge past `limit` and ClientGone if cut short. */
async function* countedBody(
  req: Request,
  limit: number,
  declared: number | undefined,
  exchange: Exchange,
): AsyncGenerator<Uint8Array> {
  try {
    // destroyOnReturn: false — leaving the loop early (too large) must not destroy the
    // request, which would take the socket with it before the 413 is sent.
    for await (const chunk of req.iterator({ destroyOnReturn: false }) as AsyncIterable<Uint8Array>) {
      exchange.bytes += chunk.length;
      if (exchange.bytes > limit) throw new TooLarge();
      yield chunk;
    }
  } catch (err) {
    if (err instanceof TooLarge) throw err;
    throw new ClientGone("the request body was cut short", { cause: err });
  }
  if (!req.complete || (declared !== undefined && exchange.bytes !== declared)) {
    throw new ClientGone("the request body was cut short");
  }
}

/**
 * An AbortController that fires when the client goes away before the response is complete.
 * `done()` detaches it once the work is over.
 */
function abortWhenClientLeaves(req: Request, res: Response): { signal: AbortSignal; done(): void } {
  const controller = new AbortController();
  const leave = () => {
    if (!finished(res)) controller.abort(new ClientGone("the client went away"));
  };
  const onReqClose = () => {
    if (!req.complete) leave();
  };
  req.once("aborted", leave);
  req.once("close", onReqClose);
  res.once("close", leave);
  return {
    signal: controller.signal,
    done() {
      req.off("aborted", leave);
      req.off("close", onReqClose);
      res.off("close", leave);
    },
  };
}

/** Whether the whole response was handed to the connection. */
function finished(res: Response): boolean {
  return (res as { writableFinished?: boolean }).writableFinished ?? res.writableEnded;
}

async function statObject(
  stat: (key: string, options?: { signal?: AbortSignal }) => Promise<ObjectInfo | undefined>,
  key: string,
  signal: AbortSignal,
): Promise<ObjectInfo | undefined> {
  try {
    return await stat(key, { signal });
  } catch (err) {
    throw storeHttpError(err);
  }
}

/** A strong validator: size and modification time (ms), when the store reports the time. */
function etagOf(info: ObjectInfo): string | undefined {
  if (info.modifiedTime === undefined) return undefined;
  return `"${info.size.toString(16)}-${info.modifiedTime.getTime().toString(16)}"`;
}

/**
 * Whether an `If-Range` precondition (if any) lets a Range apply: a strong ETag equal to
 * ours, or a date equal to Last-Modified on an object modified at least a second before
 * now (RFC 9110 13.1.5). Anything else means: send the whole object.
 */
function ifRangeHolds(req: Request, info: ObjectInfo, etag: string | undefined): boolean {
  const value = header(req, "if-range")?.trim();
  if (value === undefined) return true;
  if (value.startsWith('"')) return etag !== undefined && value === etag;
  if (value.startsWith("W/")) return false;
  const date = Date.parse(value);
  const modified = info.modifiedTime?.getTime();
  if (Number.isNaN(date) || modified === undefined) return false;
  return Math.floor(modified / 1000) * 1000 === date && Date.now() - modified >= 1000;
}

/**
 * One byte range of an object of `size` bytes, inclusive; undefined for a header to ignore
 * (malformed, another unit, or several ranges: the whole object is sent, RFC 9110 14.2).
 */
function parseRange(value: string, size: number): { start: number; end: number } | undefined | "unsatisfiable" {
  const match = /^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$/i.exec(value);
  if (!match) return undefined;
  const [, first, last] = match as unknown as [string, string, string];
  const total = BigInt(size);
  if (first === "") {
    if (last === "") return undefined;
    const suffix = BigInt(last);
    if (suffix === 0n || total === 0n) return "unsatisfiable";
    const start = suffix >= total ? 0n : total - suffix;
    return { start: Number(start), end: size - 1 };
  }
  const start = BigInt(first);
  if (last !== "" && BigInt(last) < start) return undefined; // invalid range-spec
  if (start >= total) return "unsatisfiable";
  const end = last === "" || BigInt(last) >= total ? total - 1n : BigInt(last);
  return { start: Number(start), end: Number(end) };
}

/** Maps a store failure to a status and a fixed short message (store messages stay in the log). */
function storeHttpError(err: unknown): unknown {
  if (err instanceof HttpError || !isStoreError(err)) return err;
  switch (err.kind) {
    case "invalid":
      return new HttpError(400, "invalid object key or range");
    case "not-found":
      return new HttpError(404, "no such object");
    case "already-exists":
      return new HttpError(409, "object already exists");
    case "unavailable":
      return new HttpError(503, "store unavailable, try again", { "Retry-After": "5" });
    default:
      return err; // "permission" and anything else: a server-side fault, logged, answered 500
  }
}

/**
 * Answers with a status and one line of text. A request body not read (or not read to the
 * end) is refused, not drained: HTTP/1.1 closes the connection after the answer, HTTP/2
 * resets the stream with NO_ERROR (RFC 9113 8.1).
 */
function sendError(req: Request, res: Response, status: number, message: string, headers: Record<string, string> = {}) {
  if (res.headersSent || res.destroyed) {
    res.destroy();
    return;
  }
  const body = `${message}\n`;
  const unread = !req.complete;
  const h2 = isHttp2(res);
  res.writeHead(status, {
    ...headers,
    "Content-Type": "text/plain; charset=utf-8",
    "Content-Length": String(Buffer.byteLength(body)),
    "Cache-Control": "no-store",
    ...(unread && !h2 ? { Connection: "close" } : {}),
  });
  if (unread && h2) {
    res.once("finish", () => {
      const stream = (res as Http2ServerResponse).stream;
      if (!stream.destroyed && !stream.closed) stream.close(http2Constants.NGHTTP2_NO_ERROR);
    });
  }
  if (req.method === "HEAD") res.end();
  else res.end(body);
}

function isHttp2(res: Response): res is Http2ServerResponse {
  return "stream" in res && (res as Http2ServerResponse).stream !== undefined;
}

function describe(err: unknown): string {
  if (isStoreError(err)) return `${err.kind}: ${err.message}`;
  return err instanceof Error ? err.message : String(err);
}
