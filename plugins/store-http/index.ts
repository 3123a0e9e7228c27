/**
 * The built-in web-download store: reads images from http(s) URLs for ImportImage, so a
 * seed URI may be "https://host/path/image.qcow2". Its keys are whole URLs (the
 * `uriKeys` capability); it reads and never writes.
 *
 * A web download must not become a way into the service's own network, so the options
 * (see options.ts) limit schemes, ports and hosts, and the destination policy refuses
 * loopback, private, link-local and other special addresses, checked on the address
 * actually connected to and again on every redirect (policy.ts). The byte count must
 * match the server's Content-Length, and stalls end with the idle timeout.
 */
import { Readable } from "node:stream";
import {
  defineStorePlugin,
  StoreError,
  type CallOptions,
  type ObjectInfo,
  type ObjectPage,
  type ReadOptions,
  type StoreConfig,
  type StoreInstance,
} from "../../src/plugins/plugin-api.js";
import { parseOptions } from "./options.js";
import { DestinationPolicy } from "./policy.js";
import { describeUrl, WebClient, type WebResponse } from "./web-client.js";

export default defineStorePlugin({
  schemes: ["http", "https"],
  capabilities: {
    readRanges: true,
    write: false,
    delete: false,
    list: false,
    presignGet: false,
    presignPut: false,
    maxObjectSize: 0,
    uriKeys: true,
  },
  open: (config: StoreConfig) => {
    const options = parseOptions(config.options ?? {});
    return new WebStore(new WebClient(new DestinationPolicy(options), options));
  },
});

class WebStore implements StoreInstance {
  constructor(private readonly client: WebClient) {}

  /** Asks for the first byte only: servers that refuse HEAD (e.g. presigned GET URLs) answer it too. */
  async stat(key: string, options?: CallOptions): Promise<ObjectInfo | undefined> {
    const response = await this.client.get(parseKey(key), { range: "bytes=0-0" }, options?.signal);
    try {
      const { statusCode: status = 0, headers } = response.message;
      if (status === 404 || status === 410) return undefined;
      let size: number | undefined;
      if (status === 206 || status === 416) size = integer(/\/(\d+)$/.exec(headers["content-range"] ?? "")?.[1]);
      else if (status === 200) size = integer(headers["content-length"]);
      else throw statusError(response);
      if (size === undefined) {
        throw new StoreError("invalid", `${describeUrl(response.url)} does not say how large it is (no Content-Length or Content-Range)`);
      }
      const modified = headers["last-modified"] ? new Date(headers["last-modified"]) : undefined;
      return { key, size, ...(modified && !Number.isNaN(modified.getTime()) ? { modifiedTime: modified } : {}) };
    } finally {
      response.close();
    }
  }

  async read(key: string, options?: ReadOptions): Promise<Readable> {
    const offset = options?.range?.offset ?? 0;
    const length = options?.range?.length;
    if (length === 0) return Readable.from([]);
    const headers: Record<string, string> =
      offset === 0 && length === undefined ? {} : { range: `bytes=${offset}-${length === undefined ? "" : offset + length - 1}` };
    const response = await this.client.get(parseKey(key), headers, options?.signal);
    const { statusCode: status = 0, headers: answer } = response.message;
    let skip = 0;
    if (status === 206) {
      const start = integer(/^bytes (\d+)-/.exec(answer["content-range"] ?? "")?.[1]);
      if (start !== offset) {
        response.close();
        throw new StoreError("invalid", `${describeUrl(response.url)} answered a request for bytes from ${offset} with other bytes`);
      }
    } else if (status === 200) {
      skip = offset; // the server ignored Range and sends the whole object
    } else {
      response.close();
      throw status === 404 || status === 410
        ? new StoreError("not-found", `${describeUrl(response.url)} not found (${status})`)
        : statusError(response);
    }
    return Readable.from(body(response, skip, length));
  }

  async write(): Promise<ObjectInfo> {
    throw new StoreError("permission", "the web-download store only reads");
  }

  async delete(): Promise<void> {
    throw new StoreError("permission", "the web-download store only reads");
  }

  /** It holds no objects of its own. */
  async list(): Promise<ObjectPage> {
    return { objects: [] };
  }
}

/**
 * The response body from byte `skip`, `take` bytes long (all if undefined). Fails when the
 * body is shorter than the server's Content-Length or than `take`: a connection that breaks
 * early is "unavailable", so the host resumes the read from the last byte delivered.
 */
async function* body(response: WebResponse, skip: number, take: number | undefined): AsyncGenerator<Buffer> {
  const where = describeUrl(response.url);
  const declared = integer(response.message.headers["content-length"]);
  const expected = declared === undefined ? undefined : Math.min(declared - skip, take ?? Infinity);
  let received = 0;
  let delivered = 0;
  try {
    for await (const chunk of response.message as AsyncIterable<Buffer>) {
      received += chunk.length;
      const start = Math.max(0, skip - (received - chunk.length));
      const end = take === undefined ? chunk.length : Math.min(chunk.length, start + take - delivered);
      if (start < end) {
        delivered += end - start;
        yield start === 0 && end === chunk.length ? chunk : chunk.subarray(start, end);
      }
      if (take !== undefined && delivered === take) return;
    }
  } catch (err) {
    throw response.failure() ?? shortBody(where, delivered, expected, err);
  } finally {
    response.close();
  }
  const failure = response.failure();
  if (failure) throw failure;
  if (expected !== undefined && delivered !== expected) throw shortBody(where, delivered, expected);
  if (take !== undefined && delivered !== take) {
    throw new StoreError("invalid", `${where} ended after ${delivered} of the ${take} bytes asked for`);
  }
}

function shortBody(where: string, delivered: number, expected: number | undefined, cause?: unknown): StoreError {
  const missing = expected === undefined ? "" : ` of ${expected} bytes (Content-Length)`;
  return new StoreError("unavailable", `${where} ended after ${delivered}${missing}`, { cause });
}

function statusError(response: WebResponse): StoreError {
  const status = response.message.statusCode ?? 0;
  const what = `${describeUrl(response.url)} answered ${status} ${response.message.statusMessage ?? ""}`.trimEnd();
  if (status === 401 || status === 403) return new StoreError("permission", what);
  if (status === 408 || status === 429 || status >= 500) return new StoreError("unavailable", what);
  return new StoreError("invalid", what);
}

function parseKey(key: string): URL {
  try {
    return new URL(key);
  } catch {
    throw new StoreError("invalid", `"${key.slice(0, 200)}" is not a URL`);
  }
}

function integer(text: string | undefined): number | undefined {
  return text !== undefined && /^\d+$/.test(text) ? Number(text) : undefined;
}
