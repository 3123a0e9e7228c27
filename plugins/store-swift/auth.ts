import { StoreError } from "../../src/plugins/plugin-api.js";
import { exchange, header } from "./http.js";
import type { KeystoneAuth, TempAuth } from "./options.js";

/** What authentication yields: where the account is and the token to show it. */
export interface Session {
  storageUrl: string;
  token: string;
  /** Milliseconds since the epoch; a token is renewed a minute before this. */
  expiresAt?: number;
}

/**
 * Logs in with tempauth (v1.0: X-Auth-User and X-Auth-Key, answered with X-Storage-Url
 * and X-Auth-Token) or Keystone v3 (password method, project scope; the token comes in
 * X-Subject-Token and the storage URL from the catalog's object-store endpoint). Messages
 * name the user and the auth URL, never the key or a token.
 */
export async function authenticate(auth: TempAuth | KeystoneAuth, timeoutMs: number, signal?: AbortSignal): Promise<Session> {
  return auth.version === "1.0" ? tempAuth(auth, timeoutMs, signal) : keystone(auth, timeoutMs, signal);
}

async function tempAuth(auth: TempAuth, timeoutMs: number, signal?: AbortSignal): Promise<Session> {
  const answer = await exchange(new URL(auth.url), {
    method: "GET",
    headers: { "x-auth-user": auth.user, "x-auth-key": auth.key },
    signal,
    timeoutMs,
  });
  refused(answer.status, auth.user, auth.url);
  const storageUrl = header(answer.headers, "x-storage-url");
  const token = header(answer.headers, "x-auth-token");
  if (!storageUrl || !token) {
    throw new StoreError("invalid", `${auth.url} answered without X-Storage-Url and X-Auth-Token; is it a tempauth v1.0 URL?`);
  }
  const seconds = Number(header(answer.headers, "x-auth-token-expires"));
  return { storageUrl, token, expiresAt: Number.isFinite(seconds) && seconds > 0 ? Date.now() + seconds * 1000 : undefined };
}

interface CatalogEntry {
  type?: string;
  endpoints?: Array<{ interface?: string; region?: string; region_id?: string; url?: string }>;
}

async function keystone(auth: KeystoneAuth, timeoutMs: number, signal?: AbortSignal): Promise<Session> {
  const request = {
    auth: {
      identity: {
        methods: ["password"],
        password: { user: { name: auth.user, domain: { name: auth.userDomain }, password: auth.password } },
      },
      scope: { project: { name: auth.project, domain: { name: auth.projectDomain } } },
    },
  };
  const url = `${auth.url}/auth/tokens`;
  const answer = await exchange(new URL(url), {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: Buffer.from(JSON.stringify(request)),
    signal,
    timeoutMs,
  });
  refused(answer.status, auth.user, `Keystone at ${url}`);
  const token = header(answer.headers, "x-subject-token");
  let body: { token?: { expires_at?: string; catalog?: CatalogEntry[] } };
  try {
    body = JSON.parse(answer.body.toString("utf8"));
  } catch {
    throw new StoreError("invalid", `${url} answered with something other than a Keystone v3 token`);
  }
  if (!token || !body.token) throw new StoreError("invalid", `${url} answered without a token; is it a Keystone v3 URL?`);
  const endpoints = (body.token.catalog ?? []).filter((entry) => entry.type === "object-store").flatMap((entry) => entry.endpoints ?? []);
  const endpoint = endpoints.find(
    (e) => e.interface === auth.endpointInterface && (auth.endpointRegion === undefined || (e.region_id ?? e.region) === auth.endpointRegion),
  );
  if (!endpoint?.url) {
    const where = `${auth.endpointInterface} object-store endpoint${auth.endpointRegion ? ` in region ${auth.endpointRegion}` : ""}`;
    throw new StoreError("invalid", `the Keystone catalog of project "${auth.project}" has no ${where}; set "storageUrl" or "endpointRegion"`);
  }
  const expiresAt = body.token.expires_at ? Date.parse(body.token.expires_at) : NaN;
  return { storageUrl: endpoint.url, token, expiresAt: Number.isFinite(expiresAt) ? expiresAt : undefined };
}

/** Maps a refusal from the auth endpoint (`url`, or a phrase naming it) to a StoreError; success passes. */
function refused(status: number, user: string, url: string): void {
  if (status >= 200 && status < 300) return;
  if (status === 401 || status === 403) {
    throw new StoreError("permission", `${url} refused the credentials of user "${user}" (HTTP ${status}); check "user" and "key"`);
  }
  if (status === 404) throw new StoreError("invalid", `${url} is not an authentication endpoint (HTTP 404); check "authUrl"`);
  throw new StoreError(status >= 500 || status === 429 ? "unavailable" : "invalid", `${url} answered HTTP ${status} to the login of user "${user}"`);
}
