import { pickStore, storeUri } from "../store-uri.js";
import type { ImageLocation } from "../image.js";
import { imageKey, type Executor } from "./environment.js";
import { activeImage, storedCopy } from "./export.js";
import { taskFailure } from "./failure.js";
import { fanOut } from "./streams.js";

export interface CopyInput {
  stores: string[];
  allStoresMustSucceed: boolean;
}

/**
 * Copy-to: streams an active image from one of its stores into more stores, with no
 * local file, checking the bytes against the image's sha512 before the copies count.
 */
export const runCopy: Executor = async (run, env) => {
  const input = run.task.input as unknown as CopyInput;
  const image = await activeImage(env, run.task.imageId);
  const held = new Set(image.locations.filter((l) => l.status === "active").map((l) => l.store));
  const targets = input.stores
    .filter((name) => !held.has(name))
    .map((name) => {
      const store = pickStore(env.stores, name, "isDefault", env.config.region);
      return { store: store.name, instance: store.instance, key: imageKey(image.id), uri: storeUri(store, imageKey(image.id)) };
    });
  if (targets.length === 0) return { imageId: image.id, storeUris: [] };

  const source = storedCopy(env, image);
  const stream = await source.store.instance.read(source.key, { signal: run.signal });
  const copied = await fanOut(stream, targets, { signal: run.signal, onBytes: (done) => run.progress("copying", done, image.size) });
  const succeeded = targets.filter((_, i) => copied.outcomes[i]!.status === "fulfilled");
  const failed = targets.filter((_, i) => copied.outcomes[i]!.status === "rejected").map((t) => t.store);
  if (copied.sha512 !== image.osHashValue || succeeded.length === 0 || (input.allStoresMustSucceed && failed.length > 0)) {
    await Promise.allSettled(succeeded.map((t) => t.instance.delete(t.key)));
    if (copied.sha512 !== image.osHashValue) {
      throw taskFailure("CHECKSUM_MISMATCH", `the copy read from ${source.uri} does not match the image's sha512; nothing was copied`);
    }
    throw taskFailure("STORE_FAILED", `could not copy the image to ${failed.join(", ")}`);
  }
  const added: ImageLocation[] = succeeded.map((t) => ({ store: t.store, uri: t.uri, status: "active" }));
  const current = await env.repository.findImage(image.id);
  await env.repository.updateImage(image.id, {
    expect: ["active"],
    patch: { locations: [...(current?.locations ?? image.locations).filter((l) => !succeeded.some((t) => t.store === l.store)), ...added] },
  });
  return { imageId: image.id, storeUris: added.map((l) => l.uri), ...(failed.length > 0 ? { failedStores: failed } : {}) };
};
