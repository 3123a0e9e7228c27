import * as fs from "node:fs/promises";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { findHoles } from "../../src/core/transfer/convert.js";
import type { TransferEnvironment } from "../../src/core/transfer/environment.js";
import type { ConverterDriver, FileRange } from "../../src/plugins/plugin-api.js";

const KiB = 1024;

/** An environment whose converters find holes with `finder`; warnings are collected. */
function envWith(finder: ConverterDriver["findHoles"]) {
  const warnings: string[] = [];
  const env = {
    plugins: { holeFinder: () => finder },
    logger: { warn: (_fields: unknown, message: string) => void warnings.push(message) },
  } as unknown as TransferEnvironment;
  return { env, warnings };
}

describe("findHoles", () => {
  let dir: string;
  let file: string;
  beforeAll(async () => {
    dir = await fs.mkdtemp(path.join(tmpdir(), "itx-holes-"));
    file = path.join(dir, "runtime");
    await fs.writeFile(file, Buffer.alloc(64 * KiB));
  });
  afterAll(() => fs.rm(dir, { recursive: true, force: true }));

  it("passes on the holes a converter reports", async () => {
    const holes = [{ offset: 4 * KiB, length: 8 * KiB }, { offset: 32 * KiB, length: 32 * KiB }];
    const { env, warnings } = envWith(async () => holes);
    expect(await findHoles(env, file, AbortSignal.timeout(10_000))).toEqual(holes);
    expect(warnings).toEqual([]);
  });

  it("has none without a converter that finds holes", async () => {
    expect(await findHoles(envWith(undefined).env, file, AbortSignal.timeout(10_000))).toEqual([]);
  });

  it.each<[string, unknown]>([
    ["overlapping", [{ offset: 0, length: 8 * KiB }, { offset: 4 * KiB, length: 8 * KiB }]],
    ["out of order", [{ offset: 32 * KiB, length: KiB }, { offset: 0, length: KiB }]],
    ["past the end of the file", [{ offset: 60 * KiB, length: 8 * KiB }]],
    ["empty", [{ offset: 0, length: 0 }]],
    ["not numbers", [{ offset: "0", length: KiB }]],
    ["not a list", { offset: 0, length: KiB }],
  ])("reads the whole file rather than trust holes that are %s", async (_what, reported) => {
    const { env, warnings } = envWith(async () => reported as FileRange[]);
    expect(await findHoles(env, file, AbortSignal.timeout(10_000))).toEqual([]);
    expect(warnings).toEqual([expect.stringMatching(/not holes of the file/)]);
  });

  it("reads the whole file when the converter fails, but stops when the task does", async () => {
    const { env, warnings } = envWith(async () => {
      throw new Error("qemu-img map failed");
    });
    expect(await findHoles(env, file, AbortSignal.timeout(10_000))).toEqual([]);
    expect(warnings).toEqual([expect.stringMatching(/could not find the file's holes/)]);
    const aborted = AbortSignal.abort(new Error("task cancelled"));
    await expect(findHoles(envWith(async () => Promise.reject(new Error("killed"))).env, file, aborted)).rejects.toThrow("task cancelled");
  });
});
