/**
 * Seed URI rules (src/core/store-uri.ts) on configured stores made up for the test, and
 * how `itx import` tells a seed URI from a local file. The same rules end to end through
 * ImportImage are in test/integration/seed-uri.test.ts.
 */
import { describe, expect, it } from "vitest";
import { isSeedUri } from "../../src/cli/transfer.js";
import { isDomainError, type DomainError } from "../../src/core/errors.js";
import { pickStore, resolveStoreUri, storeUri } from "../../src/core/store-uri.js";
import type { ConfiguredStore } from "../../src/core/stores.js";
import type { StoreCapabilities, StoreInstance } from "../../src/plugins/plugin-api.js";

const instance = {} as StoreInstance;
const fileCaps: StoreCapabilities = { readRanges: true, write: true, delete: true, list: true, presignGet: false, presignPut: false, maxObjectSize: 0 };
const webCaps: StoreCapabilities = { ...fileCaps, write: false, delete: false, list: false, uriKeys: true };

function store(name: string, schemes: string[], capabilities: StoreCapabilities, extra: Partial<ConfiguredStore> = {}): ConfiguredStore {
  return { name, plugin: "test", region: "here", schemes, capabilities, isDefault: false, isStaging: false, instance, ...extra };
}

const local = store("local", ["file"], fileCaps, { isDefault: true, isStaging: true });
const web = store("web", ["http", "https"], webCaps);
const stores = [local, web];

function refusal(call: () => unknown): DomainError {
  try {
    call();
  } catch (err) {
    expect(isDomainError(err), String(err)).toBe(true);
    return err as DomainError;
  }
  throw new Error("expected a refusal");
}

describe("resolveStoreUri: SCHEME://STORE/KEY", () => {
  it("names an object in a configured store, its key unescaped", () => {
    expect(resolveStoreUri(stores, "file://local/uploads/a%20b", "here")).toMatchObject({ store: { name: "local" }, key: "uploads/a b" });
  });

  it.each([
    ["/etc/passwd", /must look like SCHEME:\/\/STORE\/KEY/],
    ["etc/passwd", /must look like SCHEME:\/\/STORE\/KEY/],
    ["file:///etc/passwd", /must name a store: file:\/\/STORE\/KEY \(host paths are never imported\)/],
    ["file:/etc/passwd", /must look like file:\/\/STORE\/KEY/],
    ["file://local/", /must look like file:\/\/STORE\/KEY/],
    ["file://local/../../etc/passwd", /has a "\.\." segment: a seed URI names an object inside a store, never a path around it/],
    ["file://local/uploads/../../../etc/passwd", /"\.\." segment/],
    ["file://local/uploads/%2e%2e/%2E%2E/etc/passwd", /"\.\." segment/],
    ["file://local/uploads%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd", /"\.\." segment/],
    ["file://local/./uploads/x", /"\." segment/],
    ["file://local/uploads/%00", /NUL byte/],
    ["file://local/uploads/%zz", /badly escaped key/],
    ["file://elsewhere/x", /names store "elsewhere", which is not configured here; see ListStores/],
    ["ftp://local/x", /uses scheme "ftp", which no store here serves \(schemes served: file, http, https\)/],
    ["gopher:x", /uses scheme "gopher", which no store here serves/],
  ])("refuses %j with INVALID_ARGUMENT", (uri, message) => {
    const err = refusal(() => resolveStoreUri(stores, uri, "here"));
    expect(err.kind).toBe("invalid-argument");
    expect(err.message).toMatch(message);
  });

  it("refuses a store of another region and a store that is not open", () => {
    const away = store("away", ["file"], fileCaps, { region: "there" });
    expect(refusal(() => resolveStoreUri([local, away], "file://away/x", "here")).reason).toBe("WRONG_REGION");
    const broken = store("broken", ["file"], fileCaps, { instance: undefined, error: "cannot open: disk gone" });
    const err = refusal(() => resolveStoreUri([local, broken], "file://broken/x", "here"));
    expect(err).toMatchObject({ reason: "STORE_UNAVAILABLE", message: expect.stringContaining("disk gone") });
  });

  it("names the field it checks", () => {
    expect(refusal(() => resolveStoreUri(stores, "file:///x", "here", "location")).message).toMatch(/^location must name a store/);
  });
});

describe("resolveStoreUri: web URLs", () => {
  it("hands a web URL to the web store as its key, normalised and without a fragment", () => {
    expect(resolveStoreUri(stores, "https://images.example.com/cirros.qcow2?sig=1#part", "here")).toMatchObject({
      store: { name: "web" },
      key: "https://images.example.com/cirros.qcow2?sig=1",
      uri: "https://images.example.com/cirros.qcow2?sig=1#part",
    });
    // The store checks addresses on the normalised URL, whatever the spelling.
    expect(resolveStoreUri(stores, "HTTP://2130706433/x", "here").key).toBe("http://127.0.0.1/x");
  });

  it("refuses credentials and malformed URLs with INVALID_ARGUMENT, without echoing the password", () => {
    const err = refusal(() => resolveStoreUri(stores, "https://me:hunter2@images.example.com/x", "here"));
    expect(err.kind).toBe("invalid-argument");
    expect(err.message).toMatch(/must not carry credentials/);
    expect(err.message).not.toMatch(/hunter2/);
    expect(refusal(() => resolveStoreUri(stores, "https://me@images.example.com/x", "here")).message).toMatch(/credentials/);
    expect(refusal(() => resolveStoreUri(stores, "https://", "here")).message).toMatch(/is not a valid URL/);
  });

  it("accepts web URLs only where a web store is configured", () => {
    expect(refusal(() => resolveStoreUri([local], "https://images.example.com/x", "here")).message).toMatch(
      /uses scheme "https", which no store here serves \(schemes served: file\)/,
    );
  });

  it("uses the web store of this region, and refuses when there is none here", () => {
    const awayWeb = store("web-away", ["http", "https"], webCaps, { region: "there" });
    expect(resolveStoreUri([local, awayWeb, web], "https://a.example/x", "here").store.name).toBe("web");
    expect(refusal(() => resolveStoreUri([local, awayWeb], "https://a.example/x", "here")).reason).toBe("WRONG_REGION");
    const down = store("web", ["http", "https"], webCaps, { instance: undefined, error: "cannot open: option maxRedirects: must be at most 5" });
    expect(refusal(() => resolveStoreUri([local, down], "https://a.example/x", "here")).message).toMatch(/store "web" is unavailable: cannot open: option maxRedirects/);
  });
});

describe("storeUri and pickStore", () => {
  it("writes SCHEME://STORE/KEY, or the key itself for a store keyed by URIs", () => {
    expect(storeUri(local, "images/1")).toBe("file://local/images/1");
    expect(storeUri(web, "https://a.example/x")).toBe("https://a.example/x");
  });

  it("never picks a read-only store to write to", () => {
    expect(pickStore(stores, "", "isDefault", "here").name).toBe("local");
    const err = refusal(() => pickStore(stores, "web", "isDefault", "here"));
    expect(err).toMatchObject({ kind: "failed-precondition", reason: "STORE_READ_ONLY", message: expect.stringMatching(/store "web" only reads/) });
  });
});

describe("itx import SOURCE", () => {
  it.each(["file://local/uploads/x", "https://images.example.com/a.qcow2", "HTTP://x/y", "s3://bucket/key", "file:/etc/passwd", "ftp:x", "a+b.c-d:rest"])(
    "sends %j to the server as a seed URI",
    (source) => {
      expect(isSeedUri(source)).toBe(true);
    },
  );

  it.each(["disk.qcow2", "./disk.qcow2", "/tmp/disk.qcow2", "../images/disk.raw", "./a:b", "dir/x://y", "1abc:def", ":x", ""])("uploads %j as a local file", (source) => {
    expect(isSeedUri(source)).toBe(false);
  });
});
