import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AdminService, PluginState } from "../../src/gen/imagetransfer/v1/admin_pb.js";
import { DiskFormat } from "../../src/gen/imagetransfer/v1/image_pb.js";
import { TaskState } from "../../src/gen/imagetransfer/v1/task_pb.js";
import { TransferService } from "../../src/gen/imagetransfer/v1/transfer_pb.js";
import { buildImage, buildSourceRaw, MiB } from "../helpers/disk-images.js";
import { ensureBuilt, repoRoot, runCli } from "../helpers/built-cli.js";
import { startTestService, type TestService } from "../helpers/service.js";
import { importFile, uploadFile, watchToEnd } from "../helpers/transfer.js";

/** A plugin folder holding a package.json manifest and its entry module. */
async function writePlugin(dir: string, name: string, kind: "store" | "converter", entry: string): Promise<void> {
  await mkdir(join(dir, name), { recursive: true });
  await writeFile(
    join(dir, name, "package.json"),
    JSON.stringify({ name, version: "0.0.1", type: "module", imageTransfer: { kind, apiVersion: "1.0", entry: "./index.js" } }),
  );
  await writeFile(join(dir, name, "index.js"), entry);
}

const OBJECT_SIZE = 4 * MiB;

/**
 * A read-only store holding one object of OBJECT_SIZE zero bytes under any key, whose
 * stat and read are the given source: the misbehaviour under test.
 */
const badStore = (api: string, scheme: string, calls: string) => `
import { Readable } from "node:stream";
import { defineStorePlugin } from ${JSON.stringify(api)};
const size = ${OBJECT_SIZE};
export default defineStorePlugin({
  schemes: [${JSON.stringify(scheme)}],
  capabilities: { readRanges: false, write: false, delete: false, list: true, presignGet: false, presignPut: false, maxObjectSize: 0 },
  open: () => ({
    async stat(key) { return { key, size }; },
    async read(key) { return Readable.from([Buffer.alloc(size)]); },
    async write() { throw new Error("read-only"); },
    async delete() {},
    async list() { return { objects: [] }; },
    ${calls}
  }),
});`;

/** A converter claiming one pair whose convert() is the given misbehaviour. */
const badConverter = (api: string, from: string, convert: string) => `
import { defineConverterPlugin } from ${JSON.stringify(api)};
export default defineConverterPlugin({
  conversions: [{ from: ${JSON.stringify(from)}, to: "raw" }],
  ${convert}
});`;

describe("plugin isolation: a misbehaving plugin fails only the task that used it", () => {
  let dir: string;
  let work: string;
  let service: TestService;
  let qcow2: string;
  let vhd: string;
  let vhdx: string;

  beforeAll(async () => {
    await ensureBuilt();
    dir = await mkdtemp(join(tmpdir(), "itx-bad-plugins-"));
    work = await mkdtemp(join(tmpdir(), "itx-isolation-"));
    const api = pathToFileURL(join(repoRoot, "src/plugins/plugin-api.ts")).href;
    await writePlugin(dir, "store-throws", "store", badStore(api, "throws", 'read(key) { throw new Error("read exploded synchronously"); },'));
    await writePlugin(dir, "store-hangs", "store", badStore(api, "hangs", "stat() { return new Promise(() => {}); },"));
    await writePlugin(
      dir,
      "store-breaks",
      "store",
      badStore(
        api,
        "breaks",
        `async read() {
          const stream = new Readable({ read() {} });
          stream.push(Buffer.alloc(64 * 1024));
          setTimeout(() => stream.destroy(new Error("disk on fire")), 50);
          return stream;
        },`,
      ),
    );
    await writePlugin(dir, "converter-rejects", "converter", badConverter(api, "vhd", 'convert() { return Promise.reject({ code: 42, text: "no luck" }); },'));
    await writePlugin(dir, "converter-hangs", "converter", badConverter(api, "vhdx", "convert() { return new Promise(() => {}); },"));

    const raw = await buildSourceRaw(join(work, "source.raw"), 2 * MiB);
    qcow2 = await buildImage(raw, "qcow2", join(work, "good.qcow2"));
    vhd = await buildImage(raw, "vhd", join(work, "bad.vhd"));
    vhdx = await buildImage(raw, "vhdx", join(work, "bad.vhdx"));

    service = await startTestService({
      pluginsDirs: [dir],
      pluginCallTimeoutSeconds: 2,
      pluginStallTimeoutSeconds: 3,
      stores: [
        { name: "local", plugin: "store-filesystem", options: { root: "images" }, default: true, staging: true },
        { name: "throwing", plugin: "store-throws" },
        { name: "hanging", plugin: "store-hangs" },
        { name: "breaking", plugin: "store-breaks" },
      ],
    });
  }, 120_000);
  afterAll(async () => {
    await service?.stop();
    await rm(dir, { recursive: true, force: true });
    await rm(work, { recursive: true, force: true });
  });

  const errorCounts = async () => {
    const { plugins } = await createClient(AdminService, createGrpcTransport({ baseUrl: service.url })).listPlugins({});
    for (const p of plugins) expect(p.state, `${p.id}: ${p.error}`).toBe(PluginState.LOADED);
    return new Map(plugins.map((p) => [p.id, p.errorCount]));
  };

  /** Imports a seed URI, runs a good import at the same time, and returns the bad task's end. */
  const importBesideGoodOne = async (seedUri: string, diskFormat: DiskFormat) => {
    const transfer = createClient(TransferService, createGrpcTransport({ baseUrl: service.url }));
    const { task } = await transfer.importImage({ seedUri, diskFormat });
    const [bad, good] = await Promise.all([watchToEnd(service.url, task!.id), importFile(service.url, qcow2, DiskFormat.QCOW2)]);
    expect(good.state, `the good import beside it: ${good.error?.reason} ${good.error?.message}`).toBe(TaskState.SUCCEEDED);
    expect(bad.state).toBe(TaskState.FAILED);
    return bad.error!;
  };

  const cases: Array<{ title: string; plugin: string; seed: () => Promise<string>; format: DiskFormat; reason: string; message: RegExp }> = [
    {
      title: "a store whose read throws synchronously",
      plugin: "store-throws",
      seed: async () => "throws://throwing/disk.raw",
      format: DiskFormat.RAW,
      reason: "PLUGIN_FAILED",
      message: /plugin "store-throws" failed in read: read exploded synchronously/,
    },
    {
      title: "a store whose stat never resolves",
      plugin: "store-hangs",
      seed: async () => "hangs://hanging/disk.raw",
      format: DiskFormat.RAW,
      reason: "PLUGIN_TIMEOUT",
      message: /plugin "store-hangs" did not answer in stat within 2 s/,
    },
    {
      title: "a store whose read stream emits an error midway",
      plugin: "store-breaks",
      seed: async () => "breaks://breaking/disk.raw",
      format: DiskFormat.RAW,
      reason: "PLUGIN_FAILED",
      message: /plugin "store-breaks" failed in read: disk on fire/,
    },
    {
      title: "a converter whose convert rejects with a value that is not an Error",
      plugin: "converter-rejects",
      seed: () => uploadFile(service.url, vhd),
      format: DiskFormat.VHD,
      reason: "PLUGIN_FAILED",
      message: /plugin "converter-rejects" failed in convert: \{"code":42,"text":"no luck"\}/,
    },
    {
      title: "a converter whose convert never resolves",
      plugin: "converter-hangs",
      seed: () => uploadFile(service.url, vhdx),
      format: DiskFormat.VHDX,
      reason: "PLUGIN_TIMEOUT",
      message: /plugin "converter-hangs" made no progress in convert within 3 s/,
    },
  ];

  for (const c of cases) {
    it(`${c.title}: its task fails naming the plugin, a good import beside it succeeds, ListPlugins counts the error`, async () => {
      const before = await errorCounts();
      const error = await importBesideGoodOne(await c.seed(), c.format);
      expect(error).toMatchObject({ reason: c.reason, message: expect.stringMatching(c.message) });
      expect(error.message).not.toMatch(/\n\s+at /);
      const after = await errorCounts();
      expect(after.get(c.plugin)! - before.get(c.plugin)!).toBeGreaterThan(0n);
      // Only the misbehaving plugin is blamed.
      expect(after.get("@imagetransfer/store-filesystem")).toBe(0n);
      expect(after.get("@imagetransfer/converter-qemu-img")).toBe(0n);
    }, 60_000);
  }

  it("itx plugins list shows each plugin's error count", async () => {
    const run = await runCli(["plugins", "list"], { env: { ITX_SERVER: service.url } });
    expect(run.code, run.stderr).toBe(0);
    const lines = run.stdout.trimEnd().split("\n");
    expect(lines[0]).toMatch(/^ID\s+KIND\s+VERSION\s+API\s+STATE\s+ERRORS\s+PATH$/);
    const counts = await errorCounts();
    for (const id of ["store-throws", "converter-hangs", "@imagetransfer/store-filesystem"]) {
      const row = lines.find((l) => l.startsWith(`${id} `));
      expect(row, id).toMatch(new RegExp(`\\sloaded\\s+${counts.get(id)}\\s`));
    }
    expect(counts.get("store-throws")).toBeGreaterThan(0n);
  });
});
