import { resolve } from "node:path";
import type { Logger } from "pino";
import type { StoreConfigEntry } from "../config/config.js";
import type { StoreCapabilities, StoreInstance } from "../plugins/plugin-api.js";
import type { PluginRegistry } from "../plugins/registry.js";
import { traceStore } from "../tracing.js";
import { withRetries, type StoreObserver } from "./store-retry.js";

/** One configured store instance, open or not. */
export interface ConfiguredStore {
  name: string;
  plugin: string;
  region: string;
  schemes: string[];
  isDefault: boolean;
  isStaging: boolean;
  /** Encrypted qcow2 images may be stored here (as uploaded: they cannot be converted without their key). */
  allowsEncryptedImages?: boolean;
  capabilities?: StoreCapabilities;
  /** Set when the store opened; otherwise `error` says why not. */
  instance?: StoreInstance;
  error?: string;
}

/**
 * Opens the configured store instances through the drivers that plugins registered.
 * A store whose plugin is missing or whose open() fails is kept, marked unavailable
 * with the reason, so operators see it in ListStores instead of a silent gap.
 */
export async function openStores(
  entries: readonly StoreConfigEntry[],
  options: {
    region: string;
    dataDir: string;
    plugins: PluginRegistry;
    logger: Logger;
    /** Told about each store's traffic and failures, by store name. */
    observe?: (store: string) => StoreObserver;
  },
): Promise<ConfiguredStore[]> {
  const stores: ConfiguredStore[] = [];
  for (const entry of entries) {
    const store: ConfiguredStore = {
      name: entry.name,
      plugin: entry.plugin,
      region: entry.region ?? options.region,
      schemes: [],
      isDefault: entry.default,
      isStaging: entry.staging,
      allowsEncryptedImages: entry.allowEncryptedImages,
    };
    const found = options.plugins.storeDriverOf(entry.plugin);
    if (!found) {
      store.error = `store plugin "${entry.plugin}" is not loaded`;
    } else {
      store.plugin = found.pluginId;
      store.schemes = [...found.driver.schemes];
      store.capabilities = found.driver.capabilities;
      try {
        const opened = await found.driver.open({
          name: entry.name,
          region: store.region,
          options: entry.options,
          dataDir: resolve(options.dataDir),
        });
        // Each try is its own span, so retries show in traces.
        store.instance = withRetries(entry.name, traceStore(entry.name, opened), found.driver.capabilities.readRanges, undefined, options.observe?.(entry.name));
      } catch (err) {
        store.error = `cannot open: ${err instanceof Error ? err.message : String(err)}`;
      }
    }
    if (store.error) options.logger.error({ store: store.name, reason: store.error }, "store unavailable");
    stores.push(store);
  }
  return stores;
}

export async function closeStores(stores: readonly ConfiguredStore[]): Promise<void> {
  await Promise.allSettled(stores.map((s) => s.instance?.close?.()));
}
