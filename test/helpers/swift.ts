/**
 * The real Swift that test/global-setup.ts starts (or that SWIFT_AUTH_URL names): its
 * settings, a container per test, a direct view of what Swift holds, and a fault proxy
 * to put in front of it.
 */
import { randomBytes } from "node:crypto";
import { createServer, connect, type Server, type Socket } from "node:net";
import plugin from "../../plugins/store-swift/index.js";
import { registerPlugin } from "./register-plugin.js";
import type { StoreDriver, StoreInstance } from "../../src/plugins/plugin-api.js";

export interface SwiftSettings {
  /** tempauth v1.0 URL */
  authUrl: string;
  /** "account:user", an account admin */
  user: string;
  key: string;
  /** A user of the same account without any rights. */
  readerUser: string;
  readerKey: string;
  s3: { endpoint: string; region: string; accessKeyId: string; secretAccessKey: string };
}

/** The Temp-URL-Key every test store uses, so that stores never take the account's key from each other. */
export const TEST_TEMP_URL_KEY = "imagetransfer-test-temp-url-key";

export function swiftSettings(): SwiftSettings {
  const env = (name: string) => {
    const value = process.env[name];
    if (!value) throw new Error(`${name} is not set: test/global-setup.ts starts Swift and sets it (is globalSetup configured?)`);
    return value;
  };
  return {
    authUrl: env("SWIFT_AUTH_URL"),
    user: env("SWIFT_USER"),
    key: env("SWIFT_KEY"),
    readerUser: process.env.SWIFT_READER_USER ?? "test:reader",
    readerKey: process.env.SWIFT_READER_KEY ?? "reading",
    s3: {
      endpoint: env("S3_ENDPOINT"),
      region: env("S3_REGION"),
      accessKeyId: env("S3_ACCESS_KEY_ID"),
      secretAccessKey: env("S3_SECRET_ACCESS_KEY"),
    },
  };
}

/** A container name no other test uses. */
export function uniqueContainer(label = "test"): string {
  return `itx-${label}-${randomBytes(5).toString("hex")}`;
}

/** A tempauth token and the account's storage URL, straight from Swift. */
export async function swiftToken(user = swiftSettings().user, key = swiftSettings().key): Promise<{ token: string; storageUrl: string }> {
  const response = await fetch(swiftSettings().authUrl, { headers: { "x-auth-user": user, "x-auth-key": key } });
  const token = response.headers.get("x-auth-token");
  const storageUrl = response.headers.get("x-storage-url");
  if (!response.ok || !token || !storageUrl) throw new Error(`tempauth login of ${user} failed: HTTP ${response.status}`);
  return { token, storageUrl };
}

/** A request to the account with the tester's token; `path` is "/container[/object]" (encoded). */
export async function swiftRequest(method: string, path: string, init: { headers?: Record<string, string>; body?: Buffer } = {}): Promise<Response> {
  const { token, storageUrl } = await swiftToken();
  return fetch(`${storageUrl}${path}`, { method, headers: { ...init.headers, "x-auth-token": token }, body: init.body });
}

export async function createContainer(name: string): Promise<void> {
  const response = await swiftRequest("PUT", `/${name}`);
  if (!response.ok) throw new Error(`cannot create container ${name}: HTTP ${response.status}`);
}

/** Every object name in a container, from Swift itself; [] when the container does not exist. */
export async function objectNames(container: string): Promise<string[]> {
  const names: string[] = [];
  for (let marker = ""; ; ) {
    const response = await swiftRequest("GET", `/${container}?format=json&marker=${encodeURIComponent(marker)}`);
    if (response.status === 404) return names;
    if (!response.ok) throw new Error(`cannot list ${container}: HTTP ${response.status}`);
    const page = response.status === 204 ? [] : ((await response.json()) as Array<{ name: string }>);
    if (page.length === 0) return names;
    names.push(...page.map((o) => o.name));
    marker = page.at(-1)!.name;
  }
}

/** Removes a container and its segments container with everything in them. */
export async function removeContainer(name: string): Promise<void> {
  for (const container of [name, `${name}_segments`]) {
    for (const object of await objectNames(container)) {
      await swiftRequest("DELETE", `/${container}/${object.split("/").map(encodeURIComponent).join("/")}`);
    }
    await swiftRequest("DELETE", `/${container}`);
  }
}

/** `data` as a store write's source, in chunks of `chunk` bytes (the last one shorter). */
export async function* chunksOf(data: Buffer, chunk = 64 * 1024): AsyncGenerator<Buffer> {
  for (let i = 0; i < data.length; i += chunk) yield data.subarray(i, i + chunk);
}

/** Options of a store-swift instance for `container`, as a config file would give them. */
export function swiftStoreOptions(container: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
  const { authUrl, user, key } = swiftSettings();
  return { authUrl, user, key, container, tempUrlKey: TEST_TEMP_URL_KEY, segmentSize: 1024 * 1024, ...extra };
}

let driver: StoreDriver | undefined;

/** The plugin's driver, registered as the host would. */
export async function swiftDriver(): Promise<StoreDriver> {
  driver ??= (await registerPlugin(plugin)).stores[0]!;
  return driver;
}

export async function openSwiftStore(options: Record<string, unknown>): Promise<StoreInstance> {
  return (await swiftDriver()).open({ name: "swift", region: "local", options, dataDir: "/nonexistent" });
}

/**
 * A service's stores with Swift behind a fault proxy: "local" (filesystem, the staging store)
 * and "swift" (the default, on `container`, reaching Swift only through the proxy, with 5 s
 * timeouts), and the proxy that makes that Swift misbehave. Close the proxy when done.
 */
export async function swiftBehindFaultProxy(container: string): Promise<{ proxy: FaultProxy; stores: Array<Record<string, unknown>> }> {
  const proxy = await startFaultProxy();
  const { storageUrl } = await swiftToken();
  const viaProxy = { authUrl: `${proxy.url}/auth/v1.0`, storageUrl: `${proxy.url}${new URL(storageUrl).pathname}`, timeoutSeconds: 5 };
  return {
    proxy,
    stores: [
      { name: "local", plugin: "store-filesystem", options: { root: "images" }, staging: true },
      { name: "swift", plugin: "store-swift", default: true, options: swiftStoreOptions(container, viaProxy) },
    ],
  };
}

export type FaultMode = "pass" | "503" | "down";

/**
 * A TCP proxy in front of Swift that can misbehave: "pass" forwards, "503" answers every
 * request (on a new connection) with 503 Service Unavailable, "down" refuses connections (and `goDown()` also
 * cuts the ones in flight, as a Swift that dies would).
 */
export interface FaultProxy {
  /** http://127.0.0.1:PORT */
  url: string;
  mode: FaultMode;
  /** Requests answered with 503 so far. */
  refused503: number;
  /** Bytes forwarded from clients to Swift, and back, so far. */
  bytesUp: number;
  bytesDown: number;
  /** Answers the next `count` requests with 503, then forwards again. */
  fail503(count: number): void;
  /** Calls `fn` once when more than `bytes` have gone up to Swift (or come down from it) in all. */
  whenUploaded(bytes: number, fn: () => void): void;
  whenDownloaded(bytes: number, fn: () => void): void;
  goDown(): void;
  close(): Promise<void>;
}

export async function startFaultProxy(target = new URL(swiftSettings().authUrl)): Promise<FaultProxy> {
  const live = new Set<Socket>();
  const watchers: Array<{ direction: "up" | "down"; bytes: number; fn: () => void }> = [];
  let stormLeft = Infinity;
  const proxy: FaultProxy = {
    url: "",
    mode: "pass",
    refused503: 0,
    bytesUp: 0,
    bytesDown: 0,
    fail503(count) {
      stormLeft = count;
      proxy.mode = "503";
      // Kept-alive connections would slip past the storm: clients must come back on new ones.
      for (const socket of live) socket.destroy();
    },
    whenUploaded: (bytes, fn) => void watchers.push({ direction: "up", bytes, fn }),
    whenDownloaded: (bytes, fn) => void watchers.push({ direction: "down", bytes, fn }),
    goDown() {
      proxy.mode = "down";
      for (const socket of live) socket.destroy();
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of live) socket.destroy();
        server.close(() => resolve());
      }),
  };
  const server: Server = createServer((client) => {
    live.add(client);
    client.once("close", () => live.delete(client));
    client.on("error", () => {});
    if (proxy.mode === "down") return void client.destroy();
    if (proxy.mode === "503") {
      let head = "";
      client.on("data", (chunk: Buffer) => {
        if (head.includes("\r\n\r\n")) return; // answered already; the rest is the body
        head += chunk.toString("latin1");
        if (!head.includes("\r\n\r\n")) return;
        proxy.refused503++;
        if (--stormLeft <= 0) {
          proxy.mode = "pass";
          stormLeft = Infinity;
        }
        client.end("HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
      });
      return;
    }
    const upstream = connect(Number(target.port), target.hostname);
    live.add(upstream);
    upstream.once("close", () => {
      live.delete(upstream);
      client.destroy();
    });
    client.once("close", () => upstream.destroy());
    upstream.on("error", () => client.destroy());
    const count = (direction: "up" | "down", chunk: Buffer) => {
      if (direction === "up") proxy.bytesUp += chunk.length;
      else proxy.bytesDown += chunk.length;
      for (const watcher of watchers.splice(0)) {
        if ((watcher.direction === "up" ? proxy.bytesUp : proxy.bytesDown) > watcher.bytes) watcher.fn();
        else watchers.push(watcher);
      }
    };
    client.on("data", (chunk: Buffer) => count("up", chunk));
    upstream.on("data", (chunk: Buffer) => count("down", chunk));
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = server.address() as { port: number };
  proxy.url = `http://127.0.0.1:${address.port}`;
  return proxy;
}
