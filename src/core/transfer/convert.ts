import { rename } from "node:fs/promises";
import type { ConversionJob, ImageDescription } from "../../plugins/plugin-api.js";
import type { TransferEnvironment } from "./environment.js";
import { taskFailure } from "./failure.js";

/**
 * Converts through the converter registry: the first plugin registered for the
 * (from, to) pair does the work, so a third-party plugin can take a pair over.
 * Same-format "conversions" are a rename when no plugin claims them.
 */
export async function convert(
  env: TransferEnvironment,
  job: Omit<ConversionJob, "onProgress">,
  onProgress: (done: number, total: number) => void,
): Promise<void> {
  const converter = env.plugins.converterFor(job.from, job.to);
  if (!converter) {
    if (job.from === job.to) return rename(job.inputPath, job.outputPath);
    throw taskFailure("UNSUPPORTED_CONVERSION", `no converter plugin handles ${job.from} to ${job.to}`);
  }
  onProgress(0, 100);
  try {
    await converter.convert({ ...job, onProgress });
  } catch (err) {
    job.signal?.throwIfAborted();
    throw taskFailure("CONVERSION_FAILED", `converting ${job.from} to ${job.to} failed: ${(err as Error).message}`, err);
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
    throw taskFailure("INVALID_IMAGE", `the ${format} image cannot be read: ${(err as Error).message}`, err);
  }
  if (description.backingFile) {
    throw taskFailure("UNSAFE_IMAGE", `the ${format} image refers to a backing file (${description.backingFile}); upload a self-contained image`);
  }
  if (description.dataFile) {
    throw taskFailure("UNSAFE_IMAGE", `the ${format} image keeps its data in an external file (${description.dataFile}); upload a self-contained image`);
  }
  return description;
}
