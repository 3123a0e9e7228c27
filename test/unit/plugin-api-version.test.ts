import { describe, expect, it } from "vitest";
import { apiVersionProblem } from "../../src/plugins/loader.js";
import { defineConverterPlugin, defineStorePlugin, PLUGIN_API_VERSION } from "../../src/plugins/plugin-api.js";

describe("plugin API version policy", () => {
  it("loads plugins of the host's major version and an equal or lower minor", () => {
    for (const version of ["1.0", "1.2", "1.3"]) expect(apiVersionProblem(version, "1.3"), version).toBeUndefined();
  });

  it("refuses a newer minor or another major, naming both versions", () => {
    expect(apiVersionProblem("1.4", "1.3")).toBe("plugin targets plugin API 1.4; this host provides 1.3");
    expect(apiVersionProblem("2.0", "1.3")).toBe("plugin targets plugin API 2.0; this host provides 1.3");
    expect(apiVersionProblem("0.9", "1.3")).toBe("plugin targets plugin API 0.9; this host provides 1.3");
    expect(apiVersionProblem("1.10", "1.9")).toMatch(/1\.10.*1\.9/); // minor versions compare as numbers
    expect(apiVersionProblem("1.9", "1.10")).toBeUndefined();
  });

  it("refuses versions that are not MAJOR.MINOR", () => {
    for (const version of ["1", "1.x", "1.0.0", "", "v1.0", " 1.0"]) {
      expect(apiVersionProblem(version, "1.3"), JSON.stringify(version)).toBe(`plugin API version "${version}" is not MAJOR.MINOR`);
    }
  });

  it("stamps definitions with this host's version, which it loads", () => {
    const store = defineStorePlugin({ schemes: ["x"], capabilities: {} as never, open: () => ({}) as never });
    const converter = defineConverterPlugin({ conversions: [], convert: async () => {} });
    expect(store.apiVersion).toBe(PLUGIN_API_VERSION);
    expect(converter.apiVersion).toBe(PLUGIN_API_VERSION);
    expect(apiVersionProblem(PLUGIN_API_VERSION, PLUGIN_API_VERSION)).toBeUndefined();
  });
});
