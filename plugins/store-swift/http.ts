import * as http from "node:http";
import * as https from "node:https";

/** An answer whose (small) body was read in full. */
export interface Answer {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

export interface RequestOptions {
  method: string;
  headers?: Record<string, string>;
  body?: Buffer;
  signal?: AbortSignal;
  timeoutMs: number;
}

/** Bodies we read into memory are error pages, listings and catalogs: never this large. */
const MAX_ANSWER_BYTES = 16 * 1024 * 1024;

const agents = {
  "http:": new http.Agent({ keepAlive: true }),
  "https:": new https.Agent({ keepAlive: true }),
};

/**
 * Starts a request on a keep-alive connection. An idle socket for `timeoutMs` (while
 * sending or while the answer streams) fails it with ETIMEDOUT.
 */
export function startRequest(url: URL, options: Omit<RequestOptions, "body">): http.ClientRequest {
  const transport = url.protocol === "https:" ? https : http;
  const request = transport.request(url, {
    method: options.method,
    headers: options.headers,
    agent: agents[url.protocol as "http:" | "https:"],
    signal: options.signal,
  });
  request.setTimeout(options.timeoutMs, () => {
    request.destroy(Object.assign(new Error(`no answer for ${options.timeoutMs / 1000} s`), { code: "ETIMEDOUT" }));
  });
  return request;
}

/** Sends a request with an optional in-memory body and resolves with its response stream. */
export function send(url: URL, options: RequestOptions): Promise<http.IncomingMessage> {
  return new Promise((resolve, reject) => {
    const request = startRequest(url, {
      ...options,
      headers: { ...options.headers, ...(options.body ? { "content-length": String(options.body.length) } : {}) },
    });
    request.once("response", resolve);
    request.once("error", reject);
    request.end(options.body);
  });
}

/** Sends a request and reads its whole (small) answer. */
export async function exchange(url: URL, options: RequestOptions): Promise<Answer> {
  const response = await send(url, options);
  return { status: response.statusCode ?? 0, headers: response.headers, body: await readAll(response) };
}

/** Reads a response body that is known to be small; larger ones are cut off and refused. */
export async function readAll(response: http.IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of response as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_ANSWER_BYTES) {
      response.destroy();
      throw new Error(`answer larger than ${MAX_ANSWER_BYTES} bytes`);
    }
    chunks.push(chunk);
  }
  return Buffer.concat(chunks);
}

/** Throws the response away, so its keep-alive connection can serve the next request. */
export function discard(response: http.IncomingMessage): void {
  response.resume();
}

/** The first value of a response header. */
export function header(headers: http.IncomingHttpHeaders, name: string): string | undefined {
  const value = headers[name.toLowerCase()];
  return Array.isArray(value) ? value[0] : value;
}
