/**
 * The built-in passthrough converter: "converting" an image to the format it already has
 * moves the file (the host hands over its input), which costs nothing on one file system.
 * Across file systems it copies: a reflink (COPYFILE_FICLONE) where blocks can be shared,
 * an ordinary copy elsewhere.
 *
 * A copy in progress cannot be interrupted, so the abort signal is checked before and after
 * it; an abort during the copy waits for it to finish, removes the output and rejects with an
 * AbortError, so nothing is left half-written. Progress is reported once, as (size, size) in
 * bytes, when the copy is done. There is no describe(): the host uses another converter's.
 */
import { constants } from "node:fs";
import * as fs from "node:fs/promises";
import { defineConverterPlugin, type ConversionJob } from "../../src/plugins/plugin-api.js";

const FORMATS = ["raw", "qcow2", "vmdk", "vhd", "vhdx", "vdi", "iso"];

export default defineConverterPlugin({
  conversions: FORMATS.map((format) => ({ from: format, to: format })),
  convert,
});

async function convert(job: ConversionJob): Promise<void> {
  const { signal } = job;
  try {
    if (job.from !== job.to || !FORMATS.includes(job.from)) {
      throw new Error(`the passthrough converter cannot convert ${job.from} to ${job.to}`);
    }
    checkAborted(signal);
    await fs.rename(job.inputPath, job.outputPath).catch(async (err: NodeJS.ErrnoException) => {
      if (err.code !== "EXDEV") throw err;
      await fs.copyFile(job.inputPath, job.outputPath, constants.COPYFILE_FICLONE);
    });
    checkAborted(signal);
    const { size } = await fs.stat(job.outputPath);
    try {
      job.onProgress?.(size, size);
    } catch {
      // A failing progress callback does not fail the copy.
    }
  } catch (err) {
    await fs.rm(job.outputPath, { force: true }).catch(() => {});
    throw err;
  }
}

function checkAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) {
    const err = new Error("The operation was aborted", { cause: signal.reason });
    err.name = "AbortError";
    throw Object.assign(err, { code: "ABORT_ERR" });
  }
}
