import { describe, expect, it } from "vitest";
import type { ConverterDriver, StoreDriver } from "../../src/plugins/plugin-api.js";
import { PluginRegistry } from "../../src/plugins/registry.js";

const converter = (pairs: Array<[string, string]>, describe = false): ConverterDriver => ({
  conversions: pairs.map(([from, to]) => ({ from, to })),
  convert: async () => undefined,
  ...(describe ? { describe: async () => ({ virtualSize: 1 }) } : {}),
});

const store = (schemes: string[]): StoreDriver => ({
  schemes,
  capabilities: { readRanges: true, write: true, delete: true, list: true, presignGet: false, presignPut: false, maxObjectSize: 0 },
  open: () => {
    throw new Error("not opened in this test");
  },
});

describe("plugin registry", () => {
  it("lets a plugin loaded later take a conversion pair over, and keeps the others", () => {
    const registry = new PluginRegistry();
    const builtIn = converter([["qcow2", "raw"], ["vmdk", "raw"]], true);
    const operators = converter([["qcow2", "raw"]]);
    registry.addConverter("@imagetransfer/converter-qemu-img", builtIn);
    registry.addConverter("acme-fast-qcow2", operators);
    // The registry hands out guarded drivers: the same conversions, wrapped calls.
    expect(registry.converterFor("qcow2", "raw")?.conversions).toBe(operators.conversions);
    expect(registry.converterFor("vmdk", "raw")?.conversions).toBe(builtIn.conversions);
    expect(registry.converterFor("raw", "vhdx")).toBeUndefined();
    // Only converters that can describe a format are asked to.
    expect(registry.describerFor("qcow2")).toBeTypeOf("function");
    expect(registry.describerFor("iso")).toBeUndefined();
  });

  it("refuses a second store plugin for a scheme, naming the plugin that has it", () => {
    const registry = new PluginRegistry();
    registry.addStore("@imagetransfer/store-filesystem", store(["file"]));
    expect(() => registry.addStore("other", store(["s3", "file"]))).toThrow(/"file" is already served by plugin @imagetransfer\/store-filesystem/);
    // Nothing of the refused plugin was registered.
    expect(registry.storeDriverOf("other")).toBeUndefined();
    expect(registry.storeDriverOf("store-filesystem")?.pluginId).toBe("@imagetransfer/store-filesystem");
  });
});
