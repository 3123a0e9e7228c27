import { open, rm } from "node:fs/promises";
import { isPluginFailure } from "../../plugins/guard.js";
import type { TransferEnvironment } from "./environment.js";
import { taskFailure } from "./failure.js";

/** How each compression an upload may arrive in begins. */
const MAGIC: Array<[compression: string, magic: Buffer]> = [
  ["gzip", Buffer.from([0x1f, 0x8b])],
  ["xz", Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00])],
  ["zstd", Buffer.from([0x28, 0xb5, 0x2f, 0xfd])],
  ["zip", Buffer.from([0x50, 0x4b, 0x03, 0x04])],
];

/** The compression a file's first bytes announce, if any. */
export async function compressionOf(path: string): Promise<string | undefined> {
  const file = await open(path, "r");
  try {
    const { buffer, bytesRead } = await file.read(Buffer.alloc(8), 0, 8, 0);
    return MAGIC.find(([, magic]) => bytesRead >= magic.length && buffer.subarray(0, magic.length).equals(magic))?.[0];
  } finally {
    await file.close();
  }
}

/**
 * Decompresses a compressed upload into `outputPath` through the converter advertising
 * (compression -> "any"), at most `maxBytes` of it; returns whether it did. Without such a
 * converter, or for an upload that is not compressed, nothing happens and the inspector
 * judges the upload as it is.
 */
export async function decompressUpload(
  env: TransferEnvironment,
  job: { inputPath: string; outputPath: string; maxBytes: number; signal: AbortSignal },
  onProgress: (done: number, total: number) => void,
): Promise<boolean> {
  const compression = await compressionOf(job.inputPath);
  const converter = compression && env.plugins.converterFor(compression, "any");
  if (!converter) return false;
  const { signal, inputPath, outputPath, maxBytes } = job;
  try {
    await converter.convert({ from: compression, to: "any", inputPath, outputPath, maxOutputBytes: maxBytes, signal, onProgress });
  } catch (err) {
    await rm(outputPath, { force: true });
    signal.throwIfAborted();
    if (isPluginFailure(err)) throw err;
    if ((err as { code?: unknown }).code === "OUTPUT_TOO_LARGE") {
      throw taskFailure("DECOMPRESSED_TOO_LARGE", `the ${compression} upload decompresses to more than the limit of ${maxBytes} bytes`, err);
    }
    const message = String((err as Error).message).replaceAll(inputPath, "the upload").replaceAll(outputPath, "the image");
    throw taskFailure("INVALID_IMAGE", `the ${compression} upload cannot be decompressed: ${message}`, err);
  }
  await rm(inputPath, { force: true });
  return true;
}
