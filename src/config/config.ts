import { readFile } from "node:fs/promises";
import { extname, resolve } from "node:path";
import { parse as parseYaml } from "yaml";
import { z } from "zod";
import { authConfigKeys } from "../auth/config-schema.js";

const storeSchema = z.strictObject({
  name: z.string().regex(/^[a-z0-9][a-z0-9-]{0,62}$/, "must be lower-case letters, digits and dashes"),
  /** The id of the store plugin, e.g. store-filesystem. */
  plugin: z.string().min(1),
  /** Defaults to the service's region. */
  region: z.string().min(1).optional(),
  options: z.record(z.string(), z.unknown()).default({}),
  default: z.boolean().default(false),
  staging: z.boolean().default(false),
  /** Imports whose every destination allows it may store encrypted qcow2 images as uploaded. */
  allowEncryptedImages: z.boolean().default(false),
});

export const configSchema = z
  .strictObject({
    listen: z.string().regex(/^(\[[0-9a-fA-F:]+\]|[^:\s]+):\d{1,5}$/, "must be HOST:PORT").default("127.0.0.1:50051"),
    dataDir: z.string().min(1).default("./var"),
    region: z.string().min(1).default("local"),
    mongodbUri: z.string().regex(/^mongodb(\+srv)?:\/\//, "must be a mongodb:// URI").optional(),
    /** A database call that waits this long for an answer fails as UNAVAILABLE (and is retried where the caller retries). */
    databaseTimeoutSeconds: z.number().min(1).max(600).default(20),
    pluginsDirs: z.array(z.string().min(1)).default([]),
    tls: z.strictObject({ cert: z.string().min(1), key: z.string().min(1) }).optional(),
    /** HOST:PORT for Prometheus metrics at /metrics, off the public listener; unset means no metrics listener. */
    metricsListen: z.string().regex(/^(\[[0-9a-fA-F:]+\]|[^:\s]+):\d{1,5}$/, "must be HOST:PORT").optional(),
    /** OTLP/HTTP traces endpoint, e.g. http://collector:4318/v1/traces; unset means no tracing (and no cost). */
    otlpEndpoint: z.url({ protocol: /^https?$/, error: "must be an http(s) URL, e.g. http://127.0.0.1:4318/v1/traces" }).optional(),
    logLevel: z.enum(["fatal", "error", "warn", "info", "debug", "trace", "silent"]).default("info"),
    /** json: one object per line, for log collectors; pretty: for a terminal. */
    logFormat: z.enum(["json", "pretty"]).default("json"),
    /** Largest request message accepted, in bytes. */
    maxMessageBytes: z.number().int().min(1024).default(4 * 1024 * 1024),
    /** How often a watcher checks the database for changes made by other processes. */
    watchPollMs: z.number().int().min(10).max(10_000).default(250),
    /** The format images are stored in for the compute service to boot. */
    runtimeFormat: z.enum(["raw", "qcow2"]).default("raw"),
    /** Largest image accepted, in bytes, as uploaded and as stored. */
    maxImageBytes: z.number().int().min(1).default(1024 ** 4),
    /** Largest virtual disk size accepted, in bytes. */
    maxVirtualBytes: z.number().int().min(1).default(1024 ** 4),
    /** Wall-clock limit of one import or export attempt; past it the task fails with TASK_TIMEOUT. */
    taskTimeoutSeconds: z.number().min(1).default(6 * 3600),
    /**
     * Limit of plugin calls that should be short (stat, delete, list, presign, open,
     * describe, measure, opening a read); past it the task fails with PLUGIN_TIMEOUT.
     * Whole reads, writes and conversions of multi-GiB images legitimately take far
     * longer, so they have no limit of their own: pluginStallTimeoutSeconds cuts them
     * only when they stop making progress.
     */
    pluginCallTimeoutSeconds: z.number().positive().default(60),
    /**
     * How long a read, write or conversion may go without progress (bytes moved, progress
     * reported, the output file growing) before it fails with PLUGIN_TIMEOUT.
     */
    pluginStallTimeoutSeconds: z.number().positive().default(300),
    /** Default lifetime of temporary upload and download URLs. */
    urlTtlSeconds: z.number().int().min(1).max(7 * 24 * 3600).default(3600),
    /** The base of the service's own temporary URLs as clients reach it; default the listener's URL. */
    publicUrl: z.url().optional(),
    /** Key for the service's own temporary URLs (hex or base64, at least 32 bytes); default a key kept in dataDir. */
    urlSigningKey: z.string().min(1).optional(),
    /**
     * What this process does: "all" serves the API and runs tasks; "api" only serves (its
     * tasks run in other processes); "worker" only runs tasks, with no listener.
     */
    role: z.enum(["all", "api", "worker"]).default("all"),
    /** How long a worker's claim on a running task lasts without renewal; a dead worker's tasks wait this long. */
    leaseSeconds: z.number().min(1).max(600).default(30),
    /** On SIGTERM, how long running tasks may go on finishing before they are handed to other workers. */
    shutdownGraceSeconds: z.number().min(0).max(3600).default(30),
    /** How often abandoned uploads, data of killed and deleted images, and old tasks are removed; 0 turns the sweep off. */
    gcIntervalSeconds: z.number().int().min(0).default(600),
    /** Finished tasks are kept this long, then removed by the sweep. */
    taskRetentionDays: z.number().min(0).default(7),
    /** Starts of one task before it fails with ATTEMPTS_EXHAUSTED. */
    maxAttempts: z.number().int().min(1).max(100).default(3),
    /** Tasks this process runs at once. */
    maxConcurrentTasks: z.number().int().min(1).max(64).default(2),
    stores: z
      .array(storeSchema)
      .default([{ name: "local", plugin: "store-filesystem", options: { root: "images" }, default: true, staging: true, allowEncryptedImages: false }]),
    ...authConfigKeys,
  })
  .superRefine((config, ctx) => {
    if (config.urlTtlSeconds > config.maxUrlTtlSeconds) {
      ctx.addIssue({ code: "custom", path: ["urlTtlSeconds"], message: `must be at most maxUrlTtlSeconds (${config.maxUrlTtlSeconds})` });
    }
    if (config.insecureNoAuth && config.auth) {
      ctx.addIssue({ code: "custom", path: ["insecureNoAuth"], message: "cannot be combined with auth settings" });
    }
    const listenerNames = new Set<string>();
    config.listeners?.forEach((listener, i) => {
      if (listenerNames.has(listener.name)) ctx.addIssue({ code: "custom", path: ["listeners", i, "name"], message: `duplicate listener name "${listener.name}"` });
      listenerNames.add(listener.name);
    });
    const names = new Set<string>();
    config.stores.forEach((store, i) => {
      if (names.has(store.name)) ctx.addIssue({ code: "custom", path: ["stores", i, "name"], message: `duplicate store name "${store.name}"` });
      names.add(store.name);
    });
    for (const flag of ["default", "staging"] as const) {
      if (config.stores.length > 0 && config.stores.filter((s) => s[flag]).length !== 1) {
        ctx.addIssue({ code: "custom", path: ["stores"], message: `exactly one store must have ${flag}: true` });
      }
    }
  });

export type Config = z.infer<typeof configSchema>;
export type StoreConfigEntry = Config["stores"][number];

/** Configuration problems stop start-up with one message that names the key. */
export class ConfigError extends Error {
  override readonly name = "ConfigError";
}

/** The environment variables read for the common keys, and the key each sets. */
export const environmentKeys = {
  ITX_LISTEN: "listen",
  ITX_DATA_DIR: "dataDir",
  ITX_REGION: "region",
  // The conventional name first, so that ITX_MONGODB_URI wins when both are set.
  MONGODB_URI: "mongodbUri",
  ITX_MONGODB_URI: "mongodbUri",
  ITX_PLUGINS_DIRS: "pluginsDirs",
  ITX_LOG_LEVEL: "logLevel",
  ITX_LOG_FORMAT: "logFormat",
  ITX_PUBLIC_URL: "publicUrl",
  ITX_ROLE: "role",
  ITX_METRICS_LISTEN: "metricsListen",
  ITX_OTLP_ENDPOINT: "otlpEndpoint",
  ITX_URL_SIGNING_KEY: "urlSigningKey",
  ITX_TLS_CERT: "tls.cert",
  ITX_TLS_KEY: "tls.key",
} as const;

/**
 * Builds the configuration: defaults, then the config file (YAML or JSON), then ITX_*
 * environment variables, then command-line overrides; later sources win.
 */
export async function loadConfig(options: {
  file?: string;
  env?: NodeJS.ProcessEnv;
  overrides?: Record<string, unknown>;
}): Promise<Config> {
  const raw: Record<string, unknown> = options.file ? await readConfigFile(options.file) : {};
  const env = options.env ?? {};
  for (const [variable, key] of Object.entries(environmentKeys)) {
    const value = env[variable];
    if (value === undefined || value === "") continue;
    setPath(raw, key, key === "pluginsDirs" ? value.split(":").filter(Boolean) : value);
  }
  for (const [key, value] of Object.entries(options.overrides ?? {})) {
    if (value !== undefined) setPath(raw, key, value);
  }
  const result = configSchema.safeParse(raw);
  if (!result.success) {
    const issue = result.error.issues[0]!;
    const key = issue.path.map((p) => (typeof p === "number" ? `[${p}]` : `.${String(p)}`)).join("").replace(/^\./, "");
    throw new ConfigError(`invalid configuration: ${key || "(top level)"}: ${issue.message}`);
  }
  return result.data;
}

async function readConfigFile(file: string): Promise<Record<string, unknown>> {
  let text: string;
  try {
    text = await readFile(resolve(file), "utf8");
  } catch (err) {
    throw new ConfigError(`cannot read config file ${file}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
  let value: unknown;
  try {
    value = extname(file) === ".json" ? JSON.parse(text) : parseYaml(text);
  } catch (err) {
    throw new ConfigError(`config file ${file} is not valid ${extname(file) === ".json" ? "JSON" : "YAML"}: ${(err as Error).message}`);
  }
  if (value === null || value === undefined) return {};
  if (typeof value !== "object" || Array.isArray(value)) throw new ConfigError(`config file ${file} must hold a mapping of keys`);
  return value as Record<string, unknown>;
}

function setPath(target: Record<string, unknown>, path: string, value: unknown): void {
  const keys = path.split(".");
  let node = target;
  for (const key of keys.slice(0, -1)) {
    if (typeof node[key] !== "object" || node[key] === null) node[key] = {};
    node = node[key] as Record<string, unknown>;
  }
  node[keys.at(-1)!] = value;
}
