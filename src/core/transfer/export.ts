import { stat } from "node:fs/promises";
import { join } from "node:path";
import type { DiskFormat, ImageRecord } from "../image.js";
import { pickStore, resolveStoreUri, storeUri, type StoreObject } from "../store-uri.js";
import { convert, findHoles } from "./convert.js";
import { exportKey, type Executor, type TransferEnvironment } from "./environment.js";
import { taskFailure } from "./failure.js";
import { withDeadline } from "./deadline.js";
import { refuseConverted } from "./inspection.js";
import { startHashing } from "./hashing.js";
import { fetchToFile, storeFile } from "./streams.js";

export interface ExportInput {
  diskFormat: DiskFormat;
  store: string;
}

/**
 * Export: convert an active image to the requested format, inspect the result (it must be
 * exactly that format, with nothing found) and write it to a store. An export of the same
 * image and format already in that store is reused. Past taskTimeoutSeconds the task fails.
 */
export const runExport: Executor = async (run, env) => {
  const input = run.task.input as unknown as ExportInput;
  const image = await activeImage(env, run.task.imageId);
  const target = pickStore(env.stores, input.store, "isDefault", env.config.region);
  // The stored copy already is the export in its own format, where the target store holds one.
  const stored = image.locations.find((l) => l.status === "active" && l.store === target.name);
  if (input.diskFormat === image.diskFormat && stored) return { imageId: image.id, storeUris: [stored.uri] };
  const key = exportKey(image.id, input.diskFormat);
  const uri = storeUri(target, key);
  if (await target.instance.stat(key, { signal: run.signal })) return { imageId: image.id, storeUris: [uri] };

  const source = storedCopy(env, image);
  const sourcePath = join(run.workDir, "source");
  const [outcome] = await withDeadline(run, env.config.taskTimeoutSeconds, "export", async (signal) => {
    const { verified } = await fetchVerified(env, source, image, sourcePath, signal, (done) => run.progress("fetching", done, image.size));
    // An encrypted image cannot be converted without its key: its export is the stored copy itself.
    const exportPath = image.encrypted ? sourcePath : join(run.workDir, "export");
    if (!image.encrypted) {
      try {
        await convert(
          env,
          { from: image.diskFormat ?? env.config.runtimeFormat, to: input.diskFormat, inputPath: sourcePath, outputPath: exportPath, signal },
          { bytesTotal: image.virtualSize, report: (done, total) => run.progress("converting", done, total) },
        );
        await refuseConverted(exportPath, input.diskFormat, signal, env.metrics);
      } catch (err) {
        // A corrupt copy is the likelier cause of a failed conversion, and the one to report.
        await verified;
        throw err;
      }
    }
    const size = (await stat(exportPath)).size;
    const lane = { store: target.name, instance: target.instance, key };
    // No hashes: an export records none. The work file is ours: a file store may adopt it.
    // Stored while the check may still run, and removed again if it fails, as copy-to does:
    // waiting for it first made every export whose conversion is quicker than a sha512 pass
    // (1.4-1.7 s per GiB here) wait out the rest of the hash.
    const { outcomes } = await storeFile(exportPath, [lane], { signal, hash: false, adopt: true, onBytes: (done) => run.progress("storing", done, size) });
    try {
      await verified;
    } catch (err) {
      if (outcomes[0]!.status === "fulfilled") {
        // Left there, a later export of this format would take it for done: an operator must know.
        await target.instance.delete(key).catch((error: unknown) => env.logger.error({ err: String(error), uri }, "could not remove an export that failed its check; remove it by hand"));
      }
      throw err;
    }
    return outcomes;
  });
  if (outcome!.status === "rejected") {
    throw taskFailure("STORE_FAILED", `could not write the export to ${target.name}: ${(outcome!.reason as Error).message}`);
  }
  return { imageId: image.id, storeUris: [uri] };
};

export async function activeImage(env: TransferEnvironment, imageId: string): Promise<ImageRecord> {
  const image = await env.repository.findImage(imageId);
  if (!image || image.status !== "active") {
    throw taskFailure("IMAGE_NOT_ACTIVE", `image ${imageId} is ${image?.status.toUpperCase() ?? "gone"}; only ACTIVE images can be exported or copied`);
  }
  return image;
}

/** The first of the image's active copies whose store is open. */
export function storedCopy(env: TransferEnvironment, image: ImageRecord): StoreObject {
  for (const location of image.locations.filter((l) => l.status === "active")) {
    try {
      return resolveStoreUri(env.stores, location.uri, env.config.region, "location");
    } catch {
      // That store is gone or unavailable; try the next copy.
    }
  }
  throw taskFailure("NO_USABLE_LOCATION", `none of image ${image.id}'s stored copies is in an available store`);
}

/**
 * Fetches a stored copy and checks it against the image's recorded sha512, so a corrupt copy
 * never spreads. The check runs on another thread once the copy is in `path`, alongside what
 * the caller does with it meanwhile (a conversion, a store write): the caller awaits `verified`
 * (CHECKSUM_MISMATCH) before its result counts, and removes what it wrote if the check fails.
 */
export async function fetchVerified(
  env: TransferEnvironment,
  source: StoreObject,
  image: ImageRecord,
  path: string,
  signal: AbortSignal,
  onBytes: (done: number) => void,
): Promise<{ verified: Promise<void> }> {
  const fetched = await fetchToFile(source.store.instance, source.key, path, { signal, onBytes });
  const stats = await stat(path);
  if (fetched.linked) onBytes(stats.size);
  const holes = fetched.holes ?? (await findHoles(env, path, stats, signal));
  const { digests } = await startHashing(path, ["sha512"], { signal, holes });
  const verified = digests.then(({ digests: { sha512 } }) => {
    if (sha512 !== image.osHashValue) {
      throw taskFailure("CHECKSUM_MISMATCH", `the stored copy at ${source.uri} does not match the image's sha512; it may be corrupt`);
    }
  });
  verified.catch(() => undefined); // the caller's to await; never unhandled meanwhile
  return { verified };
}
