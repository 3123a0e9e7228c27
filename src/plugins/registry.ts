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

/** The drivers that loaded plugins registered, and a report on every plugin found. */
export class PluginRegistry {
  readonly reports: PluginReport[] = [];
  private readonly stores = new Map<string, { pluginId: string; driver: StoreDriver }>();
  private readonly converters: Array<{ pluginId: string; driver: ConverterDriver }> = [];

  report(report: PluginReport): void {
    this.reports.push(report);
  }

  /** Throws when another plugin already serves one of the driver's schemes. */
  addStore(pluginId: string, driver: StoreDriver): void {
    for (const scheme of driver.schemes) {
      const owner = this.stores.get(scheme);
      if (owner) throw new Error(`URI scheme "${scheme}" is already served by plugin ${owner.pluginId}`);
    }
    for (const scheme of driver.schemes) this.stores.set(scheme, { pluginId, driver });
  }

  addConverter(pluginId: string, driver: ConverterDriver): void {
    this.converters.push({ pluginId, driver });
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
