import { createHash, type Hash } from "node:crypto";
import { rename, stat } from "node:fs/promises";
import { join } from "node:path";
import { ImageInspector, isEncrypted } from "../../inspect/index.js";
import { isStoreError } from "../../plugins/plugin-api.js";
import type { DiskFormat, ImageLocation } from "../image.js";
import { resolveStoreUri, pickStore, storeUri, type StoreObject } from "../store-uri.js";
import { isDomainError } from "../errors.js";
import type { TaskResult } from "../task.js";
import { whileUnavailable } from "../retry.js";
import { convert, describeImage, findHoles, measureConversion } from "./convert.js";
import { decompressUpload } from "./decompress.js";
import { withDeadline } from "./deadline.js";
import { imageKey, isHandover, type Executor, type TaskRun, type TransferEnvironment } from "./environment.js";
import { taskFailure } from "./failure.js";
import { startHashing } from "./hashing.js";
import { inspectFile, refuseConverted, refuseUpload, sourceFormat } from "./inspection.js";
import { fetchToFile, storeFile, type StoreTarget } from "./streams.js";

/** What ImportImage records on the task for the worker. */
export interface ImportInput {
  seedUri: string;
  diskFormat?: DiskFormat;
  stores: string[];
  allStoresMustSucceed: boolean;
  expectedHash?: { algorithm: "sha256" | "sha512"; value: string };
}

/**
 * Import: fetch the seed object into the work dir (a link where the store can make one),
 * checking the caller's hash and inspecting its format on the way; refuse it if the
 * inspector found anything, convert it to the runtime format, inspect the result again,
 * then write it to every destination store while hashing it. On any failure (or past
 * taskTimeoutSeconds) the image is killed and nothing the import wrote is left behind.
 */
export const runImport: Executor = (run, env) => withDeadline(run, env.config.taskTimeoutSeconds, "import", (signal) => importImage(run, env, signal));

async function importImage(run: TaskRun, env: TransferEnvironment, signal: AbortSignal): Promise<TaskResult> {
  const input = run.task.input as unknown as ImportInput;
  const imageId = run.task.imageId;
  const { config, stores } = env;
  const written: StoreTarget[] = [];
  // An earlier attempt got as far as activating the image but not as far as saying so.
  const image = await env.repository.findImage(imageId);
  if (image?.status === "active") {
    return { imageId, storeUris: image.locations.filter((l) => l.status === "active").map((l) => l.uri) };
  }
  let source: StoreObject | undefined;
  try {
    // fetching
    source = resolveStoreUri(stores, input.seedUri, config.region);
    const info = await source.store.instance.stat(source.key, { signal });
    if (!info) throw taskFailure("SOURCE_NOT_FOUND", `nothing was uploaded to ${input.seedUri}`);
    if (info.size > config.maxImageBytes) {
      throw taskFailure("IMAGE_TOO_LARGE", `the upload is ${info.size} bytes; the limit is ${config.maxImageBytes}`);
    }
    const uploadPath = join(run.workDir, "upload");
    const expected: Hash | undefined = input.expectedHash && createHash(input.expectedHash.algorithm);
    const inspector = new ImageInspector();
    run.progress("fetching", 0, info.size);
    const onBytes = (done: number) => run.progress("fetching", done, info.size);
    const fetched = await fetchToFile(source.store.instance, source.key, uploadPath, {
      signal,
      maxBytes: config.maxImageBytes,
      hashes: expected ? [expected] : [],
      onBytes,
      onChunk: (chunk) => inspector.write(chunk),
    });
    if (input.expectedHash) {
      // A linked upload was not read on the way: it is hashed here, on a thread, its holes unread.
      const actual = fetched.linked ? await digestOf(env, uploadPath, input.expectedHash.algorithm, signal, onBytes) : expected!.digest("hex");
      if (actual !== input.expectedHash.value) {
        throw taskFailure("CHECKSUM_MISMATCH", `the upload's ${input.expectedHash.algorithm} is not the expected ${input.expectedHash.value}`);
      }
    }
    run.progress("fetching", info.size, info.size);

    // decompressing: a compressed upload is judged by the image inside it, which must fit the size limit too.
    const sourcePath = join(run.workDir, "source");
    const decompressed = await decompressUpload(env, { inputPath: uploadPath, outputPath: sourcePath, maxBytes: config.maxImageBytes, signal }, (done, total) =>
      run.progress("decompressing", done, total),
    );
    if (!decompressed) await rename(uploadPath, sourcePath);

    // inspecting: the inspector's verdict first, then qemu-img's own reading of the header as a second layer.
    // A file the inspector did not see on its way in, it reads now, seeking to what it needs.
    const report = decompressed || fetched.linked ? await inspectFile(sourcePath, signal) : inspector.finish();
    const size = report.size;
    run.progress("inspecting", 0, size);
    const targets = (input.stores.length > 0 ? input.stores : [""]).map((name) => pickStore(stores, name, "isDefault", config.region));
    const allowEncrypted = targets.every((store) => store.allowsEncryptedImages === true);
    refuseUpload(report, { declared: input.diskFormat, maxVirtualBytes: config.maxVirtualBytes, allowEncrypted }, env.metrics);
    const format = sourceFormat(report);
    // Converting an encrypted image needs its key, which the service never has: it is stored as uploaded.
    const encrypted = isEncrypted(report);
    const storedFormat = encrypted ? format : config.runtimeFormat;
    const description = await describeImage(env, sourcePath, format, signal);
    const virtualSize = description?.virtualSize ?? report.virtualSize ?? size;
    if (virtualSize > config.maxVirtualBytes) {
      throw taskFailure("VIRTUAL_SIZE_TOO_LARGE", `the disk's virtual size ${virtualSize} exceeds the limit of ${config.maxVirtualBytes}`);
    }
    // Refuse before converting, not after: a raw copy is as large as the disk; others are measured.
    const measured = encrypted ? size : config.runtimeFormat === "raw" ? virtualSize : await measureConversion(env, sourcePath, format, config.runtimeFormat, signal);
    if (measured !== undefined && measured > config.maxImageBytes) {
      throw taskFailure("IMAGE_TOO_LARGE", `stored as ${storedFormat} the image would be ${measured} bytes; the limit is ${config.maxImageBytes}`);
    }
    run.progress("inspecting", size, size);

    // converting (with its backstop), unless the image is stored as uploaded
    let runtimePath = sourcePath;
    if (!encrypted) {
      runtimePath = join(run.workDir, "runtime");
      await convert(
        env,
        { from: format, to: config.runtimeFormat, inputPath: sourcePath, outputPath: runtimePath, signal },
        { bytesTotal: virtualSize, report: (done, total) => run.progress("converting", done, total) },
      );
      await refuseConverted(runtimePath, config.runtimeFormat, signal, env.metrics);
    }

    // storing
    const lanes = targets.map((store) => ({ store: store.name, instance: store.instance, key: imageKey(imageId) }));
    const runtimeStats = await stat(runtimePath);
    const runtimeSize = runtimeStats.size;
    if (runtimeSize > config.maxImageBytes) {
      throw taskFailure("IMAGE_TOO_LARGE", `stored as ${storedFormat} the image is ${runtimeSize} bytes; the limit is ${config.maxImageBytes}`);
    }
    // The work file is ours to give away: a file store on the same file system takes it by rename.
    const stored = await storeFile(runtimePath, lanes, {
      signal,
      adopt: true,
      holes: await findHoles(env, runtimePath, runtimeStats, signal),
      onBytes: (done) => run.progress("storing", done, runtimeSize),
    });
    const locations: ImageLocation[] = [];
    const failed: string[] = [];
    stored.outcomes.forEach((outcome, i) => {
      const target = lanes[i]!;
      const store = stores.find((s) => s.name === target.store)!;
      if (outcome.status === "fulfilled") written.push(target);
      else failed.push(target.store);
      locations.push({ store: target.store, uri: storeUri(store, target.key), status: outcome.status === "fulfilled" ? "active" : "error" });
    });
    signal.throwIfAborted();
    if (written.length === 0 || (input.allStoresMustSucceed && failed.length > 0)) {
      const reasons = stored.outcomes.flatMap((o, i) => (o.status === "rejected" ? [`${lanes[i]!.store}: ${errorText(o.reason)}`] : []));
      throw taskFailure("STORE_FAILED", `could not store the image in ${failed.join(", ")}: ${reasons.join("; ")}`);
    }

    // Renewed just now, the lease cannot pass to another worker before the image is active.
    await run.renewLease();
    await whileUnavailable(() => env.repository.updateImage(imageId, {
      expect: ["importing"],
      status: "active",
      patch: {
        diskFormat: storedFormat,
        containerFormat: "bare",
        ...(encrypted && { encrypted }),
        size: stored.size,
        virtualSize,
        checksum: stored.md5,
        osHashAlgo: "sha512",
        osHashValue: stored.sha512,
        locations,
      },
    }), signal);
    await removeStagedUpload(env, source);
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
    // Data the inspector refused can never be imported: a staged copy of it goes too.
    if (source && isDomainError(err) && REFUSED_DATA.has(err.reason)) await removeStagedUpload(env, source);
    throw err;
  }
}

/** Task error reasons that mean the uploaded bytes themselves are unsafe or broken. */
const REFUSED_DATA = new Set(["UNSAFE_IMAGE", "INVALID_IMAGE", "DECOMPRESSED_TOO_LARGE"]);

/** An upload staged through a temporary URL has served its purpose; a customer's own object stays. */
async function removeStagedUpload(env: TransferEnvironment, source: StoreObject): Promise<void> {
  if (!source.store.isStaging || !source.key.startsWith("uploads/")) return;
  await source.store.instance.delete(source.key).catch((err) => env.logger.warn({ err: String(err), uri: source.uri }, "could not remove staged upload"));
}

function errorText(err: unknown): string {
  return isStoreError(err) || err instanceof Error ? err.message : String(err);
}

/** The digest of a local file, from a hashing thread that takes its holes as zeros unread. */
async function digestOf(env: TransferEnvironment, path: string, algorithm: string, signal: AbortSignal, onBytes: (done: number) => void): Promise<string> {
  const holes = await findHoles(env, path, await stat(path), signal);
  const { digests } = await startHashing(path, [algorithm], { signal, holes, onBytes });
  return (await digests).digests[algorithm]!;
}
