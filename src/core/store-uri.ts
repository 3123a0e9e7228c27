import { failedPrecondition, invalidArgument } from "./errors.js";
import type { ConfiguredStore } from "./stores.js";
import type { StoreInstance } from "../plugins/plugin-api.js";

/** An object in a configured store: what a seed URI such as file://local/uploads/X names. */
export interface StoreObject {
  store: ConfiguredStore & { instance: StoreInstance };
  key: string;
  uri: string;
}

const schemePattern = /^([a-z][a-z0-9+.-]*):/i;
const storeKeyPattern = /^[a-z][a-z0-9+.-]*:\/\/([^/?#]*)\/([^?#]+)$/i;

/** The URI that names `key` in `store`: SCHEME://STORE/KEY, or the key itself where keys are URIs. */
export function storeUri(store: ConfiguredStore, key: string): string {
  return store.capabilities?.uriKeys ? key : `${store.schemes[0]}://${store.name}/${key}`;
}

/**
 * Resolves a caller's seed URI to an object in one of this service's stores. Only the
 * schemes of loaded store plugins are accepted, and only configured, available stores of
 * this service's region can be named. A URI names an object inside a store, never a path
 * around it: no "." or ".." segments, escaped or not. Anything else, such as a path on the
 * service's host, is refused with the reason.
 *
 * A URI in the scheme of a store whose keys are whole URIs (web downloads) is that store's
 * key as it stands; the first such store of this region serves it.
 */
export function resolveStoreUri(stores: readonly ConfiguredStore[], uri: string, region: string, field = "seed_uri"): StoreObject {
  const scheme = schemePattern.exec(uri)?.[1]?.toLowerCase();
  if (!scheme) throw invalidArgument(`${field} must look like SCHEME://STORE/KEY, got "${uri.slice(0, 200)}"`);
  const serving = stores.filter((s) => s.schemes.includes(scheme));
  if (serving.length === 0) {
    const served = [...new Set(stores.flatMap((s) => s.schemes))].join(", ") || "none";
    throw invalidArgument(`${field} uses scheme "${scheme}", which no store here serves (schemes served: ${served}); see ListStores`);
  }
  const byUri = serving.filter((s) => s.capabilities?.uriKeys);
  if (byUri.length > 0) return resolveWholeUri(byUri.find((s) => s.region === region) ?? byUri[0]!, uri, region, field);

  const match = storeKeyPattern.exec(uri);
  if (!match) throw invalidArgument(`${field} must look like ${scheme}://STORE/KEY, got "${uri.slice(0, 200)}"`);
  const [, name, rawKey] = match as unknown as [string, string, string];
  if (name === "") throw invalidArgument(`${field} must name a store: ${scheme}://STORE/KEY (host paths are never imported)`);
  const store = stores.find((s) => s.name === name);
  if (!store) throw invalidArgument(`${field} names store "${name}", which is not configured here; see ListStores`);
  if (!store.schemes.includes(scheme)) {
    throw invalidArgument(`${field} uses scheme "${scheme}" but store "${name}" serves ${store.schemes.join(", ") || "none"}`);
  }
  const key = decodeKey(rawKey, field);
  checkKey(key, field);
  checkRegion(store, region);
  return { store: usable(store), key, uri };
}

/** The named store, or the one flagged `flag` when no name is given, to write to; it must be open, writable and in this service's region. */
export function pickStore(
  stores: readonly ConfiguredStore[],
  name: string,
  flag: "isDefault" | "isStaging",
  region: string,
): ConfiguredStore & { instance: StoreInstance } {
  const store = name === "" ? stores.find((s) => s[flag]) : stores.find((s) => s.name === name);
  if (!store) throw invalidArgument(name === "" ? "no store is configured for this" : `store "${name}" is not configured here; see ListStores`);
  checkRegion(store, region);
  const open = usable(store);
  if (!open.capabilities?.write) throw failedPrecondition(`store "${store.name}" only reads; images cannot be stored there`, "STORE_READ_ONLY");
  return open;
}

function resolveWholeUri(store: ConfiguredStore, uri: string, region: string, field: string): StoreObject {
  let url: URL;
  try {
    url = new URL(uri);
  } catch {
    throw invalidArgument(`${field} is not a valid URL: "${uri.slice(0, 200)}"`);
  }
  // The seed URI is kept with the task and shown to whoever lists it.
  if (url.username !== "" || url.password !== "") {
    throw invalidArgument(`${field} must not carry credentials (user:password@host); use a URL that needs none, such as a temporary one`);
  }
  checkRegion(store, region);
  url.hash = "";
  return { store: usable(store), key: url.href, uri };
}

function checkKey(key: string, field: string): void {
  const segment = key.split("/").find((s) => s === "." || s === "..");
  if (segment !== undefined) throw invalidArgument(`${field} has a "${segment}" segment: a seed URI names an object inside a store, never a path around it`);
  if (key.includes("\0")) throw invalidArgument(`${field} has a NUL byte in its key`);
}

function checkRegion(store: ConfiguredStore, region: string): void {
  if (store.region !== region) {
    throw failedPrecondition(`store "${store.name}" is in region ${store.region}; this service works in region ${region}`, "WRONG_REGION");
  }
}

function usable(store: ConfiguredStore): ConfiguredStore & { instance: StoreInstance } {
  if (!store.instance) throw failedPrecondition(`store "${store.name}" is unavailable: ${store.error ?? "not open"}`, "STORE_UNAVAILABLE");
  return store as ConfiguredStore & { instance: StoreInstance };
}

function decodeKey(key: string, field: string): string {
  try {
    return decodeURIComponent(key);
  } catch {
    throw invalidArgument(`${field} has a badly escaped key`);
  }
}
