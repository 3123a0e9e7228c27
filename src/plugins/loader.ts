import { existsSync } from "node:fs";
import { readdir, readFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import type { Logger } from "pino";
import {
  isPluginDefinition,
  PLUGIN_API_VERSION,
  type ConverterDriver,
  type RegistrationContext,
  type StoreDriver,
} from "./plugin-api.js";
import type { PluginKind, PluginRegistry, PluginReport } from "./registry.js";

/** The built-in plugins: plugins/ beside src/, in the source tree and in dist/ alike. */
export const builtInPluginsDir = fileURLToPath(new URL("../../plugins/", import.meta.url));

/** A plugin's register hook that has not returned by then is marked failed. */
const REGISTER_TIMEOUT_MS = 10_000;

interface Manifest {
  kind: PluginKind;
  apiVersion: string;
  entry: string;
}

/**
 * Scans each folder for plugin packages, loads them in name order and reports each to
 * the registry. A plugin that fails in any way is logged, reported with the reason and
 * skipped: one broken plugin never stops the server.
 */
export async function loadPlugins(dirs: readonly string[], registry: PluginRegistry, logger: Logger): Promise<void> {
  for (const dir of dirs) {
    let names: string[];
    try {
      names = (await readdir(dir, { withFileTypes: true })).filter((d) => d.isDirectory()).map((d) => d.name).sort();
    } catch (err) {
      logger.error({ dir, err: String(err) }, "cannot read plugins directory");
      continue;
    }
    for (const name of names) {
      const folder = resolve(dir, name);
      if (!existsSync(join(folder, "package.json"))) continue;
      const report = await loadPlugin(folder, registry, logger);
      registry.report(report);
      if (report.state === "failed") logger.error({ plugin: report.id, path: folder, reason: report.error }, "plugin skipped");
      else logger.info({ plugin: report.id, kind: report.kind, version: report.version }, "plugin loaded");
    }
  }
}

async function loadPlugin(folder: string, registry: PluginRegistry, logger: Logger): Promise<PluginReport> {
  const report: PluginReport = { id: folder, version: "", apiVersion: "", path: folder, state: "failed" };
  try {
    const pkg = JSON.parse(await readFile(join(folder, "package.json"), "utf8")) as Record<string, unknown>;
    report.id = typeof pkg.name === "string" && pkg.name !== "" ? pkg.name : folder.split("/").at(-1)!;
    report.version = typeof pkg.version === "string" ? pkg.version : "";
    const manifest = parseManifest(pkg.imageTransfer);
    report.kind = manifest.kind;
    report.apiVersion = manifest.apiVersion;
    checkApiVersion(manifest.apiVersion);

    const mod = (await import(pathToFileURL(entryPath(folder, manifest.entry)).href)) as { default?: unknown };
    const definition = mod.default;
    if (!isPluginDefinition(definition)) {
      throw new Error("entry module's default export is not a definition made with defineStorePlugin or defineConverterPlugin");
    }
    if (definition.kind !== manifest.kind) {
      throw new Error(`package.json declares kind "${manifest.kind}" but the entry defines a ${definition.kind} plugin`);
    }
    checkApiVersion(definition.apiVersion);

    // Drivers are committed only once register() has returned, so a plugin that throws
    // half-way leaves nothing registered.
    const stores: StoreDriver[] = [];
    const converters: ConverterDriver[] = [];
    const pluginLogger = logger.child({ plugin: report.id });
    const context: RegistrationContext = {
      pluginId: report.id,
      hostApiVersion: PLUGIN_API_VERSION,
      logger: {
        info: (msg, fields) => pluginLogger.info(fields ?? {}, msg),
        warn: (msg, fields) => pluginLogger.warn(fields ?? {}, msg),
        error: (msg, fields) => pluginLogger.error(fields ?? {}, msg),
      },
      registerStore: (driver) => void stores.push(driver),
      registerConverter: (driver) => void converters.push(driver),
    };
    await withTimeout(definition.register(context), REGISTER_TIMEOUT_MS, "register() did not finish");
    for (const driver of stores) validateStoreDriver(driver);
    for (const driver of stores) registry.addStore(report.id, driver);
    for (const driver of converters) registry.addConverter(report.id, driver);
    report.state = "loaded";
  } catch (err) {
    report.error = err instanceof Error ? err.message : String(err);
  }
  return report;
}

function parseManifest(value: unknown): Manifest {
  if (typeof value !== "object" || value === null) {
    throw new Error('package.json has no "imageTransfer" object');
  }
  const { kind, apiVersion, entry } = value as Record<string, unknown>;
  if (kind !== "store" && kind !== "converter") throw new Error('imageTransfer.kind must be "store" or "converter"');
  if (typeof apiVersion !== "string") throw new Error("imageTransfer.apiVersion must be a string such as \"1.0\"");
  if (typeof entry !== "string" || entry === "") throw new Error("imageTransfer.entry must name the entry module");
  return { kind, apiVersion, entry };
}

function checkApiVersion(version: string): void {
  const problem = apiVersionProblem(version, PLUGIN_API_VERSION);
  if (problem !== undefined) throw new Error(problem);
}

/**
 * Why a host providing plugin API `host` refuses a plugin that targets `version`, or
 * undefined when it loads it: same major version, and a minor version no newer than the host's.
 */
export function apiVersionProblem(version: string, host: string): string | undefined {
  const parse = (v: string) => (/^\d+\.\d+$/.test(v) ? v.split(".").map(Number) : undefined);
  const plugin = parse(version);
  if (plugin === undefined) return `plugin API version "${version}" is not MAJOR.MINOR`;
  const [major, minor] = plugin;
  const [hostMajor, hostMinor] = parse(host)!;
  if (major !== hostMajor || minor! > hostMinor!) return `plugin targets plugin API ${version}; this host provides ${host}`;
  return undefined;
}

/**
 * The entry module's path. Built-in plugins are TypeScript: run from source (tests), the
 * manifest's ./index.js exists only as ./index.ts, so fall back to it.
 */
function entryPath(folder: string, entry: string): string {
  const path = resolve(folder, entry);
  if (!path.startsWith(folder + "/")) throw new Error("imageTransfer.entry must stay inside the plugin folder");
  const ts = path.replace(/\.js$/, ".ts");
  return !existsSync(path) && existsSync(ts) && import.meta.url.endsWith(".ts") ? ts : path;
}

function validateStoreDriver(driver: StoreDriver): void {
  if (!Array.isArray(driver.schemes) || driver.schemes.length === 0 || driver.schemes.some((s) => !/^[a-z][a-z0-9+.-]*$/.test(s))) {
    throw new Error("store driver must declare lower-case URI schemes");
  }
  if (typeof driver.open !== "function" || typeof driver.capabilities !== "object") {
    throw new Error("store driver must have capabilities and an open() function");
  }
}

async function withTimeout<T>(promise: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${message} within ${ms / 1000} s`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}
