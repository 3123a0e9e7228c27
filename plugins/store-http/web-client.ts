/**
 * GET requests for web downloads over node:http(s): every hop of a redirect chain is
 * checked by the destination policy, each connection resolves names through the policy's
 * lookup, and connect and idle timeouts apply. One connection per request, no pooling:
 * a pooled connection would skip the connect-time address check.
 */
import http, { type ClientRequest, type IncomingMessage } from "node:http";
import https from "node:https";
import { StoreError } from "../../src/plugins/plugin-api.js";
import type { WebStoreOptions } from "./options.js";
import { refused, type DestinationPolicy } from "./policy.js";

const REDIRECTS = new Set([301, 302, 303, 307, 308]);

/** An answered request; `failure()` is the request's own error, if it failed after answering. */
export interface WebResponse {
  url: URL;
  message: IncomingMessage;
  failure(): Error | undefined;
  close(): void;
}

export class WebClient {
  constructor(
    private readonly policy: DestinationPolicy,
    private readonly options: Pick<WebStoreOptions, "connectTimeoutMs" | "idleTimeoutMs" | "maxRedirects">,
  ) {}

  /** GETs `url`, following redirects; the caller must close() the response. */
  async get(url: URL, headers: Record<string, string>, signal?: AbortSignal): Promise<WebResponse> {
    let current = url;
    for (let redirects = 0; ; redirects++) {
      this.policy.checkUrl(current);
      const response = await this.request(current, headers, signal);
      const status = response.message.statusCode ?? 0;
      if (!REDIRECTS.has(status)) return response;
      response.close();
      if (redirects >= this.options.maxRedirects) {
        throw refused(`${describeUrl(url)} redirects more than ${this.options.maxRedirects} times (maxRedirects)`);
      }
      const location = response.message.headers.location;
      if (!location) throw new StoreError("invalid", `${describeUrl(current)} answered ${status} without a Location`);
      try {
        current = new URL(location, current);
      } catch {
        throw new StoreError("invalid", `${describeUrl(current)} redirects to a malformed URL`);
      }
    }
  }

  private request(url: URL, headers: Record<string, string>, signal: AbortSignal | undefined): Promise<WebResponse> {
    const { connectTimeoutMs, idleTimeoutMs } = this.options;
    return new Promise((resolve, reject) => {
      const client = url.protocol === "https:" ? https : http;
      const request: ClientRequest = client.request(url, {
        method: "GET",
        headers: { "user-agent": "imagetransfer-web-download", "accept-encoding": "identity", ...headers },
        agent: false,
        lookup: this.policy.lookup,
        signal,
      });
      let failure: Error | undefined;
      const fail = (err: Error) => {
        failure ??= err;
        request.destroy(failure);
      };
      const connectTimer = setTimeout(
        () => fail(new StoreError("unavailable", `no connection to ${url.host} within ${connectTimeoutMs} ms`)),
        connectTimeoutMs,
      );
      request.on("socket", (socket) => socket.once(url.protocol === "https:" ? "secureConnect" : "connect", () => clearTimeout(connectTimer)));
      request.setTimeout(idleTimeoutMs, () => fail(new StoreError("unavailable", `${url.host} sent nothing for ${idleTimeoutMs} ms`)));
      request.on("error", (err) => {
        clearTimeout(connectTimer);
        failure ??= webError(err, url);
        reject(failure);
      });
      request.on("close", () => clearTimeout(connectTimer));
      request.on("response", (message) =>
        resolve({ url, message, failure: () => failure, close: () => request.destroy() }),
      );
      request.end();
    });
  }
}

/** The URL for messages: without its query, which may hold a temporary URL's signature. */
export function describeUrl(url: URL): string {
  return `${url.origin}${url.pathname}`;
}

/** A network, TLS or protocol error as a StoreError whose kind says whether trying again can help. */
function webError(err: Error, url: URL): Error {
  if (err instanceof StoreError || err.name === "AbortError") return err;
  const code = (err as NodeJS.ErrnoException).code ?? "";
  const where = url.host;
  if (code === "ENOTFOUND") return new StoreError("invalid", `host ${url.hostname} does not resolve`, { cause: err });
  if (code.startsWith("HPE_")) {
    return new StoreError("invalid", `${where} sent a malformed HTTP response (${code}), such as a body longer than its Content-Length`, { cause: err });
  }
  if (/CERT|TLS|SSL/.test(code)) return new StoreError("invalid", `${where}: TLS failed (${code})`, { cause: err });
  return new StoreError("unavailable", `${where}: ${code || err.message}`, { cause: err });
}
