/**
 * store-swift with Keystone v3 password auth against a real Keystone and a Swift proxy that
 * trusts it (scripts/keystone.sh: Debian's keystone under uWSGI, swift-proxy-server with
 * authtoken + keystoneauth on the shared test Swift's backends). The store logs in through a
 * relay that hands every byte to Keystone and only notes the tokens Keystone issues, so that
 * the test can revoke the store's own token through Keystone's API.
 */
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { readFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { buffer as readAll } from "node:stream/consumers";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import plugin from "../../plugins/store-swift/index.js";
import { isStoreError, type StoreInstance } from "../../src/plugins/plugin-api.js";
import { runStoreConformance } from "../../src/testing/index.js";
import { startHttpRelay, type HttpRelay } from "../helpers/http-relay.js";
import { chunksOf, openSwiftStore } from "../helpers/swift.js";

const run = promisify(execFile);
const script = fileURLToPath(new URL("../../scripts/keystone.sh", import.meta.url));
const MiB = 1024 * 1024;
const TEMP_URL_KEY = "imagetransfer-keystone-temp-url-key";
// Keystone and the proxy each take a second or more per request on a busy 2-core machine.
const SLOW = 180_000;

let env: Record<string, string>;
let relay: HttpRelay;
let container: string;
let store: StoreInstance;
const containers: string[] = [];

/** X-Subject-Token of each successful POST /v3/auth/tokens through the relay, in order. */
function issuedTokens(): string[] {
  return relay.relayed.flatMap((r) => {
    const token = r.answerHeaders["x-subject-token"];
    return r.method === "POST" && r.status === 201 && typeof token === "string" ? [token] : [];
  });
}

/** A project-scoped token straight from Keystone, and the project's Swift account URL from its catalog. */
async function login(user = env.KEYSTONE_USER!, password = env.KEYSTONE_PASSWORD!, project = env.KEYSTONE_PROJECT!) {
  const response = await fetch(`${env.KEYSTONE_AUTH_URL}/auth/tokens`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({
      auth: {
        identity: { methods: ["password"], password: { user: { name: user, domain: { id: "default" }, password } } },
        scope: { project: { name: project, domain: { id: "default" } } },
      },
    }),
  });
  const token = response.headers.get("x-subject-token");
  if (response.status !== 201 || !token) throw new Error(`Keystone login of ${user} failed: HTTP ${response.status}`);
  const body = (await response.json()) as { token: { catalog: Array<{ type: string; endpoints: Array<{ interface: string; url: string }> }> } };
  const storageUrl = body.token.catalog.find((s) => s.type === "object-store")?.endpoints.find((e) => e.interface === "public")?.url;
  return { token, storageUrl: storageUrl ?? "" };
}

async function swift(method: string, path: string, headers: Record<string, string> = {}): Promise<Response> {
  const { token, storageUrl } = await login();
  return fetch(`${storageUrl}${path}`, { method, headers: { ...headers, "x-auth-token": token } });
}

async function newContainer(): Promise<string> {
  const name = `itx-keystone-${randomBytes(5).toString("hex")}`;
  containers.push(name);
  const response = await swift("PUT", `/${name}`);
  if (!response.ok) throw new Error(`cannot create container ${name}: HTTP ${response.status}`);
  return name;
}

async function objectNames(name: string): Promise<string[]> {
  const response = await swift("GET", `/${name}?format=json`);
  if (response.status === 404 || response.status === 204) return [];
  return ((await response.json()) as Array<{ name: string }>).map((o) => o.name);
}

async function removeContainer(name: string): Promise<void> {
  for (const c of [name, `${name}_segments`]) {
    for (const object of await objectNames(c)) await swift("DELETE", `/${c}/${object.split("/").map(encodeURIComponent).join("/")}`);
    await swift("DELETE", `/${c}`);
  }
}

/** Store options as a config file would give them for Keystone v3. */
function keystoneOptions(name: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    authUrl: `${relay.url}/v3`,
    authVersion: "3",
    user: env.KEYSTONE_USER,
    key: env.KEYSTONE_PASSWORD,
    project: env.KEYSTONE_PROJECT,
    userDomain: env.KEYSTONE_DOMAIN,
    projectDomain: env.KEYSTONE_DOMAIN,
    container: name,
    segmentSize: MiB,
    ...extra,
  };
}

beforeAll(async () => {
  try {
    await run("bash", [script, "start", "--for", String(process.pid)], { timeout: 600_000 });
  } catch (err) {
    throw new Error(`scripts/keystone.sh start failed:\n${(err as { stderr?: string }).stderr ?? String(err)}`);
  }
  env = {};
  for (const line of (await run("bash", [script, "env"])).stdout.split("\n")) {
    const match = /^export ([A-Z0-9_]+)=(.*)$/.exec(line);
    if (match) env[match[1]!] = match[2]!;
  }
  relay = await startHttpRelay(new URL(env.KEYSTONE_AUTH_URL!));
  // The account's Temp-URL-Key, set by the project's member (an operator role of the proxy);
  // the store, given no tempUrlKey, signs with the account's own key.
  const key = await swift("POST", "", { "x-account-meta-temp-url-key": TEMP_URL_KEY });
  expect(key.status).toBe(204);
  container = await newContainer();
  store = await openSwiftStore(keystoneOptions(container));
}, 600_000);

afterAll(async () => {
  try {
    for (const name of containers) await removeContainer(name);
  } finally {
    await relay?.close();
    await run("bash", [script, "release", String(process.pid)], { timeout: 120_000 });
  }
}, 300_000);

describe("store-swift with Keystone v3", () => {
  it(
    "logs in with the password method, finds the project's account in the catalog, and writes, reads, stats and deletes an object",
    async () => {
      const data = randomBytes(200 * 1024);
      const written = await store.write("images/small", chunksOf(data));
      expect(written.size).toBe(data.length);
      expect((await readAll(await store.read("images/small"))).equals(data)).toBe(true);
      expect(await store.stat("images/small")).toMatchObject({ size: data.length });
      // The object is in the project's account, AUTH_<project id>, as Swift itself shows.
      const { storageUrl } = await login();
      expect(storageUrl).toMatch(new RegExp(`^${env.KEYSTONE_SWIFT_URL}/v1/AUTH_[0-9a-f]{32}$`));
      expect((await swift("HEAD", `/${container}/images/small`)).status).toBe(200);
      await store.delete("images/small");
      expect(await store.stat("images/small")).toBeUndefined();
      expect((await swift("HEAD", `/${container}/images/small`)).status).toBe(404);
    },
    SLOW,
  );

  it(
    "writes a large object as a Static Large Object in 1 MiB segments, reads it back, and deletes it with its segments",
    async () => {
      const data = randomBytes(3 * MiB + 12345);
      await store.write("images/large", chunksOf(data));
      const manifest = await swift("GET", `/${container}/images/large?multipart-manifest=get&format=raw`);
      expect(manifest.status).toBe(200);
      expect(((await manifest.json()) as unknown[]).length).toBe(4);
      expect(await objectNames(`${container}_segments`)).toHaveLength(4);
      expect((await readAll(await store.read("images/large"))).equals(data)).toBe(true);
      const part = await readAll(await store.read("images/large", { range: { offset: MiB - 10, length: 20 } }));
      expect(part.equals(data.subarray(MiB - 10, MiB + 10))).toBe(true);
      await store.delete("images/large");
      expect(await objectNames(`${container}_segments`)).toEqual([]);
    },
    SLOW,
  );

  it(
    "makes TempURLs with the account's Temp-URL-Key that work without a token",
    async () => {
      const data = randomBytes(64 * 1024);
      await store.write("exports/x.vmdk", chunksOf(data));
      const get = await store.presign!("exports/x.vmdk", { method: "GET", expiresInSeconds: 60 });
      expect(get.url.startsWith(`${env.KEYSTONE_SWIFT_URL}/v1/AUTH_`)).toBe(true);
      const fetched = await fetch(get.url);
      expect(fetched.status).toBe(200);
      expect(Buffer.from(await fetched.arrayBuffer()).equals(data)).toBe(true);

      const put = await store.presign!("uploads/y", { method: "PUT", expiresInSeconds: 60 });
      const upload = randomBytes(32 * 1024);
      expect((await fetch(put.url, { method: "PUT", body: upload })).status).toBe(201);
      expect(await store.stat("uploads/y")).toMatchObject({ size: upload.length });
      // Without the signature the proxy wants a token.
      expect((await fetch(get.url.split("?")[0]!)).status).toBe(401);
    },
    SLOW,
  );

  it(
    "logs in again when Keystone revokes its token, and the call succeeds",
    async () => {
      await store.write("images/revoked", chunksOf(Buffer.from("still here")));
      const revoked = issuedTokens().at(-1)!;
      const logins = issuedTokens().length;
      const admin = await login(env.KEYSTONE_ADMIN_USER, env.KEYSTONE_ADMIN_PASSWORD, env.KEYSTONE_ADMIN_PROJECT);
      const revoke = await fetch(`${env.KEYSTONE_AUTH_URL}/auth/tokens`, {
        method: "DELETE",
        headers: { "x-auth-token": admin.token, "x-subject-token": revoked },
      });
      expect(revoke.status).toBe(204);
      // Swift refuses the revoked token from now on.
      const { storageUrl } = await login();
      expect((await fetch(`${storageUrl}/${container}/images/revoked`, { method: "HEAD", headers: { "x-auth-token": revoked } })).status).toBe(401);

      const log = env.KEYSTONE_SWIFT_LOG!;
      const refusalsBefore = count401(await readFile(log, "utf8"), container);
      expect(await store.stat("images/revoked")).toMatchObject({ size: 10 });
      expect((await readAll(await store.read("images/revoked"))).toString()).toBe("still here");
      // One new login, and the proxy answered the store's request with the old token 401.
      expect(issuedTokens().length).toBe(logins + 1);
      expect(issuedTokens().at(-1)).not.toBe(revoked);
      expect(count401(await readFile(log, "utf8"), container)).toBeGreaterThan(refusalsBefore);
    },
    SLOW,
  );

  it(
    "a wrong password fails opening the store with a permission error naming Keystone and the user",
    async () => {
      const err = await openSwiftStore(keystoneOptions(container, { key: "not-the-password" })).then(
        () => expect.unreachable("the store opened with a wrong password"),
        (e: unknown) => e,
      );
      expect(isStoreError(err) && err.kind).toBe("permission");
      expect((err as Error).message).toContain(`Keystone at ${relay.url}/v3/auth/tokens refused the credentials of user "${env.KEYSTONE_USER}"`);
      expect((err as Error).message).not.toContain("not-the-password");
    },
    SLOW,
  );
});

/** Requests for objects of `name` that the proxy's access log shows answered with 401. */
function count401(log: string, name: string): number {
  return log.split("\n").filter((line) => line.includes(`/${name}/`) && / HTTP\/1\.[01] 401 /.test(line)).length;
}

runStoreConformance({
  name: "store-swift (Keystone v3)",
  plugin,
  config: async () => {
    const name = await newContainer();
    return { name: "conformance", region: "test", options: keystoneOptions(name, { tempUrlKey: TEMP_URL_KEY }), dataDir: tmpdir() };
  },
  cleanup: (config) => removeContainer(config.options.container as string),
  unavailableConfig: () => ({
    name: "unreachable",
    region: "test",
    options: { ...keystoneOptions("itx-unreachable"), authUrl: "http://127.0.0.1:9/v3", timeoutSeconds: 5 },
    dataDir: tmpdir(),
  }),
});
