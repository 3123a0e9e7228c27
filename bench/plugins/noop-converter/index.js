/**
 * A converter for benchmark B5: raw to raw by renaming the file, and a describe() that
 * reads the file's size instead of running qemu-img. Loaded after the built-ins, it takes
 * both over, so that an import of a no-op store's object spawns no process at all.
 */
import { rename, stat } from "node:fs/promises";
import { defineConverterPlugin } from "imagetransfer/plugin-api";

export default defineConverterPlugin({
  conversions: [{ from: "raw", to: "raw" }],
  async convert(job) {
    job.signal?.throwIfAborted();
    await rename(job.inputPath, job.outputPath);
    const { size } = await stat(job.outputPath);
    job.onProgress?.(size, size);
  },
  async describe(path, format, options) {
    options?.signal?.throwIfAborted();
    return { virtualSize: (await stat(path)).size };
  },
});
