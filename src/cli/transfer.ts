/**
 * `itx upload-url`, `download-url`, `import`, `export`, `copy` and `download`: the data
 * plane of the tour. Image bytes move over plain HTTP to and from the temporary URLs the
 * service hands out, streamed from and to disk with back-pressure, so memory use does
 * not grow with the image.
 */
import { createReadStream, createWriteStream } from "node:fs";
import { stat } from "node:fs/promises";
import { request as httpRequest, type ClientRequest, type IncomingHttpHeaders, type IncomingMessage, type RequestOptions } from "node:http";
import { request as httpsRequest } from "node:https";
import { resolve as resolvePath } from "node:path";
import { Transform } from "node:stream";
import { pipeline } from "node:stream/promises";
import { InvalidArgumentError, Option, type Command } from "commander";
import { DiskFormatSchema } from "../gen/imagetransfer/v1/image_pb.js";
import type { Task } from "../gen/imagetransfer/v1/task_pb.js";
import {
  CopyImageResponseSchema,
  CreateDownloadUrlResponseSchema,
  CreateUploadUrlResponseSchema,
  ExportImageResponseSchema,
  HashAlgorithm,
  ImportImageResponseSchema,
} from "../gen/imagetransfer/v1/transfer_pb.js";
import { addClientOptions, CALL_TIMEOUT_MS, runClient, type Clients } from "./client.js";
import {
  CliError,
  enumChoices,
  enumOption,
  ExitCode,
  formatBytes,
  formatTime,
  LiveProgress,
  positiveInt,
  printJson,
  UsageError,
  type ClientOptions,
} from "./output.js";
import { followTask } from "./tasks.js";

/** An upload or download that moves no byte for this long is given up. */
const IDLE_TIMEOUT_MS = 120_000;
/** How often the byte progress bar is redrawn at most, besides its once-a-second tick. */
const REDRAW_MS = 100;

// ---------------------------------------------------------------------------
// Option parsers

const formatHelp = enumChoices(DiskFormatSchema).join(", ");
const formatOption = enumOption(DiskFormatSchema, "format");

/** "a,b" -> ["a", "b"]; blanks are dropped, and at least one name is required. */
function commaList(value: string): string[] {
  const names = value.split(",").map((s) => s.trim()).filter((s) => s !== "");
  if (names.length === 0) throw new InvalidArgumentError("expected one or more comma-separated store names");
  return names;
}

/** A hex digest of `digits` characters, lower-cased. */
function hexDigest(digits: number, what: string): (value: string) => string {
  return (value) => {
    const hex = value.trim().toLowerCase();
    if (hex.length !== digits || !/^[0-9a-f]+$/.test(hex)) throw new InvalidArgumentError(`${what} must be ${digits} hex digits`);
    return hex;
  };
}

// ---------------------------------------------------------------------------
// Progress of bytes on the wire

/** A progress bar on stderr for bytes moved, when stderr is a terminal; redraws are throttled. */
class ByteProgress {
  private readonly live?: LiveProgress;
  private lastDraw = 0;

  constructor(
    private readonly stage: string,
    private readonly total: number,
    private done = 0,
  ) {
    if (process.stderr.isTTY === true) {
      this.live = new LiveProgress(process.stderr, this.sample("running"));
    }
  }

  add(bytes: number): void {
    this.done += bytes;
    const now = Date.now();
    if (this.live && now - this.lastDraw >= REDRAW_MS) {
      this.lastDraw = now;
      this.live.update(this.sample("running"));
    }
  }

  /** The final drawing: full bar and no rate on success, "failed STAGE" otherwise. */
  stop(ok: boolean): void {
    if (!this.live) return;
    this.live.update({ ...this.sample(ok ? "running" : "failed"), finished: true });
    this.live.stop();
  }

  private sample(state: string) {
    return { state, stage: this.stage, bytesDone: this.done, bytesTotal: this.total };
  }
}

/** Runs `body` with a byte progress bar that is always stopped. */
async function withProgress<T>(progress: ByteProgress, body: () => Promise<T>): Promise<T> {
  let ok = false;
  try {
    const result = await body();
    ok = true;
    return result;
  } finally {
    progress.stop(ok);
  }
}

// ---------------------------------------------------------------------------
// HTTP to temporary URLs

/** The URL for messages: never its query, which carries the signature. */
function shown(url: URL): string {
  return `${url.origin}${url.pathname}`;
}

function parseTemporaryUrl(raw: string, what: string): URL {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new CliError("internal", `the server returned ${what} that is not a URL`);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new CliError("unimplemented", `the server returned a ${url.protocol}// ${what}; itx moves data over http and https only`);
  }
  return url;
}

function send(url: URL, options: RequestOptions): ClientRequest {
  // No shared agent: one connection per transfer, closed when it is done.
  const req = (url.protocol === "https:" ? httpsRequest : httpRequest)(url, { ...options, agent: false });
  req.setTimeout(IDLE_TIMEOUT_MS, () => req.destroy(new Error(`no data moved for ${IDLE_TIMEOUT_MS / 1000} s`)));
  return req;
}

/** The first non-empty line of a (short) response body, at most 200 characters; never fails. */
function firstBodyLine(res: IncomingMessage): Promise<string> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let length = 0;
    const done = () => {
      const text = Buffer.concat(chunks).toString("utf8");
      const line = text.split(/\r?\n/).map((l) => l.trim()).find((l) => l !== "") ?? "";
      resolve(line.length > 200 ? `${line.slice(0, 200)}...` : line);
    };
    res.on("data", (chunk: Buffer) => {
      if (length < 4096) chunks.push(chunk);
      length += chunk.length;
    });
    res.once("end", done);
    res.once("close", done);
    res.once("error", done);
  });
}

function httpFailure(method: string, url: URL, res: IncomingMessage, bodyLine: string): CliError {
  const status = `${res.statusCode ?? "?"}${res.statusMessage ? ` ${res.statusMessage}` : ""}`;
  return new CliError("http_error", `${method} ${shown(url)}: HTTP ${status}${bodyLine ? `: ${bodyLine}` : ""}`);
}

function networkFailure(method: string, url: URL, err: unknown): CliError {
  return new CliError("unavailable", `${method} ${shown(url)} failed: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
}

/** Sends a request without a body and resolves with its response headers. */
function requestHeaders(method: "GET" | "HEAD", url: URL, headers: Record<string, string>): Promise<IncomingMessage> {
  return new Promise((resolve, reject) => {
    const req = send(url, { method, headers });
    req.once("response", resolve);
    req.once("error", (err) => reject(networkFailure(method, url, err)));
    req.end();
  });
}

function headerValue(headers: IncomingHttpHeaders, name: string): string | undefined {
  const value = headers[name];
  return Array.isArray(value) ? value.join(", ") : value;
}

/**
 * PUTs `size` bytes of the file at `path` to `url`, streamed from disk with a
 * Content-Length. Resolves on a 2xx answer; a refusal (403, 413, ...) rejects with the
 * status and the first line of its body, even when it comes before the body is sent.
 */
export function putFile(path: string, size: number, url: URL, onBytes: (bytes: number) => void = () => {}): Promise<void> {
  return new Promise((resolve, reject) => {
    let settled = false;
    let answered = false;
    let sent = 0;
    const source = size > 0 ? createReadStream(path, { start: 0, end: size - 1 }) : undefined;
    const req = send(url, {
      method: "PUT",
      headers: { "Content-Type": "application/octet-stream", "Content-Length": String(size) },
    });
    const finish = (err?: Error) => {
      if (settled) return;
      settled = true;
      source?.destroy();
      if (err) {
        req.destroy();
        reject(err);
      } else {
        resolve();
      }
    };
    req.once("response", (res) => {
      answered = true;
      void firstBodyLine(res).then((line) => {
        const status = res.statusCode ?? 0;
        if (status < 200 || status > 299) return finish(httpFailure("PUT", url, res, line));
        if (sent !== size) return finish(new CliError("http_error", `PUT ${shown(url)}: HTTP ${status} before the whole file was sent`));
        finish();
      });
    });
    // Once an answer has arrived it decides; a broken pipe after a refusal is expected.
    req.on("error", (err) => {
      if (!answered) finish(networkFailure("PUT", url, err));
    });
    if (!source) {
      req.end();
      return;
    }
    source.on("data", (chunk: Buffer | string) => {
      sent += chunk.length;
      onBytes(chunk.length);
    });
    source.once("error", (err) => finish(new CliError("io_error", `reading ${path}: ${err.message}`)));
    source.once("end", () => {
      if (sent !== size) finish(new CliError("io_error", `${path} shrank from ${size} to ${sent} bytes while it was uploaded`));
    });
    source.pipe(req);
  });
}

export interface DownloadResult {
  /** Absolute path of the file written. */
  path: string;
  /** Its size: the object's size. */
  size: number;
  /** Bytes already in the file that were kept (0 when the download started from the beginning). */
  resumedFrom: number;
}

/**
 * GETs the object at `url` (`size` bytes, as CreateDownloadUrl said) into `file`. A
 * shorter file already there is continued with `Range: bytes=N-` and `If-Range` (the
 * ETag, else Last-Modified, from a HEAD); a 200 instead of 206 starts over. The final
 * size is checked against the response.
 */
export async function downloadFile(url: URL, file: string, size: number): Promise<DownloadResult> {
  const path = resolvePath(file);
  let existing = 0;
  try {
    const info = await stat(path);
    if (!info.isFile()) throw new UsageError(`-o ${file} is not a regular file`);
    existing = info.size;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
  }

  const headers: Record<string, string> = {};
  if (existing > 0 && existing < size) {
    const head = await requestHeaders("HEAD", url, {});
    head.resume();
    if ((head.statusCode ?? 0) < 200 || (head.statusCode ?? 0) > 299) throw httpFailure("HEAD", url, head, "");
    const etag = headerValue(head.headers, "etag");
    const validator = etag !== undefined && !etag.startsWith("W/") ? etag : headerValue(head.headers, "last-modified");
    const ranges = headerValue(head.headers, "accept-ranges");
    if (validator !== undefined && ranges !== "none" && Number(headerValue(head.headers, "content-length")) === size) {
      headers.Range = `bytes=${existing}-`;
      headers["If-Range"] = validator;
    }
  }

  const res = await requestHeaders("GET", url, headers);
  const status = res.statusCode ?? 0;
  let resumedFrom = 0;
  let expected: number | undefined;
  if (status === 206 && headers.Range !== undefined) {
    const range = /^bytes (\d+)-(\d+)\/(\d+)$/.exec(headerValue(res.headers, "content-range") ?? "");
    if (!range || Number(range[1]) !== existing || Number(range[3]) !== size) {
      res.destroy();
      throw new CliError("http_error", `GET ${shown(url)}: HTTP 206 with Content-Range "${headerValue(res.headers, "content-range") ?? ""}", not bytes ${existing}-/${size}`);
    }
    resumedFrom = existing;
    expected = Number(range[3]);
  } else if (status === 200) {
    const length = headerValue(res.headers, "content-length");
    expected = length === undefined ? undefined : Number(length);
  } else {
    throw httpFailure("GET", url, res, await firstBodyLine(res));
  }
  if (expected !== undefined && expected !== size) {
    res.destroy();
    throw new CliError("http_error", `GET ${shown(url)}: the object is ${expected} bytes, not the ${size} the server announced; try again`);
  }

  const progress = new ByteProgress("download", size, resumedFrom);
  await withProgress(progress, async () => {
    const count = new Transform({
      transform(chunk: Buffer, _encoding, callback) {
        progress.add(chunk.length);
        callback(null, chunk);
      },
    });
    // Straight into FILE: appended to on resume, so a broken download can be resumed again.
    const out = createWriteStream(path, { flags: resumedFrom > 0 ? "a" : "w" });
    let writeError: Error | undefined;
    out.once("error", (err) => (writeError = err));
    try {
      await pipeline(res, count, out);
    } catch (err) {
      if (writeError) throw new CliError("io_error", `writing ${file}: ${writeError.message}`, { cause: writeError });
      throw networkFailure("GET", url, err);
    }
  });
  const written = (await stat(path)).size;
  if (written !== size) {
    throw new CliError("http_error", `GET ${shown(url)}: ${file} has ${written} bytes, expected ${size}; run the download again to resume`);
  }
  return { path, size, resumedFrom };
}

// ---------------------------------------------------------------------------
// Commands

interface WaitOptions extends ClientOptions {
  wait?: boolean;
}

interface UploadUrlOptions extends ClientOptions {
  image?: string;
  store?: string;
  ttl?: number;
}

interface DownloadUrlOptions extends ClientOptions {
  format?: number;
  ttl?: number;
}

interface ImportOptions extends WaitOptions {
  name?: string;
  diskFormat?: number;
  stores?: string[];
  allStoresMustSucceed?: boolean;
  expectSha256?: string;
  expectSha512?: string;
  image?: string;
}

interface ExportOptions extends WaitOptions {
  format: number;
  store?: string;
}

interface CopyOptions extends WaitOptions {
  stores: string[];
  allStoresMustSucceed?: boolean;
}

interface DownloadOptions extends ClientOptions {
  format?: number;
  output: string;
}

const waitHelp = `
Without --wait, prints the task id (with --json, the response) and exits 0 at once.
With --wait, follows the task as "itx tasks watch" does: a live progress bar on stderr
when it is a terminal, else one line per change on stdout; with --json, only the final
task as protobuf JSON. Exit codes: 0 SUCCEEDED, 3 FAILED, 4 CANCELED, 1 RPC error,
130 Ctrl-C (stops watching; the task is not canceled).`;

function addWait(command: Command): Command {
  return command.option("--wait", "follow the task until it ends; the exit code says how it ended").addHelpText("after", waitHelp);
}

/** After a task was started: its id, the response, or (--wait) the task followed to its end. */
async function started(clients: Clients, task: Task | undefined, opts: WaitOptions, printResponse: () => void, note?: string): Promise<number> {
  if (!task) throw new CliError("internal", "the server started no task");
  if (!opts.wait) {
    if (opts.json) printResponse();
    else {
      process.stdout.write(`${task.id}\n`);
      if (note) process.stderr.write(`${note}; follow it with: itx tasks watch ${task.id}\n`);
    }
    return ExitCode.ok;
  }
  // On a terminal, say what the bar is about; otherwise the output is exactly that of `tasks watch`.
  if (!opts.json && note && process.stderr.isTTY === true) process.stderr.write(`${note}, task ${task.id}\n`);
  return followTask(clients, task.id, opts.json ? "final-json" : "lines");
}

/**
 * Whether `itx import SOURCE` names a seed URI for the server to resolve: anything that
 * starts with a URI scheme ("file:", "https:", ...). Only a bare path is a local file to
 * upload; a local file whose name looks like a scheme is written ./name.
 */
export function isSeedUri(source: string): boolean {
  return /^[a-z][a-z0-9+.-]*:/i.test(source);
}

/** A local file to upload: its size, or a usage error saying why it cannot be read. */
async function localFile(source: string): Promise<number> {
  try {
    const info = await stat(source);
    if (!info.isFile()) throw new UsageError(`SOURCE "${source}" is not a regular file`);
    return info.size;
  } catch (err) {
    if (err instanceof UsageError) throw err;
    throw new UsageError(`cannot read SOURCE "${source}": ${(err as Error).message}`);
  }
}

/** `itx upload-url`, `download-url`, `import`, `export`, `copy`, `download`. */
export function registerTransfer(program: Command): void {
  addClientOptions(
    program
      .command("upload-url")
      .description("get a temporary URL to PUT an image to, and the seed URI to import afterwards")
      .option("--image <id>", "a QUEUED image the upload is for")
      .option("--store <store>", "the store to upload into (default: the staging store)")
      .option("--ttl <seconds>", "seconds the URL stays valid (default: the server's)", positiveInt("--ttl")),
  ).action((opts: UploadUrlOptions) =>
    runClient(opts, async ({ transfer }) => {
      const response = await transfer.createUploadUrl(
        { imageId: opts.image ?? "", store: opts.store ?? "", expiresInSeconds: opts.ttl ?? 0 },
        { timeoutMs: CALL_TIMEOUT_MS },
      );
      if (opts.json) return printJson(CreateUploadUrlResponseSchema, response);
      process.stdout.write(`${response.url}\n`);
      process.stderr.write(`${response.method || "PUT"} the image there until ${formatTime(response.expireTime)}, then: itx import ${response.seedUri}\n`);
    }),
  );

  addClientOptions(
    program
      .command("download-url")
      .description("get a temporary URL to GET an active image, or one of its exports")
      .argument("<image>", "the image id (a UUID)")
      .option("--format <format>", `an exported format: ${formatHelp} (default: the image as stored)`, formatOption)
      .option("--ttl <seconds>", "seconds the URL stays valid (default: the server's)", positiveInt("--ttl")),
  ).action((image: string, opts: DownloadUrlOptions) =>
    runClient(opts, async ({ transfer }) => {
      const response = await transfer.createDownloadUrl(
        { imageId: image, diskFormat: opts.format ?? 0, expiresInSeconds: opts.ttl ?? 0 },
        { timeoutMs: CALL_TIMEOUT_MS },
      );
      if (opts.json) return printJson(CreateDownloadUrlResponseSchema, response);
      process.stdout.write(`${response.url}\n`);
      process.stderr.write(`${formatBytes(response.size)} (${response.size} bytes) until ${formatTime(response.expireTime)}\n`);
    }),
  );

  addClientOptions(
    addWait(
      program
        .command("import")
        .description("import an image from a seed URI, or upload a local file and import it")
        .argument("<source>", 'a seed URI (file://local/uploads/ID from "itx upload-url", or https://... where web downloads are on) or the path of a local file to upload')
        .option("--name <name>", "the new image's name")
        .option("--disk-format <format>", `the format the data must be in: ${formatHelp}`, formatOption)
        .option("--stores <a,b>", "stores to hold the image (default: the default store)", commaList)
        .option("--all-stores-must-succeed", "fail unless every store took the image")
        .addOption(new Option("--expect-sha256 <hex>", "the upload's SHA-256; a mismatch fails the import").argParser(hexDigest(64, "--expect-sha256")).conflicts("expectSha512"))
        .addOption(new Option("--expect-sha512 <hex>", "the upload's SHA-512; a mismatch fails the import").argParser(hexDigest(128, "--expect-sha512")))
        .option("--image <id>", "a QUEUED image to import into (default: a new image)"),
    ),
  ).action((source: string, opts: ImportOptions) =>
    runClient(opts, async (clients) => {
      let seedUri = source;
      if (!isSeedUri(source)) {
        const size = await localFile(source);
        const upload = await clients.transfer.createUploadUrl({ imageId: opts.image ?? "" }, { timeoutMs: CALL_TIMEOUT_MS });
        const url = parseTemporaryUrl(upload.url, "an upload URL");
        const progress = new ByteProgress("upload", size);
        await withProgress(progress, () => putFile(source, size, url, (bytes) => progress.add(bytes)));
        seedUri = upload.seedUri;
      }
      const expectedHash = opts.expectSha256
        ? { algorithm: HashAlgorithm.SHA256, value: opts.expectSha256 }
        : opts.expectSha512
          ? { algorithm: HashAlgorithm.SHA512, value: opts.expectSha512 }
          : undefined;
      const response = await clients.transfer.importImage(
        {
          seedUri,
          imageId: opts.image ?? "",
          diskFormat: opts.diskFormat ?? 0,
          name: opts.name ?? "",
          stores: opts.stores ?? [],
          allStoresMustSucceed: opts.allStoresMustSucceed === true,
          expectedHash,
        },
        { timeoutMs: CALL_TIMEOUT_MS },
      );
      const imageId = response.image?.id || response.task?.imageId;
      return started(clients, response.task, opts, () => printJson(ImportImageResponseSchema, response), imageId ? `importing into image ${imageId}` : undefined);
    }),
  );

  addClientOptions(
    addWait(
      program
        .command("export")
        .description("write an active image to a store in another format, for download")
        .argument("<image>", "the image id (a UUID)")
        .requiredOption("--format <format>", `the format to export: ${formatHelp} (the server exports raw, qcow2, vmdk, vhd, vhdx)`, formatOption)
        .option("--store <store>", "the store to write to (default: the default store)"),
    ),
  ).action((image: string, opts: ExportOptions) =>
    runClient(opts, async (clients) => {
      const response = await clients.transfer.exportImage({ imageId: image, diskFormat: opts.format, store: opts.store ?? "" }, { timeoutMs: CALL_TIMEOUT_MS });
      return started(clients, response.task, opts, () => printJson(ExportImageResponseSchema, response), `exporting image ${image}`);
    }),
  );

  addClientOptions(
    addWait(
      program
        .command("copy")
        .description("copy an active image into more stores")
        .argument("<image>", "the image id (a UUID)")
        .requiredOption("--stores <a,b>", "stores to add the image to", commaList)
        .option("--all-stores-must-succeed", "fail unless every store took the image"),
    ),
  ).action((image: string, opts: CopyOptions) =>
    runClient(opts, async (clients) => {
      const response = await clients.transfer.copyImage(
        { imageId: image, stores: opts.stores, allStoresMustSucceed: opts.allStoresMustSucceed === true },
        { timeoutMs: CALL_TIMEOUT_MS },
      );
      return started(clients, response.task, opts, () => printJson(CopyImageResponseSchema, response), `copying image ${image}`);
    }),
  );

  addClientOptions(
    program
      .command("download")
      .description("download an active image, or one of its exports, to a file; a shorter file there is resumed")
      .argument("<image>", "the image id (a UUID)")
      .option("--format <format>", `an exported format: ${formatHelp} (default: the image as stored)`, formatOption)
      .requiredOption("-o, --output <file>", "the file to write; if it is shorter than the object, the download resumes")
      .addHelpText(
        "after",
        `
A progress bar goes to stderr when it is a terminal. If FILE exists and is shorter than
the object, only the rest is fetched (Range with If-Range, so a changed object is fetched
whole). The final size is checked. With --json, stdout gets {"path", "size", "resumedFrom"}.`,
      ),
    { outputFormat: false },
  ).action((image: string, opts: DownloadOptions) =>
    runClient(opts, async ({ transfer }) => {
      const response = await transfer.createDownloadUrl({ imageId: image, diskFormat: opts.format ?? 0 }, { timeoutMs: CALL_TIMEOUT_MS });
      const url = parseTemporaryUrl(response.url, "a download URL");
      const result = await downloadFile(url, opts.output, Number(response.size));
      if (opts.json) {
        process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
        return;
      }
      const resumed = result.resumedFrom > 0 ? `, resumed at byte ${result.resumedFrom}` : "";
      process.stdout.write(`${opts.output}: ${formatBytes(result.size)} (${result.size} bytes${resumed})\n`);
    }),
  );
}
