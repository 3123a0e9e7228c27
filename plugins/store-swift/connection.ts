import { once } from "node:events";
import type { IncomingMessage } from "node:http";
import { setTimeout as sleep } from "node:timers/promises";
import { isStoreError, StoreError, type StoreErrorKind } from "../../src/plugins/plugin-api.js";
import { authenticate, type Session } from "./auth.js";
import { discard, readAll, send, startRequest, type Answer } from "./http.js";
import type { SwiftOptions } from "./options.js";

export interface CallOptions {
  query?: Record<string, string>;
  headers?: Record<string, string>;
  body?: Buffer;
  signal?: AbortSignal;
}

/** How long to wait for "100 Continue" before sending a body anyway, as curl does. */
const CONTINUE_WAIT_MS = 2_000;
/** Tries of a streaming PUT that Swift refused before it took any byte of the body. */
const PUT_ATTEMPTS = 6;
const PUT_BACKOFF_MS = 200;

/**
 * Requests to one Swift account with a cached token. A 401 means the token expired or was
 * revoked: the connection logs in again once and repeats the request, which is always
 * possible here because bodies are either in memory (manifests, metadata) or, for
 * streaming PUTs, not yet sent: those ask for "100 Continue" first, so Swift answers 401
 * (or 503) before it has consumed a byte of the stream.
 */
export class SwiftConnection {
  private current?: Session;
  private pending?: Promise<Session>;

  constructor(private readonly options: SwiftOptions) {}

  /** The account's storage URL, without a trailing slash. */
  async storageUrl(signal?: AbortSignal): Promise<string> {
    return (await this.login(signal)).storageUrl;
  }

  /** A request whose response stream the caller consumes; statuses are the caller's to judge. */
  async request(method: string, path: string, options: CallOptions, what: string): Promise<IncomingMessage> {
    for (let attempt = 0; ; attempt++) {
      const session = await this.login(options.signal);
      let response: IncomingMessage;
      try {
        response = await send(this.url(session, path, options.query), {
          method,
          headers: { ...options.headers, "x-auth-token": session.token },
          body: options.body,
          signal: options.signal,
          timeoutMs: this.options.timeoutMs,
        });
      } catch (err) {
        throw networkError(err, what);
      }
      if (response.statusCode === 401 && attempt === 0) {
        discard(response);
        this.forget(session);
        continue;
      }
      return response;
    }
  }

  /** A request whose (small) answer is read in full. */
  async call(method: string, path: string, options: CallOptions, what: string): Promise<Answer> {
    const response = await this.request(method, path, options, what);
    try {
      return { status: response.statusCode ?? 0, headers: response.headers, body: await readAll(response) };
    } catch (err) {
      throw networkError(err, what);
    }
  }

  /**
   * PUTs a stream with chunked encoding. The body is pulled only once Swift has said
   * "100 Continue", so a refusal that comes before (401, 5xx, 429, a lost connection)
   * can be answered by logging in again or by trying again with back-off.
   */
  async putStream(path: string, headers: Record<string, string>, body: AsyncIterable<Buffer>, signal: AbortSignal | undefined, what: string): Promise<Answer> {
    let reauthenticated = false;
    for (let attempt = 1; ; attempt++) {
      const session = await this.login(signal);
      const outcome = await this.tryPut(session, path, headers, body, signal);
      if (outcome.bodyStarted || attempt >= PUT_ATTEMPTS || signal?.aborted) {
        if (outcome.error !== undefined) throw networkError(outcome.error, what);
        return outcome.answer!;
      }
      if (outcome.answer?.status === 401 && !reauthenticated) {
        reauthenticated = true;
        this.forget(session);
        continue;
      }
      const transient = outcome.error !== undefined ? isNetworkFault(outcome.error) : isTransientStatus(outcome.answer!.status);
      if (!transient) {
        if (outcome.error !== undefined) throw networkError(outcome.error, what);
        return outcome.answer!;
      }
      const ceiling = PUT_BACKOFF_MS * 2 ** (attempt - 1);
      await sleep(ceiling / 2 + Math.random() * (ceiling / 2), undefined, { signal });
    }
  }

  private tryPut(
    session: Session,
    path: string,
    headers: Record<string, string>,
    body: AsyncIterable<Buffer>,
    signal: AbortSignal | undefined,
  ): Promise<{ answer?: Answer; error?: unknown; bodyStarted: boolean }> {
    return new Promise((resolve) => {
      let bodyStarted = false;
      let answered = false;
      const request = startRequest(this.url(session, path), {
        method: "PUT",
        headers: { ...headers, "x-auth-token": session.token, "transfer-encoding": "chunked", expect: "100-continue" },
        signal,
        timeoutMs: this.options.timeoutMs,
      });
      const pump = async () => {
        if (bodyStarted) return;
        bodyStarted = true;
        try {
          for await (const chunk of body) {
            if (answered) return; // Swift has already answered (an error): stop reading the source
            if (!request.write(chunk)) await once(request, "drain");
          }
          request.end();
        } catch (err) {
          // The source's own failure (or our request's): end the request; it reports as "error".
          request.destroy(err as Error);
          if (!answered) resolve({ error: err, bodyStarted });
        }
      };
      const fallback = setTimeout(pump, CONTINUE_WAIT_MS);
      request.once("continue", () => {
        clearTimeout(fallback);
        void pump();
      });
      request.once("response", (response: IncomingMessage) => {
        clearTimeout(fallback);
        answered = true;
        readAll(response).then(
          (content) => {
            // An early answer (an error) leaves the body half sent: that connection is done for.
            if (!request.writableFinished) request.destroy();
            resolve({ answer: { status: response.statusCode ?? 0, headers: response.headers, body: content }, bodyStarted });
          },
          (err: unknown) => resolve({ error: err, bodyStarted }),
        );
      });
      request.once("error", (err) => {
        clearTimeout(fallback);
        if (!answered) resolve({ error: err, bodyStarted });
      });
      request.flushHeaders();
    });
  }

  /** The URL of an account-relative path ("" for the account, "/container/object"), each segment encoded. */
  url(session: Session, path: string, query?: Record<string, string>): URL {
    const url = new URL(this.options.storageUrl ?? session.storageUrl);
    url.pathname = url.pathname.replace(/\/+$/, "") + path.split("/").map(encodeURIComponent).join("/");
    for (const [name, value] of Object.entries(query ?? {})) url.searchParams.set(name, value);
    return url;
  }

  /** The current session, logging in (once, for all callers) when there is none or it is about to expire. */
  async login(signal?: AbortSignal): Promise<Session> {
    signal?.throwIfAborted();
    let session = this.current;
    if (!session || (session.expiresAt !== undefined && session.expiresAt - Date.now() < 60_000)) {
      // Not tied to one caller's signal: others may be waiting for the same login.
      this.pending ??= authenticate(this.options.auth, this.options.timeoutMs)
        .then((fresh) => (this.current = fresh))
        .catch((err: unknown) => {
          throw networkError(err, `log in at ${this.options.auth.url}`);
        })
        .finally(() => (this.pending = undefined));
      session = await this.pending;
    }
    return this.options.storageUrl ? { ...session, storageUrl: this.options.storageUrl } : session;
  }

  /** Drops a token that Swift no longer accepts, unless another caller has renewed it already. */
  private forget(session: Session): void {
    if (this.current?.token === session.token) this.current = undefined;
  }
}

/** Swift's answer as a StoreError: what went wrong, with what, and what the caller can do. */
export function statusError(status: number, what: string): StoreError {
  let kind: StoreErrorKind;
  let hint: string;
  if (status === 404) [kind, hint] = ["not-found", "not found"];
  else if (status === 401) [kind, hint] = ["permission", "the credentials were refused even after logging in again"];
  else if (status === 403) [kind, hint] = ["permission", "the Swift user may not do this"];
  else if (isTransientStatus(status)) [kind, hint] = ["unavailable", "Swift is unavailable or overloaded"];
  else if (status === 413) [kind, hint] = ["invalid", "too large for Swift"];
  else [kind, hint] = ["invalid", "Swift refused the request"];
  return new StoreError(kind, `${what}: ${hint} (HTTP ${status})`);
}

export function isTransientStatus(status: number): boolean {
  return status >= 500 || status === 429 || status === 408 || status === 499;
}

const faultCodes = new Set(["ECONNRESET", "ECONNREFUSED", "ETIMEDOUT", "EPIPE", "EAI_AGAIN", "ENETUNREACH", "EHOSTUNREACH", "ENOTFOUND", "UND_ERR_SOCKET"]);

function isNetworkFault(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === "string" && faultCodes.has(code);
}

/**
 * A failed connection as a StoreError "unavailable" (the host retries those); aborts and
 * StoreErrors pass through, and so do errors of the caller's own source stream.
 */
export function networkError(err: unknown, what: string): unknown {
  if (isStoreError(err) || (err instanceof Error && err.name === "AbortError")) return err;
  if (!isNetworkFault(err)) return err;
  const code = (err as { code: string }).code;
  return new StoreError("unavailable", `${what}: Swift did not answer (${code})`, { cause: err });
}
