// The operator's guide lists every configuration key: a key added to the schema without a row
// in docs/operations.md fails here, so the reference cannot silently fall behind.
import { readFile } from "node:fs/promises";
import { describe, expect, it } from "vitest";
import { configSchema } from "../../src/config/config.js";

describe("docs/operations.md", () => {
  it("has a configuration-reference row for every key of the config schema", async () => {
    const guide = await readFile(new URL("../../docs/operations.md", import.meta.url), "utf8");
    const rows = guide.split("\n").filter((line) => line.startsWith("| `"));
    const documented = new Set(rows.flatMap((row) => [...row.split("|")[1]!.matchAll(/`([A-Za-z]+)`/g)].map((m) => m[1]!)));
    const missing = Object.keys(configSchema.shape).filter((key) => !documented.has(key));
    expect(missing, "keys without a row in docs/operations.md").toEqual([]);
  });
});
