import { createHash, type Hash } from "node:crypto";
import { stat } from "node:fs/promises";
import { join } from "node:path";
import { detectFormat } from "../../inspect/detect.js";
import { isStoreError } from "../../plugins/plugin-api.js";
import type { DiskFormat, ImageLocation } from "../image.js";
import { resolveStoreUri, pickStore, storeUri } from "../store-uri.js";
import type { TaskResult } from "../task.js";
import { whileUnavailable } from "../retry.js";
import { convert, describeImage, measureConversion } from "./convert.js";
import { imageKey, isHandover, type Executor } from "./environment.js";
import { taskFailure } from "./failure.js";
import { downloadToFile, fanOut, fileChunks, readHeadAndTail, type StoreTarget } from "./streams.js";

/** What ImportImage records on the task for the worker. */
export interface ImportInput {
  seedUri: string;
  diskFormat?: DiskFormat;
  stores: string[];
  allStoresMustSucceed: boolean;
  expectedHash?: { algorithm: "sha256" | "sha512"; value: string };
}

/**
 * Import: fetch the seed object into the work dir (checking the caller's hash on the
 * way), inspect it, convert it to the runtime format, then write it to every
 * destination store while hashing it. On any failure the image is killed and nothing
 * the import wrote is left behind.
 */
export const runImport: Executor = async (run, env) => {
  const input = run.task.input as unknown as ImportInput;
  const imageId = run.task.imageId;
  const { config, stores } = env;
  const written: StoreTarget[] = [];
  // An earlier attempt got as far as activating the image but not as far as saying so.
  const image = await env.repository.findImage(imageId);
  if (image?.status === "active") {
    return { imageId, storeUris: image.locations.filter((l) => l.status === "active").map((l) => l.uri) };
  }
  try {
    // fetching
    const source = resolveStoreUri(stores, input.seedUri, config.region);
    const info = await source.store.instance.stat(source.key, { signal: run.signal });
    if (!info) throw taskFailure("SOURCE_NOT_FOUND", `nothing was uploaded to ${input.seedUri}`);
    if (info.size > config.maxImageBytes) {
      throw taskFailure("IMAGE_TOO_LARGE", `the upload is ${info.size} bytes; the limit is ${config.maxImageBytes}`);
    }
    const sourcePath = join(run.workDir, "source");
    const expected: Hash | undefined = input.expectedHash && createHash(input.expectedHash.algorithm);
    run.progress("fetching", 0, info.size);
    await downloadToFile(source.store.instance, source.key, sourcePath, {
      signal: run.signal,
      maxBytes: config.maxImageBytes,
      hashes: expected ? [expected] : [],
      onBytes: (done) => run.progress("fetching", done, info.size),
    });
    if (input.expectedHash && expected!.digest("hex") !== input.expectedHash.value) {
      throw taskFailure("CHECKSUM_MISMATCH", `the upload's ${input.expectedHash.algorithm} is not the expected ${input.expectedHash.value}`);
    }

    // inspecting
    const size = (await stat(sourcePath)).size;
    run.progress("inspecting", 0, size);
    const { head, tail } = await readHeadAndTail(sourcePath, size);
    const detected = detectFormat(head, tail, size);
    if (input.diskFormat && input.diskFormat !== detected.format) {
      throw taskFailure("FORMAT_MISMATCH", `the image was declared ${input.diskFormat} but its data is ${detected.format}`);
    }
    const description = await describeImage(env, sourcePath, detected.format, run.signal);
    const virtualSize = description?.virtualSize ?? detected.virtualSize ?? size;
    if (virtualSize > config.maxVirtualBytes) {
      throw taskFailure("VIRTUAL_SIZE_TOO_LARGE", `the disk's virtual size ${virtualSize} exceeds the limit of ${config.maxVirtualBytes}`);
    }
    // Refuse before converting, not after: a raw copy is as large as the disk; others are measured.
    const measured = config.runtimeFormat === "raw" ? virtualSize : await measureConversion(env, sourcePath, detected.format, config.runtimeFormat, run.signal);
    if (measured !== undefined && measured > config.maxImageBytes) {
      throw taskFailure("IMAGE_TOO_LARGE", `stored as ${config.runtimeFormat} the image would be ${measured} bytes; the limit is ${config.maxImageBytes}`);
    }
    run.progress("inspecting", size, size);

    // converting
    const runtimePath = join(run.workDir, "runtime");
    await convert(
      env,
      { from: detected.format, to: config.runtimeFormat, inputPath: sourcePath, outputPath: runtimePath, signal: run.signal },
      { bytesTotal: virtualSize, report: (done, total) => run.progress("converting", done, total) },
    );

    // storing
    const targets = (input.stores.length > 0 ? input.stores : [""]).map((name) => {
      const store = pickStore(stores, name, "isDefault", config.region);
      return { store: store.name, instance: store.instance, key: imageKey(imageId) };
    });
    const runtimeSize = (await stat(runtimePath)).size;
    if (runtimeSize > config.maxImageBytes) {
      throw taskFailure("IMAGE_TOO_LARGE", `converted to ${config.runtimeFormat} the image is ${runtimeSize} bytes; the limit is ${config.maxImageBytes}`);
    }
    const stored = await fanOut(fileChunks(runtimePath, run.signal), targets, {
      signal: run.signal,
      onBytes: (done) => run.progress("storing", done, runtimeSize),
    });
    const locations: ImageLocation[] = [];
    const failed: string[] = [];
    stored.outcomes.forEach((outcome, i) => {
      const target = targets[i]!;
      const store = stores.find((s) => s.name === target.store)!;
      if (outcome.status === "fulfilled") written.push(target);
      else failed.push(target.store);
      locations.push({ store: target.store, uri: storeUri(store, target.key), status: outcome.status === "fulfilled" ? "active" : "error" });
    });
    run.signal.throwIfAborted();
    if (written.length === 0 || (input.allStoresMustSucceed && failed.length > 0)) {
      const reasons = stored.outcomes.flatMap((o, i) => (o.status === "rejected" ? [`${targets[i]!.store}: ${errorText(o.reason)}`] : []));
      throw taskFailure("STORE_FAILED", `could not store the image in ${failed.join(", ")}: ${reasons.join("; ")}`);
    }

    // Renewed just now, the lease cannot pass to another worker before the image is active.
    await run.renewLease();
    await whileUnavailable(() => env.repository.updateImage(imageId, {
      expect: ["importing"],
      status: "active",
      patch: {
        diskFormat: config.runtimeFormat,
        containerFormat: "bare",
        size: stored.size,
        virtualSize,
        checksum: stored.md5,
        osHashAlgo: "sha512",
        osHashValue: stored.sha512,
        locations,
      },
    }), run.signal);
    // An upload staged through a temporary URL has served its purpose; a customer's own object stays.
    if (source.store.isStaging && source.key.startsWith("uploads/")) {
      await source.store.instance.delete(source.key).catch((err) => env.logger.warn({ err: String(err), uri: input.seedUri }, "could not remove staged upload"));
    }
    const result: TaskResult = { imageId, storeUris: locations.filter((l) => l.status === "active").map((l) => l.uri) };
    return failed.length > 0 ? { ...result, failedStores: failed } : result;
  } catch (err) {
    // Another worker carries on with this image: its stored copies and state are not ours to undo.
    if (isHandover(run.signal)) throw err;
    await Promise.allSettled(written.map((t) => t.instance.delete(t.key)));
    // A database outage delays this until it is back, unless the run is stopped meanwhile.
    await whileUnavailable(() => env.repository.updateImage(imageId, { expect: ["importing", "queued", "uploading"], status: "killed" }), run.signal).catch(
      () => undefined,
    );
    throw err;
  }
};

function errorText(err: unknown): string {
  return isStoreError(err) || err instanceof Error ? err.message : String(err);
}
