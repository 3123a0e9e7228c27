import { guardConverter, guardStoreDriver, type PluginGuard } from "./guard.js";
import type { ConverterDriver, StoreDriver } from "./plugin-api.js";

export type PluginKind = "store" | "converter";

/** What the host found in one plugin folder, loaded or not; AdminService.ListPlugins shows it. */
export interface PluginReport {
  id: string;
  kind?: PluginKind;
  version: string;
  apiVersion: string;
  path: string;
  state: "loaded" | "failed";
  error?: string;
}

/** Limits of plugin calls, from the config; see pluginCallTimeoutSeconds there. */
export interface PluginLimits {
  callTimeoutMs: number;
  stallTimeoutMs: number;
}

/**
 * The drivers that loaded plugins registered, and a report on every plugin found. Drivers
 * are kept guarded (see guard.ts): whatever a plugin does, its failures are typed, name
 * it, and are counted here.
 */
export class PluginRegistry {
  readonly reports: PluginReport[] = [];
  private readonly stores = new Map<string, { pluginId: string; driver: StoreDriver }>();
  private readonly converters: Array<{ pluginId: string; driver: ConverterDriver }> = [];
  private readonly errorCounts = new Map<string, number>();

  constructor(private readonly limits: PluginLimits = { callTimeoutMs: 60_000, stallTimeoutMs: 300_000 }) {}

  /** How many calls of the plugin failed or timed out since start-up. */
  errorCount(pluginId: string): number {
    return this.errorCounts.get(pluginId) ?? 0;
  }

  private guardFor(pluginId: string): PluginGuard {
    return { pluginId, ...this.limits, failed: () => this.errorCounts.set(pluginId, this.errorCount(pluginId) + 1) };
  }

  report(report: PluginReport): void {
    this.reports.push(report);
  }

  /** Throws when another plugin already serves one of the driver's schemes. */
  addStore(pluginId: string, driver: StoreDriver): void {
    for (const scheme of driver.schemes) {
      const owner = this.stores.get(scheme);
      if (owner) throw new Error(`URI scheme "${scheme}" is already served by plugin ${owner.pluginId}`);
    }
    const guarded = guardStoreDriver(this.guardFor(pluginId), driver);
    for (const scheme of driver.schemes) this.stores.set(scheme, { pluginId, driver: guarded });
  }

  addConverter(pluginId: string, driver: ConverterDriver): void {
    this.converters.push({ pluginId, driver: guardConverter(this.guardFor(pluginId), driver) });
  }

  /** The store driver a plugin registered, by plugin id or by its name without an npm scope. */
  storeDriverOf(plugin: string): { pluginId: string; driver: StoreDriver } | undefined {
    return [...this.stores.values()].find((s) => s.pluginId === plugin || s.pluginId.replace(/^@[^/]+\//, "") === plugin);
  }

  /** A converter's describe(), from the last-loaded converter that reads this format and can describe it. */
  describerFor(format: string): ConverterDriver["describe"] | undefined {
    const found = this.converters.findLast(({ driver }) => driver.describe && driver.conversions.some((c) => c.from === format));
    return found?.driver.describe?.bind(found.driver);
  }

  /** A converter's findHoles(), from the last-loaded converter that has one. */
  holeFinder(): ConverterDriver["findHoles"] | undefined {
    const found = this.converters.findLast(({ driver }) => driver.findHoles);
    return found?.driver.findHoles?.bind(found.driver);
  }

  /** A converter's measure(), from the converter that handles the pair, if it can measure. */
  measurerFor(from: string, to: string): ConverterDriver["measure"] | undefined {
    const converter = this.converterFor(from, to);
    return converter?.measure?.bind(converter);
  }

  /**
   * The converter for a pair. Plugins load built-ins first, then each --plugins-dir in
   * order, and the last one loaded that handles the pair wins: an operator's plugin can
   * take a pair over from a built-in one.
   */
  converterFor(from: string, to: string): ConverterDriver | undefined {
    return this.converters.findLast(({ driver }) => driver.conversions.some((c) => c.from === from && c.to === to))?.driver;
  }
}
