import { failedPrecondition, invalidArgument } from "./errors.js";
import type { ConfiguredStore } from "./stores.js";
import type { StoreInstance } from "../plugins/plugin-api.js";

/** An object in a configured store: what a seed URI such as file://local/uploads/X names. */
export interface StoreObject {
  store: ConfiguredStore & { instance: StoreInstance };
  key: string;
  uri: string;
}

const uriPattern = /^([a-z][a-z0-9+.-]*):\/\/([^/?#]*)\/([^?#]+)$/;

export function storeUri(store: ConfiguredStore, key: string): string {
  return `${store.schemes[0]}://${store.name}/${key}`;
}

/**
 * Resolves a caller's seed URI to an object in one of this service's stores. Only
 * configured, available stores of this service's region can be named; anything else,
 * such as a path on the service's host, is refused with the reason.
 */
export function resolveStoreUri(stores: readonly ConfiguredStore[], uri: string, region: string, field = "seed_uri"): StoreObject {
  const match = uriPattern.exec(uri);
  if (!match) throw invalidArgument(`${field} must look like SCHEME://STORE/KEY, got "${uri.slice(0, 200)}"`);
  const [, scheme, name, key] = match as unknown as [string, string, string, string];
  if (name === "") throw invalidArgument(`${field} must name a store: ${scheme}://STORE/KEY (host paths are never imported)`);
  const store = stores.find((s) => s.name === name);
  if (!store) throw invalidArgument(`${field} names store "${name}", which is not configured here; see ListStores`);
  if (!store.schemes.includes(scheme)) {
    throw invalidArgument(`${field} uses scheme "${scheme}" but store "${name}" serves ${store.schemes.join(", ") || "none"}`);
  }
  checkRegion(store, region);
  return { store: usable(store), key: decodeKey(key, field), uri };
}

/** The named store, or the one flagged `flag` when no name is given; it must be open and in this service's region. */
export function pickStore(
  stores: readonly ConfiguredStore[],
  name: string,
  flag: "isDefault" | "isStaging",
  region: string,
): ConfiguredStore & { instance: StoreInstance } {
  const store = name === "" ? stores.find((s) => s[flag]) : stores.find((s) => s.name === name);
  if (!store) throw invalidArgument(name === "" ? "no store is configured for this" : `store "${name}" is not configured here; see ListStores`);
  checkRegion(store, region);
  return usable(store);
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
