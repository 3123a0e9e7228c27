/**
 * Disk images built at test time with the real qemu-img (Debian qemu-utils), so nothing
 * binary is committed, plus the small file tools the data-plane tests need: hashes,
 * `qemu-img info` / `compare`, and recursive listings of a folder.
 */
import { execFile } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { createReadStream } from "node:fs";
import * as fs from "node:fs/promises";
import * as path from "node:path";
import { promisify } from "node:util";

const run = promisify(execFile);

export const KiB = 1024;
export const MiB = 1024 * KiB;

/** The formats the service converts between, with qemu-img's names and the options we build them with. */
export const IMAGE_FORMATS = ["raw", "qcow2", "vmdk", "vhd", "vhdx"] as const;
export type ImageFormat = (typeof IMAGE_FORMATS)[number];

const QEMU_NAME: Record<ImageFormat, string> = { raw: "raw", qcow2: "qcow2", vmdk: "vmdk", vhd: "vpc", vhdx: "vhdx" };
const CREATE_OPTIONS: Partial<Record<ImageFormat, string>> = { vmdk: "subformat=streamOptimized" };

export function qemuName(format: ImageFormat): string {
  return QEMU_NAME[format];
}

/**
 * Runs qemu-img and returns its stdout; a non-zero exit rejects with its stderr in the message.
 * Creating a LUKS key slot times PBKDF rounds by the thread's CPU time, which the kernel counts
 * in ticks: on a busy machine a round can count 0 ms and qemu-img gives up ("Unable to get
 * accurate CPU usage"). That one failure is tried again.
 */
export async function qemuImg(args: string[]): Promise<string> {
  for (let attempt = 1; ; attempt++) {
    try {
      const { stdout } = await run("qemu-img", args, { maxBuffer: 16 * MiB });
      return stdout;
    } catch (err) {
      const e = err as Error & { stderr?: string };
      if (attempt < 5 && e.stderr?.includes("Unable to get accurate CPU usage")) continue;
      throw new Error(`qemu-img ${args.join(" ")} failed: ${e.stderr?.trim() || e.message}`);
    }
  }
}

/** Runs qemu-io (for images that need data written at chosen offsets). */
export async function qemuIo(args: string[]): Promise<void> {
  await run("qemu-io", args, { maxBuffer: 16 * MiB });
}

export interface QemuInfo {
  format: string;
  "virtual-size": number;
  "backing-filename"?: string;
  "format-specific"?: { type?: string; data?: Record<string, unknown> };
}

export async function qemuInfo(file: string, format?: ImageFormat): Promise<QemuInfo> {
  const args = ["info", "--output=json", ...(format ? ["-f", QEMU_NAME[format]] : []), file];
  return JSON.parse(await qemuImg(args)) as QemuInfo;
}

/** `qemu-img compare`: exit 0 and "Images are identical." when the guest sees the same bytes. */
export async function qemuCompare(a: string, aFormat: ImageFormat, b: string, bFormat: ImageFormat): Promise<{ code: number; output: string }> {
  try {
    const { stdout, stderr } = await run("qemu-img", ["compare", "-f", QEMU_NAME[aFormat], "-F", QEMU_NAME[bFormat], a, b]);
    return { code: 0, output: (stdout + stderr).trim() };
  } catch (err) {
    const e = err as Error & { code?: number; stdout?: string; stderr?: string };
    return { code: typeof e.code === "number" ? e.code : -1, output: `${e.stdout ?? ""}${e.stderr ?? ""}`.trim() };
  }
}

/** `qemu-img convert -O raw` of an image: what the guest sees, as the service should store it. */
export async function convertToRaw(file: string, format: ImageFormat, out: string): Promise<string> {
  await qemuImg(["convert", "-f", QEMU_NAME[format], "-O", "raw", file, out]);
  return out;
}

/** A raw disk of `size` bytes: the first half random, the second half zeros (a hole). */
export async function buildSourceRaw(file: string, size: number): Promise<string> {
  const half = Math.floor(size / 2);
  const handle = await fs.open(file, "w");
  try {
    for (let done = 0; done < half; ) {
      const chunk = randomBytes(Math.min(MiB, half - done));
      await handle.write(chunk, 0, chunk.length, done);
      done += chunk.length;
    }
    await handle.truncate(size);
  } finally {
    await handle.close();
  }
  return file;
}

/** Converts the raw file into `format` with qemu-img (vmdk streamOptimized, vhd as qemu's "vpc"). */
export async function buildImage(raw: string, format: ImageFormat, out: string): Promise<string> {
  if (format === "raw") {
    await fs.copyFile(raw, out);
    return out;
  }
  const options = CREATE_OPTIONS[format];
  await qemuImg(["convert", "-f", "raw", "-O", QEMU_NAME[format], ...(options ? ["-o", options] : []), raw, out]);
  return out;
}

/**
 * A qcow2 of `virtualSize` bytes, every cluster written with a non-zero pattern and stored
 * zstd-compressed: a small upload (well under 1 MiB per GiB) that qemu-img takes seconds to
 * convert to raw, since it inflates and writes every byte. Built in about a second per GiB.
 */
export async function buildCompressedQcow2(file: string, virtualSize: number): Promise<string> {
  const raw = `${file}.raw`;
  const handle = await fs.open(raw, "w");
  try {
    const chunk = Buffer.alloc(MiB);
    for (let done = 0; done < virtualSize; done += MiB) {
      chunk.fill(`block ${done / MiB} `);
      await handle.write(chunk, 0, Math.min(MiB, virtualSize - done), done);
    }
  } finally {
    await handle.close();
  }
  try {
    await qemuImg(["convert", "-c", "-W", "-f", "raw", "-O", "qcow2", "-o", "compression_type=zstd", raw, file]);
  } finally {
    await fs.rm(raw, { force: true });
  }
  return file;
}

export interface FileHashes {
  size: number;
  md5: string;
  sha256: string;
  sha512: string;
}

/** md5, sha256 and sha512 of a file, read as a stream. */
export async function hashFile(file: string): Promise<FileHashes> {
  const md5 = createHash("md5");
  const sha256 = createHash("sha256");
  const sha512 = createHash("sha512");
  let size = 0;
  for await (const chunk of createReadStream(file, { highWaterMark: MiB }) as AsyncIterable<Buffer>) {
    md5.update(chunk);
    sha256.update(chunk);
    sha512.update(chunk);
    size += chunk.length;
  }
  return { size, md5: md5.digest("hex"), sha256: sha256.digest("hex"), sha512: sha512.digest("hex") };
}

/** Whether two files hold the same bytes (compared chunk by chunk, without loading either). */
export async function sameBytes(a: string, b: string): Promise<boolean> {
  const [sa, sb] = await Promise.all([fs.stat(a), fs.stat(b)]);
  if (sa.size !== sb.size) return false;
  const [ha, hb] = await Promise.all([hashFile(a), hashFile(b)]);
  return ha.sha512 === hb.sha512;
}

/** Every regular file under `dir`, relative to it, sorted; [] when `dir` does not exist. */
export async function listFiles(dir: string): Promise<string[]> {
  let entries: string[];
  try {
    entries = await fs.readdir(dir, { recursive: true });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return [];
    throw err;
  }
  const files: string[] = [];
  for (const entry of entries) {
    const stats = await fs.lstat(path.join(dir, entry)).catch(() => undefined);
    if (stats && !stats.isDirectory()) files.push(entry);
  }
  return files.sort();
}
