import * as fs from "node:fs/promises";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { findHoles } from "../../src/core/transfer/convert.js";
import type { TransferEnvironment } from "../../src/core/transfer/environment.js";
import type { ConverterDriver, FileRange } from "../../src/plugins/plugin-api.js";

const KiB = 1024;
const MiB = 1024 * KiB;

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
  /** 128 MiB, nothing allocated: worth asking about. */
  let file: string;
  const size = 128 * MiB;
  beforeAll(async () => {
    dir = await fs.mkdtemp(path.join(tmpdir(), "itx-holes-"));
    file = path.join(dir, "runtime");
    await fs.writeFile(file, "");
    await fs.truncate(file, size);
  });
  afterAll(() => fs.rm(dir, { recursive: true, force: true }));

  it("passes on the holes a converter reports", async () => {
    const holes = [{ offset: 4 * KiB, length: 8 * KiB }, { offset: 32 * KiB, length: 32 * KiB }];
    const { env, warnings } = envWith(async () => holes);
    expect(await findHoles(env, file, await fs.stat(file), AbortSignal.timeout(10_000))).toEqual(holes);
    expect(warnings).toEqual([]);
  });

  it("has none without a converter that finds holes", async () => {
    expect(await findHoles(envWith(undefined).env, file, await fs.stat(file), AbortSignal.timeout(10_000))).toEqual([]);
  });

  it("does not ask about a file with less than 64 MiB unallocated: reading those holes is cheaper", async () => {
    const dense = path.join(dir, "dense");
    await fs.writeFile(dense, Buffer.alloc(MiB, 1));
    await fs.truncate(dense, 64 * MiB);
    let asked = 0;
    const { env } = envWith(async () => {
      asked++;
      return [{ offset: MiB, length: 63 * MiB }];
    });
    expect(await findHoles(env, dense, await fs.stat(dense), AbortSignal.timeout(10_000))).toEqual([]);
    expect(asked).toBe(0);
  });

  it.each<[string, unknown]>([
    ["overlapping", [{ offset: 0, length: 8 * KiB }, { offset: 4 * KiB, length: 8 * KiB }]],
    ["out of order", [{ offset: 32 * KiB, length: KiB }, { offset: 0, length: KiB }]],
    ["past the end of the file", [{ offset: size - 4 * KiB, length: 8 * KiB }]],
    ["empty", [{ offset: 0, length: 0 }]],
    ["not numbers", [{ offset: "0", length: KiB }]],
    ["not a list", { offset: 0, length: KiB }],
  ])("reads the whole file rather than trust holes that are %s", async (_what, reported) => {
    const { env, warnings } = envWith(async () => reported as FileRange[]);
    expect(await findHoles(env, file, await fs.stat(file), AbortSignal.timeout(10_000))).toEqual([]);
    expect(warnings).toEqual([expect.stringMatching(/not holes of the file/)]);
  });

  it("reads the whole file when the converter fails, but stops when the task does", async () => {
    const { env, warnings } = envWith(async () => {
      throw new Error("qemu-img map failed");
    });
    expect(await findHoles(env, file, await fs.stat(file), AbortSignal.timeout(10_000))).toEqual([]);
    expect(warnings).toEqual([expect.stringMatching(/could not find the file's holes/)]);
    const aborted = AbortSignal.abort(new Error("task cancelled"));
    await expect(findHoles(envWith(async () => Promise.reject(new Error("killed"))).env, file, await fs.stat(file), aborted)).rejects.toThrow("task cancelled");
  });
});
