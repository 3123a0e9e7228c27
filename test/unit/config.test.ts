import { mkdtemp, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { ConfigError, loadConfig } from "../../src/config/config.js";

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "itx-config-"));
});

async function file(name: string, text: string): Promise<string> {
  const path = join(dir, name);
  await writeFile(path, text);
  return path;
}

describe("configuration", () => {
  it("starts on embedded defaults with one local filesystem store", async () => {
    const config = await loadConfig({});
    expect(config).toMatchObject({ listen: "127.0.0.1:50051", dataDir: "./var", region: "local" });
    expect(config.mongodbUri).toBeUndefined();
    expect(config.stores).toEqual([
      { name: "local", plugin: "store-filesystem", options: { root: "images" }, default: true, staging: true, allowEncryptedImages: false },
    ]);
  });

  it("layers the file, then ITX_* variables, then command-line flags", async () => {
    const yaml = await file("layers.yaml", "listen: 0.0.0.0:1\nregion: file-region\ndataDir: /from/file\nlogLevel: warn\n");
    const config = await loadConfig({
      file: yaml,
      env: { ITX_REGION: "env-region", ITX_DATA_DIR: "/from/env", MONGODB_URI: "mongodb://plain:1/", ITX_MONGODB_URI: "mongodb://itx:1/" },
      overrides: { dataDir: "/from/flag", listen: undefined },
    });
    expect(config).toMatchObject({
      listen: "0.0.0.0:1",
      region: "env-region",
      dataDir: "/from/flag",
      logLevel: "warn",
      mongodbUri: "mongodb://itx:1/",
    });
  });

  it("reads JSON config files and ':'-separated plugin dirs from the environment", async () => {
    const json = await file("c.json", JSON.stringify({ stores: [{ name: "a", plugin: "store-filesystem", default: true, staging: true }] }));
    const config = await loadConfig({ file: json, env: { ITX_PLUGINS_DIRS: "/p1:/p2" } });
    expect(config.stores[0]).toMatchObject({ name: "a", options: {} });
    expect(config.pluginsDirs).toEqual(["/p1", "/p2"]);
  });

  it.each([
    ["listen: nowhere\n", /^invalid configuration: listen: must be HOST:PORT$/],
    ["lisen: 127.0.0.1:1\n", /^invalid configuration: \(top level\): Unrecognized key: "lisen"$/],
    ["stores:\n  - name: Bad Name\n    plugin: x\n", /^invalid configuration: stores\[0\]\.name: must be lower-case/],
    ["stores:\n  - name: a\n    plugin: x\n    default: true\n    staging: true\n  - name: a\n    plugin: y\n", /stores\[1\]\.name: duplicate store name "a"/],
    ["stores:\n  - name: a\n    plugin: x\n", /^invalid configuration: stores: exactly one store must have default: true$/],
    ["mongodbUri: postgres://x\n", /^invalid configuration: mongodbUri: must be a mongodb:\/\/ URI$/],
    ["maxMessageBytes: lots\n", /^invalid configuration: maxMessageBytes: /],
    ["- just\n- a list\n", /must hold a mapping of keys/],
    ["listen: [unclosed\n", /is not valid YAML/],
  ])("refuses %j with one message naming the key", async (text, message) => {
    const path = await file(`bad-${Math.random()}.yaml`, text);
    const err = await loadConfig({ file: path }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as Error).message).toMatch(message);
  });

  it("says which file it cannot read", async () => {
    await expect(loadConfig({ file: join(dir, "missing.yaml") })).rejects.toThrow(/cannot read config file .*missing\.yaml: ENOENT/);
  });
});
