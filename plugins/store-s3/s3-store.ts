/**
 * One S3 store instance: a bucket reached through the AWS SDK for JavaScript v3.
 *
 * A store key is the object key in the bucket, unchanged: the seed URI s3://STORE/KEY
 * names object KEY in the store's bucket (s3://archive/images/ID is images/ID in the
 * bucket the store "archive" is configured with).
 */
import { PassThrough, Readable } from "node:stream";
import {
  AbortMultipartUploadCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadBucketCommand,
  HeadObjectCommand,
  ListMultipartUploadsCommand,
  ListObjectsV2Command,
  ListPartsCommand,
  PutObjectCommand,
  S3Client,
  type S3ClientConfig,
} from "@aws-sdk/client-s3";
import { Upload } from "@aws-sdk/lib-storage";
import { getSignedUrl } from "@aws-sdk/s3-request-presigner";
import { NodeHttpHandler } from "@smithy/node-http-handler";
import type { BuildMiddleware, MetadataBearer } from "@smithy/types";
import {
  StoreError,
  type ByteRange,
  type CallOptions,
  type ListOptions,
  type ObjectInfo,
  type ObjectPage,
  type PresignedUrl,
  type PresignOptions,
  type ReadOptions,
  type StoreInstance,
} from "../../src/plugins/plugin-api.js";
import { bucketNotFound, codeOf, notFound, statusOf, toStoreError, type Failed } from "./errors.js";
import { MAX_PARTS, MAX_PRESIGN_SECONDS, type S3StoreOptions } from "./options.js";
import { WriteRequests } from "./write-requests.js";

const CONNECT_TIMEOUT_MS = 10_000;
/** A connection with no bytes moving either way for this long is given up: its server went away without closing it. */
const IDLE_TIMEOUT_MS = 60_000;
/**
 * Tries per SDK call. The host already retries every store call but writes, with back-off,
 * and resumes broken reads from the last byte (src/core/store-retry.ts); SDK retries
 * beneath that would multiply into long stalls against a store that is down, so those
 * calls get one try. A write cannot be retried by the host (its source is consumed as it
 * goes), but each of its parts is held in memory, so the SDK retries parts instead.
 */
const CALL_ATTEMPTS = 1;
const PART_ATTEMPTS = 4;
/** ListObjectsV2 returns at most 1000 keys a page. */
const MAX_PAGE_SIZE = 1000;
const MAX_KEY_BYTES = 1024;

export class S3Store implements StoreInstance {
  private readonly http: NodeHttpHandler;
  /** Settings every client of this store shares, the connection pool included. */
  private readonly shared: S3ClientConfig;
  private readonly client: S3Client;
  private readonly presigner: S3Client;

  constructor(private readonly options: S3StoreOptions) {
    this.http = new NodeHttpHandler({ connectionTimeout: CONNECT_TIMEOUT_MS, socketTimeout: IDLE_TIMEOUT_MS });
    this.shared = {
      region: options.region,
      ...(options.endpoint === undefined ? {} : { endpoint: options.endpoint }),
      forcePathStyle: options.forcePathStyle,
      ...(options.credentials === undefined ? {} : { credentials: options.credentials }),
      requestChecksumCalculation: options.checksumMode,
      responseChecksumValidation: options.checksumMode,
      requestHandler: this.http,
    };
    this.client = new S3Client({ ...this.shared, maxAttempts: CALL_ATTEMPTS });
    // A URL is signed before its body exists: flexible checksums would make it demand a
    // checksum header that the holder of the URL cannot know.
    this.presigner = new S3Client({ ...this.shared, requestChecksumCalculation: "WHEN_REQUIRED", responseChecksumValidation: "WHEN_REQUIRED" });
  }

  async stat(key: string, options?: CallOptions): Promise<ObjectInfo | undefined> {
    checkKey(key);
    const signal = options?.signal;
    checkAborted(signal);
    try {
      const head = await this.client.send(traced(new HeadObjectCommand({ Bucket: this.options.bucket, Key: key }), options), { abortSignal: signal });
      return { key, size: head.ContentLength ?? 0, modifiedTime: head.LastModified };
    } catch (err) {
      // HEAD answers carry no error code: a 404 may mean the bucket is missing, which is no answer.
      if (statusOf(err) === 404 && !signal?.aborted && (await this.bucketExists(key, signal))) return undefined;
      throw this.failure(err, signal, { action: "stat", key });
    }
  }

  async read(key: string, options?: ReadOptions): Promise<Readable> {
    checkKey(key);
    const range = options?.range;
    if (range !== undefined) checkRangeShape(range);
    const signal = options?.signal;
    checkAborted(signal);
    const failed = this.failed("read", key);

    // HTTP cannot ask for 0 bytes; such a read only needs the object to exist and reach that far.
    if (range?.length === 0) return this.emptyRead(key, range, signal);
    const whole = range === undefined || (range.offset === 0 && range.length === undefined);
    const header = whole ? undefined : `bytes=${range.offset}-${range.length === undefined ? "" : range.offset + range.length - 1}`;
    let response;
    try {
      response = await this.client.send(traced(new GetObjectCommand({ Bucket: this.options.bucket, Key: key, Range: header }), options), { abortSignal: signal });
    } catch (err) {
      // S3 refuses a range that starts at or past the end (416); reading from exactly the end is an empty read.
      if (range !== undefined && statusOf(err) === 416 && !signal?.aborted) return this.emptyRead(key, range, signal);
      throw this.failure(err, signal, failed);
    }
    const body = (response.Body as Readable | undefined) ?? Readable.from([]);
    // S3 serves what there is of a range that runs past the end; the contract refuses it.
    if (range?.length !== undefined && response.ContentLength !== range.length) {
      body.destroy();
      throw beyondEnd(key, range, response.ContentRange);
    }
    return streamed(body, failed, signal);
  }

  async write(key: string, source: AsyncIterable<Uint8Array>, options?: CallOptions): Promise<ObjectInfo> {
    checkKey(key);
    const signal = options?.signal;
    checkAborted(signal);
    const limit = this.options.partSize * MAX_PARTS;
    let size = 0;
    let sourceError: unknown; // the caller's (or the size limit's): passed on as it is
    let sendError: unknown; // the first S3 call that failed after the SDK's own retries

    const requests = new WriteRequests(this.http);
    const stop = (reason: Error) => {
      requests.stop(reason);
      body.destroy(reason);
    };
    const body = bodyOf(source, {
      onChunk: (chunk) => {
        size += chunk.length;
        if (size > limit) {
          throw new StoreError("invalid", `cannot write s3://${this.options.store}/${key}: it is larger than ${limit} bytes (${MAX_PARTS} parts of partSize); raise the store's partSize`);
        }
      },
      onError: (err) => {
        sourceError ??= err;
        stop(err as Error);
      },
    });
    // Its errors reach lib-storage through iteration; this keeps one raised after that ended from going unhandled.
    body.on("error", () => {});
    const client = new S3Client({ ...this.shared, maxAttempts: PART_ATTEMPTS, requestHandler: requests });
    client.middlewareStack.add(
      (next) => async (args) => {
        try {
          return await next(args);
        } catch (err) {
          // One part failed for good: the whole write has, so stop sending and reading the others.
          sendError ??= err;
          stop(err as Error);
          throw err;
        }
      },
      { step: "initialize", name: "stopWriteOnFailure" },
    );
    if (options?.traceContext) client.middlewareStack.add(traceContextMiddleware(options.traceContext), TRACE_CONTEXT_STEP);
    const onAbort = () => stop(abortError(signal!));
    signal?.addEventListener("abort", onAbort, { once: true });

    // Parts above partSize go up as a multipart upload, which is visible only once completed;
    // lib-storage aborts it when the write fails, so no parts are left behind (unless the
    // abort cannot reach the endpoint either: then removePartialWrites clears them later).
    const upload = new Upload({
      client,
      params: { Bucket: this.options.bucket, Key: key, Body: body },
      partSize: this.options.partSize,
      queueSize: this.options.queueSize,
      leavePartsOnError: false,
    });
    try {
      await upload.done();
    } catch (err) {
      if (signal?.aborted) throw abortError(signal);
      if (sourceError !== undefined) throw sourceError;
      throw toStoreError(sendError ?? err, this.failed("write", key));
    } finally {
      signal?.removeEventListener("abort", onAbort);
    }
    return { key, size, modifiedTime: new Date() };
  }

  async delete(key: string, options?: CallOptions): Promise<void> {
    checkKey(key);
    const signal = options?.signal;
    checkAborted(signal);
    try {
      await this.client.send(traced(new DeleteObjectCommand({ Bucket: this.options.bucket, Key: key }), options), { abortSignal: signal });
    } catch (err) {
      if (codeOf(err) === "NoSuchKey" && !signal?.aborted) return;
      throw this.failure(err, signal, { action: "delete", key });
    }
  }

  async list(options: ListOptions = {}): Promise<ObjectPage> {
    const prefix = options.prefix ?? "";
    if (typeof prefix !== "string") throw new StoreError("invalid", "list prefix must be a string");
    const pageSize = options.pageSize || MAX_PAGE_SIZE;
    if (!Number.isSafeInteger(pageSize) || pageSize < 1) {
      throw new StoreError("invalid", `list pageSize must be a positive integer, not ${String(options.pageSize)}`);
    }
    const signal = options.signal;
    checkAborted(signal);
    let page;
    try {
      page = await this.client.send(
        traced(
          new ListObjectsV2Command({
            Bucket: this.options.bucket,
            ...(prefix === "" ? {} : { Prefix: prefix }),
            MaxKeys: Math.min(pageSize, MAX_PAGE_SIZE),
            ...(options.pageToken ? { ContinuationToken: options.pageToken } : {}),
          }),
          options,
        ),
        { abortSignal: signal },
      );
    } catch (err) {
      throw this.failure(err, signal, { action: "list objects", key: prefix === "" ? undefined : `${prefix}*` });
    }
    const objects: ObjectInfo[] = [];
    for (const object of page.Contents ?? []) {
      // Keys this store cannot address (written by other tools) are not shown.
      if (object.Key === undefined || keyProblem(object.Key) !== undefined) continue;
      objects.push({ key: object.Key, size: object.Size ?? 0, modifiedTime: object.LastModified });
    }
    return page.IsTruncated && page.NextContinuationToken ? { objects, nextPageToken: page.NextContinuationToken } : { objects };
  }

  /**
   * Aborts the multipart uploads untouched since `olderThan` (begun before it, no part sent
   * since): what writers killed mid-way left behind. A long write that is still sending parts
   * is left alone. Every upload in the bucket counts, so the bucket should hold only this
   * store's objects.
   */
  async removePartialWrites(olderThan: Date, options?: CallOptions): Promise<number> {
    const signal = options?.signal;
    const bucket = this.options.bucket;
    let removed = 0;
    let markers: { KeyMarker?: string; UploadIdMarker?: string } = {};
    for (;;) {
      checkAborted(signal);
      let page;
      try {
        page = await this.client.send(traced(new ListMultipartUploadsCommand({ Bucket: bucket, ...markers }), options), { abortSignal: signal });
      } catch (err) {
        throw this.failure(err, signal, { action: "list the multipart uploads" });
      }
      for (const upload of page.Uploads ?? []) {
        if (!upload.Key || !upload.UploadId || !upload.Initiated || upload.Initiated >= olderThan) continue;
        if (await this.partSentSince(upload.Key, upload.UploadId, olderThan, options)) continue;
        try {
          await this.client.send(traced(new AbortMultipartUploadCommand({ Bucket: bucket, Key: upload.Key, UploadId: upload.UploadId }), options), { abortSignal: signal });
          removed++;
        } catch (err) {
          if (codeOf(err) === "NoSuchUpload" && !signal?.aborted) continue; // finished or aborted meanwhile
          throw this.failure(err, signal, { action: "abort the multipart upload of", key: upload.Key });
        }
      }
      if (!page.IsTruncated) return removed;
      markers = { KeyMarker: page.NextKeyMarker, UploadIdMarker: page.NextUploadIdMarker };
    }
  }

  private async partSentSince(key: string, uploadId: string, since: Date, options: CallOptions | undefined): Promise<boolean> {
    const signal = options?.signal;
    let marker: string | undefined;
    do {
      let page;
      try {
        page = await this.client.send(
          traced(new ListPartsCommand({ Bucket: this.options.bucket, Key: key, UploadId: uploadId, ...(marker ? { PartNumberMarker: marker } : {}) }), options),
          { abortSignal: signal },
        );
      } catch (err) {
        if (codeOf(err) === "NoSuchUpload" && !signal?.aborted) return true; // finished or aborted meanwhile: nothing to remove
        throw this.failure(err, signal, { action: "list the parts of", key });
      }
      if ((page.Parts ?? []).some((part) => part.LastModified !== undefined && part.LastModified >= since)) return true;
      marker = page.IsTruncated ? page.NextPartNumberMarker : undefined;
    } while (marker);
    return false;
  }

  /** A SigV4 presigned URL; its holder needs no credentials of their own. */
  async presign(key: string, options: PresignOptions): Promise<PresignedUrl> {
    checkKey(key);
    const { method, expiresInSeconds } = options;
    if (method !== "GET" && method !== "PUT") throw new StoreError("invalid", `presign method must be GET or PUT, not ${String(method)}`);
    if (!Number.isSafeInteger(expiresInSeconds) || expiresInSeconds < 1 || expiresInSeconds > MAX_PRESIGN_SECONDS) {
      throw new StoreError("invalid", `presigned URLs last from 1 to ${MAX_PRESIGN_SECONDS} seconds, not ${String(expiresInSeconds)}`);
    }
    // Signed at a whole second, as SigV4 counts, so expireTime is exactly when the URL stops working.
    const signingDate = new Date(Math.floor(Date.now() / 1000) * 1000);
    const input = { Bucket: this.options.bucket, Key: key };
    try {
      const url = await getSignedUrl(this.presigner, method === "GET" ? new GetObjectCommand(input) : new PutObjectCommand(input), {
        expiresIn: expiresInSeconds,
        signingDate,
      });
      return { url, expireTime: new Date(signingDate.getTime() + expiresInSeconds * 1000) };
    } catch (err) {
      throw toStoreError(err, this.failed(`presign ${method} for`, key));
    }
  }

  async close(): Promise<void> {
    this.client.destroy();
    this.presigner.destroy();
  }

  private async emptyRead(key: string, range: ByteRange, signal: AbortSignal | undefined): Promise<Readable> {
    const info = await this.stat(key, { signal });
    if (info === undefined) throw notFound(this.failed("read", key));
    if (range.offset + (range.length ?? 0) > info.size) throw beyondEnd(key, range, `${info.size} bytes`);
    return Readable.from([]);
  }

  private async bucketExists(key: string, signal: AbortSignal | undefined): Promise<boolean> {
    try {
      await this.client.send(new HeadBucketCommand({ Bucket: this.options.bucket }), { abortSignal: signal });
      return true;
    } catch (err) {
      if (statusOf(err) === 404 && !signal?.aborted) throw bucketNotFound(this.failed("stat", key));
      throw this.failure(err, signal, { action: "stat", key });
    }
  }

  private failed(action: string, key?: string): Failed {
    return { store: this.options.store, bucket: this.options.bucket, action, ...(key === undefined ? {} : { key }) };
  }

  /** The error for a failed call: the abort, when the call was aborted, else the S3 failure. */
  private failure(err: unknown, signal: AbortSignal | undefined, what: { action: string; key?: string | undefined }): unknown {
    if (signal?.aborted) return abortError(signal);
    return toStoreError(err, this.failed(what.action, what.key));
  }
}

/**
 * The response body as the caller's stream: errors become StoreErrors ("unavailable" for
 * a connection that broke, which the host resumes), an abort ends it at once, and a caller
 * that stops reading releases the connection.
 */
function streamed(body: Readable, failed: Failed, signal: AbortSignal | undefined): Readable {
  const out = new PassThrough();
  const onAbort = () => out.destroy(abortError(signal!));
  signal?.addEventListener("abort", onAbort, { once: true });
  body.once("error", (err) => out.destroy(toStoreError(err, failed) as Error));
  out.once("close", () => {
    signal?.removeEventListener("abort", onAbort);
    body.destroy();
  });
  body.pipe(out);
  return out;
}

/**
 * The write's source as the stream lib-storage reads parts from. Not Readable.from: its
 * destroy() waits for the source's pending chunk, and a stalled source must not hold up
 * an abort. One chunk is read ahead at most.
 */
function bodyOf(
  source: AsyncIterable<Uint8Array>,
  hooks: { onChunk(chunk: Uint8Array): void; onError(err: unknown): void },
): Readable {
  const iterator = source[Symbol.asyncIterator]();
  return new Readable({
    objectMode: true,
    highWaterMark: 1,
    read() {
      iterator.next().then(
        (next) => {
          if (this.destroyed) return;
          if (next.done) return void this.push(null);
          try {
            hooks.onChunk(next.value);
          } catch (err) {
            return hooks.onError(err);
          }
          this.push(next.value);
        },
        // After a stop, the source's own failure is no longer news.
        (err: unknown) => {
          if (!this.destroyed) hooks.onError(err);
        },
      );
    },
    destroy(err, callback) {
      // Let the source clean up, without waiting for it.
      Promise.resolve()
        .then(() => iterator.return?.())
        .catch(() => {});
      callback(err);
    },
  });
}

/** Keys follow the other stores' rules, so an image copies between stores under the same key. */
function checkKey(key: unknown): void {
  if (typeof key !== "string" || key === "") throw new StoreError("invalid", "object key must be a non-empty string");
  const problem = keyProblem(key);
  if (problem !== undefined) throw new StoreError("invalid", `object key ${JSON.stringify(key)} ${problem}`);
}

function keyProblem(key: string): string | undefined {
  if (Buffer.byteLength(key, "utf8") > MAX_KEY_BYTES) return `is longer than S3's ${MAX_KEY_BYTES} bytes`;
  if (/[\u0000-\u001f\u007f]/.test(key)) return "contains a control character";
  if (key.startsWith("/")) return "is absolute; keys are relative to the bucket";
  for (const segment of key.split("/")) {
    if (segment === "") return "has an empty segment (a doubled or trailing '/')";
    // URL handling would resolve these away and name another object.
    if (segment === "." || segment === "..") return `contains a '${segment}' segment`;
  }
  return undefined;
}

function checkRangeShape(range: ByteRange): void {
  const { offset, length } = range;
  if (!Number.isSafeInteger(offset) || offset < 0) {
    throw new StoreError("invalid", `range offset must be a non-negative integer, not ${String(offset)}`);
  }
  if (length !== undefined && (!Number.isSafeInteger(length) || length < 0)) {
    throw new StoreError("invalid", `range length must be a non-negative integer, not ${String(length)}`);
  }
}

function beyondEnd(key: string, range: ByteRange, extent: string | undefined): StoreError {
  const which = range.length === undefined ? `from offset ${range.offset}` : `of ${range.length} bytes at offset ${range.offset}`;
  return new StoreError("invalid", `range ${which} lies beyond the end of ${JSON.stringify(key)}${extent ? ` (${extent})` : ""}`);
}

/** The error for an aborted call, shaped like Node's AbortError (the signal's reason is its cause), as the other stores throw it. */
function abortError(signal: AbortSignal): Error {
  const err = new Error("The operation was aborted", { cause: signal.reason });
  err.name = "AbortError";
  return Object.assign(err, { code: "ABORT_ERR" });
}

function checkAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw abortError(signal);
}

/**
 * The call's trace context goes along as request headers (added before signing), so a traced
 * endpoint joins the host's trace.
 */
function traceContextMiddleware<I extends object, O extends MetadataBearer>(traceContext: Record<string, string>): BuildMiddleware<I, O> {
  return (next) => (args) => {
    const request = args.request as { headers?: Record<string, string> };
    if (request.headers) Object.assign(request.headers, traceContext);
    return next(args);
  };
}

const TRACE_CONTEXT_STEP = { step: "build", name: "traceContext" } as const;

/** Any command: each one's middleware stack is typed by its own input and output, which this middleware touches neither of. */
type AnyCommand = { middlewareStack: { add(middleware: BuildMiddleware<any, any>, options: typeof TRACE_CONTEXT_STEP): void } };

/** `command`, carrying the call's trace context when there is one. */
function traced<C extends AnyCommand>(command: C, options: CallOptions | undefined): C {
  if (options?.traceContext) command.middlewareStack.add(traceContextMiddleware(options.traceContext), TRACE_CONTEXT_STEP);
  return command;
}
