import { rename } from "node:fs/promises";
import type { ConversionJob, FileRange, ImageDescription } from "../../plugins/plugin-api.js";
import type { TransferEnvironment } from "./environment.js";
import { isPluginFailure } from "../../plugins/guard.js";
import { taskFailure } from "./failure.js";

/**
 * Converts through the converter registry: the first plugin registered for the
 * (from, to) pair does the work, so a third-party plugin can take a pair over.
 * Same-format "conversions" are a rename when no plugin claims them.
 */
export async function convert(
  env: TransferEnvironment,
  job: Omit<ConversionJob, "onProgress">,
  progress: { bytesTotal: number; report(bytesDone: number, bytesTotal: number): void },
): Promise<void> {
  const converter = env.plugins.converterFor(job.from, job.to);
  if (!converter) {
    if (job.from === job.to) return rename(job.inputPath, job.outputPath);
    throw taskFailure("UNSUPPORTED_CONVERSION", `no converter plugin handles ${job.from} to ${job.to}`);
  }
  // Converters count in their own units (qemu-img in percent); tasks count bytes of the disk.
  const onProgress = (done: number, total: number) =>
    progress.report(total > 0 ? Math.round((Math.min(done, total) / total) * progress.bytesTotal) : 0, progress.bytesTotal);
  onProgress(0, 1);
  try {
    await converter.convert({ ...job, onProgress });
  } catch (err) {
    job.signal?.throwIfAborted();
    if (isPluginFailure(err)) throw err;
    const message = withoutPaths((err as Error).message, [job.inputPath, job.outputPath]);
    throw taskFailure("CONVERSION_FAILED", `converting ${job.from} to ${job.to} failed: ${message}`, err);
  }
}

/**
 * Reads the image's own header through a converter that can (qemu-img), and refuses
 * images that would make a converter read other files: a backing file or an external
 * data file would copy host files into the image.
 */
export async function describeImage(
  env: TransferEnvironment,
  path: string,
  format: string,
  signal: AbortSignal,
): Promise<ImageDescription | undefined> {
  const describer = env.plugins.describerFor(format);
  if (!describer) return undefined;
  let description: ImageDescription;
  try {
    description = await describer(path, format, { signal });
  } catch (err) {
    signal.throwIfAborted();
    if (isPluginFailure(err)) throw err;
    throw taskFailure("INVALID_IMAGE", `the ${format} image cannot be read: ${withoutPaths((err as Error).message, [path])}`, err);
  }
  if (description.backingFile) {
    throw taskFailure("UNSAFE_IMAGE", `the ${format} image refers to a backing file (${description.backingFile}); upload a self-contained image`);
  }
  if (description.externalFiles?.length) {
    throw taskFailure("UNSAFE_IMAGE", `the ${format} image refers to other files (${description.externalFiles.join(", ")}); upload a self-contained image`);
  }
  if (description.dataFile) {
    throw taskFailure("UNSAFE_IMAGE", `the ${format} image keeps its data in an external file (${description.dataFile}); upload a self-contained image`);
  }
  return description;
}

/** The output size a converter predicts, or undefined when none can tell (then the stored size is checked after). */
export async function measureConversion(
  env: TransferEnvironment,
  path: string,
  from: string,
  to: string,
  signal: AbortSignal,
): Promise<number | undefined> {
  const measure = from === to ? undefined : env.plugins.measurerFor(from, to);
  try {
    return await measure?.(path, from, to, { signal });
  } catch (err) {
    signal.throwIfAborted();
    if (isPluginFailure(err)) throw err;
    throw taskFailure("INVALID_IMAGE", `the ${from} image cannot be measured: ${withoutPaths((err as Error).message, [path])}`, err);
  }
}

/**
 * Unallocated bytes below which a file's holes are not looked for: reading a few MiB of holes
 * costs less than starting a process to find them (1,000 small imports a second would start
 * 1,000 of them).
 */
const MIN_UNALLOCATED_BYTES = 64 * 1024 * 1024;

/**
 * The holes of a local file (`stats` from its stat), from a converter that can find them, for
 * hashing without reading them. None when the file has few (its allocated blocks say so), when
 * no converter can find them, when it fails, or when what it reports cannot be this file's
 * holes: the file is then read in full, which is slower but never wrong.
 */
export async function findHoles(
  env: TransferEnvironment,
  path: string,
  { size, blocks }: { size: number; blocks: number },
  signal: AbortSignal,
): Promise<FileRange[]> {
  if (size - blocks * 512 < MIN_UNALLOCATED_BYTES) return [];
  const finder = env.plugins.holeFinder();
  if (!finder) return [];
  try {
    const holes = await finder(path, { signal });
    if (areHoles(holes, size)) return holes;
    env.logger.warn({ size }, "a converter's findHoles() reported ranges that are not holes of the file; hashing reads all of it");
  } catch (err) {
    signal.throwIfAborted();
    env.logger.warn({ err: String(err) }, "could not find the file's holes; hashing reads all of it");
  }
  return [];
}

/** Ascending, not overlapping, not empty, inside the file. */
function areHoles(holes: unknown, size: number): holes is FileRange[] {
  if (!Array.isArray(holes)) return false;
  let end = 0;
  for (const hole of holes as Partial<FileRange>[]) {
    const { offset, length } = hole ?? {};
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset! < end || length! <= 0 || offset! + length! > size) return false;
    end = offset! + length!;
  }
  return true;
}

/** Tool messages quote the service's own file paths; clients see "the image" instead. */
function withoutPaths(message: string, paths: string[]): string {
  return paths.reduce((text, path) => text.replaceAll(path, "the image"), message);
}
