/**
 * Test images for the converter suite, made with the real qemu-img (Debian's qemu-utils),
 * and the checks on a conversion's output: the host's own inspector and `qemu-img compare`.
 */
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { createReadStream } from "node:fs";
import * as fs from "node:fs/promises";
import { promisify } from "node:util";
import { assessConverted, inspectChunks, type InspectionReport } from "../inspect/index.js";
import type { FormatName } from "../plugins/plugin-api.js";

const run = promisify(execFile);
const MiB = 1024 * 1024;

/** qemu-img's name for each format the suite can build and compare; an ISO is read as raw. */
const QEMU_FORMAT: Record<string, string> = { raw: "raw", qcow2: "qcow2", vmdk: "vmdk", vhd: "vpc", vhdx: "vhdx", vdi: "vdi", iso: "raw" };
/** vhd with its exact size (not rounded to a disk geometry), so every format holds the same disk. */
const CREATE_OPTIONS: Record<string, string[]> = { vhd: ["-o", "subformat=dynamic,force_size=on"] };

export const BUILDABLE_FORMATS = Object.keys(QEMU_FORMAT);

export async function qemuImg(args: string[]): Promise<string> {
  try {
    return (await run("qemu-img", args, { maxBuffer: 16 * MiB })).stdout;
  } catch (err) {
    const e = err as Error & { stderr?: string; code?: unknown };
    if (e.code === "ENOENT") throw new Error("qemu-img not found: the converter conformance suite needs it (Debian: qemu-utils)");
    throw new Error(`qemu-img ${args.join(" ")} failed: ${e.stderr?.trim() || e.message}`);
  }
}

/**
 * A disk image of `format` holding a `size`-byte disk (a multiple of 1 MiB): random bytes
 * in the part given by `dataFraction`, zeros (a hole) after it. An ISO gets an ISO 9660
 * volume header at 32 KiB.
 */
export async function buildImage(file: string, format: FormatName, size: number, dataFraction: number): Promise<void> {
  const raw = format === "raw" || format === "iso" ? file : `${file}.raw`;
  const handle = await fs.open(raw, "w");
  try {
    const data = Math.floor((size * dataFraction) / MiB) * MiB;
    for (let done = 0; done < data; done += MiB) await handle.write(randomBytes(MiB), 0, MiB, done);
    await handle.truncate(size);
    if (format === "iso") await handle.write(isoVolumeHeader(size), 0, 4096, 0x8000);
  } finally {
    await handle.close();
  }
  if (raw === file) return;
  try {
    await qemuImg(["convert", "-f", "raw", "-O", QEMU_FORMAT[format]!, ...(CREATE_OPTIONS[format] ?? []), raw, file]);
  } finally {
    await fs.rm(raw, { force: true });
  }
}

/** An ISO 9660 primary volume descriptor spanning the whole file, then the set terminator. */
function isoVolumeHeader(size: number): Buffer {
  const header = Buffer.alloc(4096);
  header.write("\x01CD001\x01", 0, "latin1");
  header.writeUInt32LE(size / 2048, 80);
  header.writeUInt32BE(size / 2048, 84);
  header.writeUInt16LE(2048, 128);
  header.writeUInt16BE(2048, 130);
  header.write("\xffCD001\x01", 2048, "latin1");
  return header;
}

/** The disk size qemu-img reads from an image's header. */
export async function virtualSizeOf(file: string, format: FormatName): Promise<number> {
  const info = JSON.parse(await qemuImg(["info", "--output=json", "-f", QEMU_FORMAT[format]!, file])) as { "virtual-size": number };
  return info["virtual-size"];
}

/** `qemu-img compare`: undefined when the guest sees the same disk in both, else what differs. */
export async function compareImages(a: string, aFormat: FormatName, b: string, bFormat: FormatName): Promise<string | undefined> {
  try {
    await run("qemu-img", ["compare", "-f", QEMU_FORMAT[aFormat]!, "-F", QEMU_FORMAT[bFormat]!, a, b]);
    return undefined;
  } catch (err) {
    const e = err as Error & { stdout?: string; stderr?: string };
    return `${e.stdout ?? ""}${e.stderr ?? ""}`.trim() || e.message;
  }
}

/**
 * What the host's inspector makes of a converted image: the report, and why the host would
 * refuse it as `format` (undefined when it passes). The one place the suite calls the inspector.
 */
export async function inspectOutput(file: string, format: FormatName): Promise<{ report: InspectionReport; refusal?: string }> {
  const report = await inspectChunks(createReadStream(file, { highWaterMark: MiB }) as AsyncIterable<Uint8Array>);
  return { report, refusal: assessConverted(report, format)?.message };
}
