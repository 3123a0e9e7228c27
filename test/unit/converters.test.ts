// The qemu-img and passthrough converter plugins, against the real qemu-img; images are made at test time.
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import * as fs from "node:fs/promises";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import passthroughPlugin from "../../plugins/converter-passthrough/index.js";
import qemuImgPlugin from "../../plugins/converter-qemu-img/index.js";
import type { ConverterDriver, ConverterPluginDefinition } from "../../src/plugins/plugin-api.js";
import { registerPlugin } from "../helpers/register-plugin.js";

const run = promisify(execFile);
const MiB = 1024 * 1024;
const RAW_SIZE = 8 * MiB;
const QEMU_FORMAT: Record<string, string> = { raw: "raw", qcow2: "qcow2", vmdk: "vmdk", vhd: "vpc", vhdx: "vhdx", vdi: "vdi" };

let dir: string;
let rawFile: string;
let qemu: ConverterDriver;
let passthrough: ConverterDriver;
let counter = 0;

/** A fresh path in the temp dir. */
function tempPath(name: string): string {
  return path.join(dir, `${++counter}-${name}`);
}

async function registerDriver(plugin: ConverterPluginDefinition): Promise<ConverterDriver> {
  const { stores, converters } = await registerPlugin(plugin);
  expect(stores, "a converter plugin must not register stores").toHaveLength(0);
  expect(converters).toHaveLength(1);
  return converters[0]!;
}

async function qemuImg(...args: string[]): Promise<string> {
  return (await run("qemu-img", args, { maxBuffer: 16 * MiB })).stdout;
}

async function qemuInfo(file: string, qemuFormat: string): Promise<Record<string, any>> {
  return JSON.parse(await qemuImg("info", "--output=json", "-f", qemuFormat, file)) as Record<string, any>;
}

async function exists(file: string): Promise<boolean> {
  return fs.access(file).then(
    () => true,
    () => false,
  );
}

/** PIDs of processes whose command line matches `pattern`. */
async function pgrep(pattern: string): Promise<string[]> {
  try {
    return (await run("pgrep", ["-f", "--", pattern])).stdout.split("\n").filter(Boolean);
  } catch (err) {
    if ((err as { code?: unknown }).code === 1) return []; // no match
    throw err;
  }
}

async function rejection(promise: Promise<unknown>): Promise<Error> {
  const outcome = await promise.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(outcome, "expected a rejection").toBeInstanceOf(Error);
  return outcome as Error;
}

/** Converts with `driver`, recording the progress callbacks. */
async function convert(driver: ConverterDriver, from: string, to: string, inputPath: string, outputPath: string) {
  const progress: Array<[number, number]> = [];
  await driver.convert({ from, to, inputPath, outputPath, onProgress: (done, total) => progress.push([done, total]) });
  return progress;
}

function expectPercentProgress(progress: Array<[number, number]>): void {
  expect(progress.length).toBeGreaterThan(0);
  for (const [, total] of progress) expect(total).toBe(100);
  const done = progress.map(([d]) => d);
  expect(done).toEqual([...done].sort((a, b) => a - b));
  expect(done.at(-1)).toBe(100);
}

/** A minimal ISO 9660 image: a primary volume descriptor at 0x8000 and a terminator at 0x8800. */
function minimalIso(blocks: number): Buffer {
  const image = Buffer.alloc(blocks * 2048);
  for (const [at, type] of [
    [0x8000, 1],
    [0x8800, 255],
  ] as const) {
    image[at] = type;
    image.write("CD001", at + 1, "latin1");
    image[at + 6] = 1;
  }
  image.writeUInt32LE(blocks, 0x8050);
  image.writeUInt32BE(blocks, 0x8054);
  image.writeUInt16LE(2048, 0x8080);
  image.writeUInt16BE(2048, 0x8082);
  image.write("some data", 0x9000, "latin1");
  return image;
}

beforeAll(async () => {
  dir = await fs.mkdtemp(path.join(tmpdir(), "itx-conv-"));
  rawFile = path.join(dir, "disk.raw");
  await fs.writeFile(rawFile, Buffer.concat([randomBytes(RAW_SIZE / 2), Buffer.alloc(RAW_SIZE / 2)]));
  qemu = await registerDriver(qemuImgPlugin);
  passthrough = await registerDriver(passthroughPlugin);
});

afterAll(async () => {
  if (dir) await fs.rm(dir, { recursive: true, force: true });
});

describe("converter-qemu-img", () => {
  it("offers every conversion between different formats, iso only to raw", () => {
    const pairs = qemu.conversions.map(({ from, to }) => `${from}>${to}`);
    expect(new Set(pairs).size).toBe(pairs.length);
    const expected: string[] = [];
    for (const from of ["raw", "qcow2", "vmdk", "vhd", "vhdx", "vdi"]) {
      for (const to of ["raw", "qcow2", "vmdk", "vhd", "vhdx"]) if (from !== to) expected.push(`${from}>${to}`);
    }
    expected.push("iso>raw");
    expect(pairs.sort()).toEqual(expected.sort());
  });

  it("fails to register when qemu-img is not on PATH", async () => {
    const saved = process.env.PATH;
    process.env.PATH = path.join(dir, "no-such-dir");
    try {
      const err = await rejection(registerDriver(qemuImgPlugin));
      expect(err.message).toBe("qemu-img not found: install Debian's qemu-utils");
    } finally {
      process.env.PATH = saved;
    }
  });

  for (const format of ["qcow2", "vmdk", "vhd", "vhdx"]) {
    it(`converts raw to ${format} and back without changing a byte`, async () => {
      const converted = tempPath(`disk.${format}`);
      expectPercentProgress(await convert(qemu, "raw", format, rawFile, converted));
      await qemuImg("compare", "-q", "-f", "raw", "-F", QEMU_FORMAT[format]!, rawFile, converted);

      const back = tempPath("back.raw");
      expectPercentProgress(await convert(qemu, format, "raw", converted, back));
      expect(await qemuImg("compare", "-f", "raw", "-F", "raw", rawFile, back)).toContain("Images are identical.");
      expect((await fs.stat(back)).size).toBe(RAW_SIZE);

      const info = await qemuInfo(converted, QEMU_FORMAT[format]!);
      expect(info["virtual-size"]).toBe(RAW_SIZE);
      if (format === "vmdk") expect(info["format-specific"].data["create-type"]).toBe("streamOptimized");
      if (format === "vhd") {
        // Dynamic: a copy of the footer leads the file.
        const handle = await fs.open(converted, "r");
        const cookie = Buffer.alloc(8);
        await handle.read(cookie, 0, 8, 0);
        await handle.close();
        expect(cookie.toString("latin1")).toBe("conectix");
      }
    });
  }

  it("converts vdi to qcow2 and iso to raw", async () => {
    const vdi = tempPath("disk.vdi");
    await qemuImg("convert", "-f", "raw", "-O", "vdi", rawFile, vdi);
    const qcow2 = tempPath("from-vdi.qcow2");
    expectPercentProgress(await convert(qemu, "vdi", "qcow2", vdi, qcow2));
    await qemuImg("compare", "-q", "-f", "raw", "-F", "qcow2", rawFile, qcow2);

    const iso = tempPath("disk.iso");
    await fs.writeFile(iso, minimalIso(64));
    const raw = tempPath("from-iso.raw");
    expectPercentProgress(await convert(qemu, "iso", "raw", iso, raw));
    expect((await fs.readFile(raw)).equals(await fs.readFile(iso))).toBe(true);
  });

  it("refuses conversions it does not offer", async () => {
    for (const [from, to] of [
      ["raw", "raw"],
      ["raw", "vdi"],
      ["raw", "iso"],
      ["qcow2", "bogus"],
    ] as const) {
      const out = tempPath("refused");
      await expect(qemu.convert({ from, to, inputPath: rawFile, outputPath: out })).rejects.toThrow(
        `the qemu-img converter cannot convert ${from} to ${to}`,
      );
      expect(await exists(out)).toBe(false);
    }
  });

  it("fails on a corrupt input with qemu-img's own message and leaves no output", async () => {
    const corrupt = tempPath("corrupt.qcow2");
    await fs.writeFile(corrupt, randomBytes(MiB));
    // What qemu-img itself says about it.
    const direct = await rejection(run("qemu-img", ["convert", "-f", "qcow2", "-O", "raw", corrupt, tempPath("x.raw")]));
    const stderr = String((direct as { stderr?: unknown }).stderr).trim();
    expect(stderr).toContain("not in qcow2 format");

    const out = tempPath("corrupt-out.raw");
    const err = await rejection(qemu.convert({ from: "qcow2", to: "raw", inputPath: corrupt, outputPath: out }));
    expect(err.message.startsWith("qemu-img convert failed: ")).toBe(true);
    expect(err.message).toContain(stderr);
    expect(await exists(out)).toBe(false);
  });

  it("kills qemu-img promptly on abort and leaves no output", async () => {
    // 1 GiB, sparse, with 1 MiB of random data every 4 MiB: 256 MiB for streamOptimized to
    // deflate, which takes seconds, so the abort lands mid-conversion.
    const big = tempPath("big.raw");
    const chunk = randomBytes(MiB);
    const handle = await fs.open(big, "w");
    try {
      for (let offset = 0; offset < 1024 * MiB; offset += 4 * MiB) await handle.write(chunk, 0, MiB, offset);
      await handle.truncate(1024 * MiB);
    } finally {
      await handle.close();
    }

    const out = tempPath("abort-out.vmdk");
    const controller = new AbortController();
    const progress: number[] = [];
    let settled = false;
    const conversion = qemu
      .convert({
        from: "raw",
        to: "vmdk",
        inputPath: big,
        outputPath: out,
        signal: controller.signal,
        onProgress: (done) => progress.push(done),
      })
      .finally(() => (settled = true));

    // Wait until qemu-img runs and has started writing.
    const deadline = Date.now() + 10_000;
    while ((await pgrep(out)).length === 0 || !(await exists(out))) {
      expect(settled, "the conversion ended before it could be aborted").toBe(false);
      expect(Date.now()).toBeLessThan(deadline);
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    expect(settled).toBe(false);

    const abortedAt = Date.now();
    controller.abort(new Error("changed my mind"));
    const err = await rejection(conversion);
    expect(Date.now() - abortedAt).toBeLessThan(2000);
    expect(err.name).toBe("AbortError");
    expect(err.cause).toBe(controller.signal.reason);
    expect(await pgrep(out)).toEqual([]);
    expect(await exists(out)).toBe(false);
    expect(progress.at(-1) ?? 0).toBeLessThan(100);
  });

  it("does not start when the signal is already aborted", async () => {
    const out = tempPath("never.qcow2");
    const err = await rejection(
      qemu.convert({ from: "raw", to: "qcow2", inputPath: rawFile, outputPath: out, signal: AbortSignal.abort() }),
    );
    expect(err.name).toBe("AbortError");
    expect(await exists(out)).toBe(false);
  });

  describe("describe", () => {
    it("gives the virtual size of each format", async () => {
      expect(await qemu.describe!(rawFile, "raw")).toEqual({ virtualSize: RAW_SIZE });
      for (const [format, options] of [
        ["qcow2", []],
        ["vmdk", ["-o", "subformat=streamOptimized"]],
        ["vhd", ["-o", "force_size=on"]],
        ["vhdx", []],
        ["vdi", []],
      ] as const) {
        const file = tempPath(`describe.${format}`);
        await qemuImg("convert", "-f", "raw", "-O", QEMU_FORMAT[format]!, ...options, rawFile, file);
        expect(await qemu.describe!(file, format)).toEqual({ virtualSize: RAW_SIZE });
      }
    });

    it("reports a backing file and a data file", async () => {
      const overlay = tempPath("overlay.qcow2");
      await qemuImg("create", "-q", "-f", "qcow2", "-b", rawFile, "-F", "raw", overlay);
      expect(await qemu.describe!(overlay, "qcow2")).toEqual({ virtualSize: RAW_SIZE, backingFile: rawFile });

      // Even when the backing file is missing: qemu-img info does not open it.
      const dangling = tempPath("dangling.qcow2");
      const missing = path.join(dir, "missing.raw");
      await qemuImg("create", "-q", "-f", "qcow2", "-u", "-b", missing, "-F", "raw", dangling, "1M");
      expect(await qemu.describe!(dangling, "qcow2")).toEqual({ virtualSize: MiB, backingFile: missing });

      const external = tempPath("external.qcow2");
      const dataFile = tempPath("external-data.raw");
      await qemuImg("create", "-q", "-f", "qcow2", "-o", `data_file=${dataFile}`, external, "2M");
      expect(await qemu.describe!(external, "qcow2")).toEqual({ virtualSize: 2 * MiB, dataFile });
    });

    it("names the files a VMDK descriptor's extents would open, but not the image itself", async () => {
      const descriptor = path.join(path.dirname(rawFile), "escape.vmdk");
      await fs.writeFile(descriptor, '# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="monolithicFlat"\nRW 8 FLAT "/etc/hostname" 0\n');
      expect((await qemu.describe!(descriptor, "vmdk")).externalFiles).toEqual(["/etc/hostname"]);
      const sparse = path.join(path.dirname(rawFile), "sparse.vmdk");
      await qemu.convert({ from: "raw", to: "vmdk", inputPath: rawFile, outputPath: sparse });
      expect((await qemu.describe!(sparse, "vmdk")).externalFiles).toBeUndefined();
      await fs.rm(descriptor);
      await fs.rm(sparse);
    });

    it("takes the format as given, never probing", async () => {
      const qcow2 = tempPath("probe.qcow2");
      await qemuImg("convert", "-f", "raw", "-O", "qcow2", rawFile, qcow2);
      const { size } = await fs.stat(qcow2);
      expect(await qemu.describe!(qcow2, "raw")).toEqual({ virtualSize: size });
    });

    it("fails with qemu-img's message on a corrupt image", async () => {
      const corrupt = tempPath("corrupt-describe.qcow2");
      await fs.writeFile(corrupt, randomBytes(64 * 1024));
      const err = await rejection(qemu.describe!(corrupt, "qcow2"));
      expect(err.message).toMatch(/^qemu-img info failed: .*not in qcow2 format/s);
    });

    it("honours an aborted signal", async () => {
      const err = await rejection(qemu.describe!(rawFile, "raw", { signal: AbortSignal.abort() }));
      expect(err.name).toBe("AbortError");
    });
  });
});

describe("converter-qemu-img measure", () => {
  it("predicts the bytes a conversion to raw or qcow2 writes, and declines other targets", async () => {
    const { size } = await fs.stat(rawFile);
    expect(await qemu.measure!(rawFile, "raw", "raw")).toBe(size);
    const measured = await qemu.measure!(rawFile, "raw", "qcow2");
    const out = path.join(path.dirname(rawFile), "measured.qcow2");
    await qemu.convert({ from: "raw", to: "qcow2", inputPath: rawFile, outputPath: out });
    // What qemu-img writes fits in what it predicted (which allows for qcow2 metadata).
    const actual = (await fs.stat(out)).size;
    expect(measured).toBeGreaterThanOrEqual(actual);
    expect(measured).toBeLessThan(size + 8 * 1024 * 1024);
    await fs.rm(out);
    expect(await qemu.measure!(rawFile, "raw", "vmdk")).toBeUndefined();
  });
});

describe("converter-passthrough", () => {
  it("offers each format to itself", () => {
    expect(passthrough.conversions.map(({ from, to }) => `${from}>${to}`).sort()).toEqual(
      ["iso", "qcow2", "raw", "vdi", "vhd", "vhdx", "vmdk"].map((f) => `${f}>${f}`),
    );
    expect(passthrough.describe).toBeUndefined();
  });

  it("moves the input to the output with the bytes unchanged, and reports the size at the end", async () => {
    // The host hands its input over; work on a copy so the shared test disk stays.
    const input = tempPath("handed-over.raw");
    await fs.copyFile(rawFile, input);
    const out = tempPath("copy.raw");
    const progress = await convert(passthrough, "raw", "raw", input, out);
    expect((await fs.readFile(out)).equals(await fs.readFile(rawFile))).toBe(true);
    expect(progress).toEqual([[RAW_SIZE, RAW_SIZE]]);
    await expect(fs.stat(input)).rejects.toMatchObject({ code: "ENOENT" });
  });

  it("refuses a change of format", async () => {
    const out = tempPath("changed.qcow2");
    await expect(passthrough.convert({ from: "raw", to: "qcow2", inputPath: rawFile, outputPath: out })).rejects.toThrow(
      "the passthrough converter cannot convert raw to qcow2",
    );
    expect(await exists(out)).toBe(false);
  });

  it("honours an abort before and during the copy", async () => {
    const before = tempPath("aborted-before.raw");
    const err = await rejection(
      passthrough.convert({ from: "raw", to: "raw", inputPath: rawFile, outputPath: before, signal: AbortSignal.abort() }),
    );
    expect(err.name).toBe("AbortError");
    expect(await exists(before)).toBe(false);

    const big = tempPath("big-copy.raw");
    await fs.writeFile(big, randomBytes(64 * MiB));
    const during = tempPath("aborted-during.raw");
    const controller = new AbortController();
    const progress: number[] = [];
    const copy = passthrough.convert({
      from: "raw",
      to: "raw",
      inputPath: big,
      outputPath: during,
      signal: controller.signal,
      onProgress: (done) => progress.push(done),
    });
    controller.abort();
    const err2 = await rejection(copy);
    expect(err2.name).toBe("AbortError");
    expect(await exists(during)).toBe(false);
    expect(progress).toEqual([]);
  });
});

describe("converter-qemu-img findHoles", () => {
  it("finds the holes qemu-img leaves where a converted disk is zero, one range per run", async () => {
    const qcow2 = path.join(dir, "holes.qcow2");
    const raw = path.join(dir, "holes.raw");
    await qemu.convert({ from: "raw", to: "qcow2", inputPath: rawFile, outputPath: qcow2 });
    await qemu.convert({ from: "qcow2", to: "raw", inputPath: qcow2, outputPath: raw });
    // The source's second half is zeros: the raw output leaves it unwritten.
    expect(await qemu.findHoles!(raw)).toEqual([{ offset: RAW_SIZE / 2, length: RAW_SIZE / 2 }]);
    // rawFile itself was written in full, zeros too.
    expect(await qemu.findHoles!(rawFile)).toEqual([]);
  });

  it("honours an aborted signal", async () => {
    const err = await rejection(qemu.findHoles!(rawFile, { signal: AbortSignal.abort() }));
    expect(err.name).toBe("AbortError");
  });
});
