import { mkdir, mkdtemp, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AdminService, PluginState } from "../../src/gen/imagetransfer/v1/admin_pb.js";
import { PLUGIN_API_VERSION } from "../../src/plugins/plugin-api.js";
import { ImageService } from "../../src/gen/imagetransfer/v1/image_pb.js";
import { ensureBuilt, repoRoot, spawnServer, type ServerProcess } from "../helpers/built-cli.js";
import { startTestService, type TestService } from "../helpers/service.js";

/** A plugin folder: its package.json manifest and entry module source. */
async function writePlugin(dir: string, name: string, manifest: unknown, entry?: string): Promise<void> {
  await mkdir(join(dir, name), { recursive: true });
  await writeFile(join(dir, name, "package.json"), JSON.stringify({ name, version: "1.2.3", type: "module", imageTransfer: manifest }));
  if (entry !== undefined) await writeFile(join(dir, name, "index.js"), entry);
}

const memoryStore = (api: string, scheme: string, extra = "") => `
import { defineStorePlugin } from ${JSON.stringify(api)};
export default defineStorePlugin({
  schemes: [${JSON.stringify(scheme)}],
  capabilities: { readRanges: true, write: true, delete: true, list: true, presignGet: false, presignPut: false, maxObjectSize: 0 },
  ${extra}
  open: (config) => ({
    objects: new Map(),
    async stat(key) { return undefined; },
    async read(key) { throw new Error("not found"); },
    async write(key, source) { return { key, size: 0 }; },
    async delete(key) {},
    async list() { return { objects: [] }; },
  }),
});`;

describe("plugin host: broken plugins are reported and skipped, the server still serves", () => {
  let dir: string;
  let service: TestService;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "itx-plugins-"));
    const api = pathToFileURL(join(repoRoot, "src/plugins/plugin-api.ts")).href;
    const store = { kind: "store", apiVersion: "1.0", entry: "./index.js" };
    await writePlugin(dir, "good-memory", store, memoryStore(api, "mem"));
    await writePlugin(dir, "broken-import", store, "export default {;");
    await writePlugin(dir, "throws-on-import", store, 'throw new Error("missing native library libfoo.so");');
    await writePlugin(dir, "future-api", { ...store, apiVersion: "1.9" }, memoryStore(api, "future"));
    await writePlugin(dir, "next-major", { ...store, apiVersion: "2.0" }, memoryStore(api, "major"));
    await writePlugin(dir, "not-a-definition", store, "export default { kind: 'store', schemes: ['plain'] };");
    await writePlugin(dir, "wrong-kind", { ...store, kind: "converter" }, memoryStore(api, "kind"));
    await writePlugin(dir, "throws-in-register", store, memoryStore(api, "boom", 'setup() { throw new Error("credentials file /etc/boom missing"); },'));
    await writePlugin(dir, "steals-file-scheme", store, memoryStore(api, "file"));
    await writePlugin(dir, "no-manifest", undefined, "export default 1;");
    await writePlugin(dir, "missing-entry", { ...store, entry: "./nowhere.js" });
    await writePlugin(dir, "escaping-entry", { ...store, entry: "../good-memory/index.js" });

    service = await startTestService({
      pluginsDirs: [dir],
      stores: [
        { name: "local", plugin: "store-filesystem", options: { root: "images" }, default: true, staging: true },
        { name: "scratch", plugin: "good-memory" },
        { name: "broken", plugin: "throws-in-register" },
      ],
    });
  });
  afterAll(async () => {
    await service?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  it("lists every plugin with its state and, for failures, a reason naming the problem", async () => {
    const admin = createClient(AdminService, createConnectTransport({ baseUrl: service.url, httpVersion: "1.1" }));
    const { plugins } = await admin.listPlugins({});
    const byId = new Map(plugins.map((p) => [p.id, p]));
    const failed = (id: string, reason: RegExp) => {
      expect(byId.get(id), id).toMatchObject({ state: PluginState.FAILED, error: expect.stringMatching(reason) });
    };
    expect(byId.get("@imagetransfer/store-filesystem")).toMatchObject({ state: PluginState.LOADED, error: "" });
    expect(byId.get("good-memory")).toMatchObject({ state: PluginState.LOADED, version: "1.2.3", apiVersion: "1.0" });
    failed("broken-import", /Unexpected token|SyntaxError|invalid JS syntax/i);
    failed("throws-on-import", /libfoo\.so/);
    const host = PLUGIN_API_VERSION.replace(".", "\\.");
    failed("future-api", new RegExp(`plugin API 1\\.9; this host provides ${host}`));
    failed("next-major", new RegExp(`plugin API 2\\.0; this host provides ${host}`));
    failed("not-a-definition", /defineStorePlugin/);
    failed("wrong-kind", /declares kind "converter"/);
    failed("throws-in-register", /credentials file \/etc\/boom missing/);
    failed("steals-file-scheme", /"file" is already served by plugin @imagetransfer\/store-filesystem/);
    failed("no-manifest", /no "imageTransfer" object/);
    failed("missing-entry", /nowhere\.js|Cannot find|Failed to load/i);
    failed("escaping-entry", /inside the plugin folder/);
  });

  it("shows stores whose plugin failed as unavailable with the reason, and the others as available", async () => {
    const admin = createClient(AdminService, createConnectTransport({ baseUrl: service.url, httpVersion: "1.1" }));
    const { stores } = await admin.listStores({});
    expect(stores.map((s) => [s.name, s.available])).toEqual([
      ["local", true],
      ["scratch", true],
      ["broken", false],
    ]);
    expect(stores[1]).toMatchObject({ schemes: ["mem"], plugin: "good-memory", region: "local" });
    expect(stores[2]!.error).toMatch(/plugin "throws-in-register" is not loaded/);
  });

  it("keeps serving the API", async () => {
    const images = createClient(ImageService, createConnectTransport({ baseUrl: service.url, httpVersion: "1.1" }));
    const { image } = await images.createImage({ name: "still-here" });
    expect((await images.getImage({ id: image!.id })).image?.name).toBe("still-here");
  });
});

describe("plugin host in the built server: a third-party plugin importing the public plugin-api export", () => {
  let dir: string;
  let server: ServerProcess;

  beforeAll(async () => {
    await ensureBuilt();
    dir = await mkdtemp(join(tmpdir(), "itx-thirdparty-"));
    // As an npm install of a plugin would lay it out: the host package is resolvable by name.
    await mkdir(join(dir, "node_modules"));
    await symlink(repoRoot, join(dir, "node_modules", "imagetransfer"));
    await writePlugin(join(dir, "plugins"), "acme-store", { kind: "store", apiVersion: "1.0", entry: "./index.js" }, memoryStore("imagetransfer/plugin-api", "acme"));
    await writePlugin(join(dir, "plugins"), "acme-broken", { kind: "store", apiVersion: "1.0", entry: "./index.js" }, 'throw new Error("acme exploded");');
    server = await spawnServer(["--plugins-dir", join(dir, "plugins"), "--data-dir", join(dir, "var")]);
  });
  afterAll(async () => {
    await server?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  it("loads it through the package export, reports the broken one, and logs the failure with the plugin id", async () => {
    const admin = createClient(AdminService, createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" }));
    const { plugins } = await admin.listPlugins({});
    expect(plugins.find((p) => p.id === "acme-store")).toMatchObject({ state: PluginState.LOADED });
    expect(plugins.find((p) => p.id === "acme-broken")).toMatchObject({ state: PluginState.FAILED, error: "acme exploded" });
    const logLine = server
      .log()
      .split("\n")
      .filter(Boolean)
      .map((l) => JSON.parse(l) as Record<string, unknown>)
      .find((l) => l.plugin === "acme-broken");
    expect(logLine).toMatchObject({ msg: "plugin skipped", reason: "acme exploded" });
  });
});
