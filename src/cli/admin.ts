import type { Command } from "commander";
import {
  CollectGarbageResponseSchema,
  GetStatusResponseSchema,
  ListPluginsResponseSchema,
  ListStoresResponseSchema,
  PluginKindSchema,
  PluginState,
  PluginStateSchema,
  type Plugin,
  type Store,
} from "../gen/imagetransfer/v1/admin_pb.js";
import { addClientOptions, CALL_TIMEOUT_MS, runClient } from "./client.js";
import {
  enumName,
  formatBytes,
  formatDuration,
  formatFields,
  formatTable,
  orDash,
  printJson,
  type ClientOptions,
  type Column,
} from "./output.js";

function capabilities(store: Store): string {
  const c = store.capabilities;
  if (!c) return "-";
  const names = [
    c.readRanges && "ranges",
    c.write && "write",
    c.delete && "delete",
    c.list && "list",
    c.presignGet && "presign-get",
    c.presignPut && "presign-put",
  ].filter((n): n is string => typeof n === "string");
  if (c.maxObjectSize > 0n) names.push(`max ${formatBytes(c.maxObjectSize)}`);
  return names.length > 0 ? names.join(",") : "-";
}

const storeColumns: Column<Store>[] = [
  { header: "NAME", value: (s) => s.name },
  { header: "PLUGIN", value: (s) => s.plugin },
  { header: "REGION", value: (s) => orDash(s.region) },
  { header: "SCHEMES", value: (s) => orDash(s.schemes.join(",")) },
  { header: "ROLE", value: (s) => orDash([s.isDefault && "default", s.isStaging && "staging"].filter(Boolean).join(",")) },
  { header: "CAPABILITIES", value: capabilities },
  { header: "STATUS", value: (s) => (s.available ? "available" : `unavailable: ${orDash(s.error)}`) },
];

const pluginColumns: Column<Plugin>[] = [
  { header: "ID", value: (p) => p.id },
  { header: "KIND", value: (p) => (p.kind === 0 ? "-" : enumName(PluginKindSchema, p.kind)) },
  { header: "VERSION", value: (p) => orDash(p.version) },
  { header: "API", value: (p) => orDash(p.apiVersion) },
  { header: "STATE", value: (p) => enumName(PluginStateSchema, p.state) },
  // Calls that failed or timed out since start-up: a misbehaving plugin shows here.
  { header: "ERRORS", value: (p) => String(p.errorCount) },
  { header: "PATH", value: (p) => orDash(p.path) },
  { header: "ERROR", value: (p) => (p.state === PluginState.FAILED ? orDash(p.error) : "") },
];

/** `itx stores list`, `itx plugins list` and `itx admin gc`: how the deployment is put together, and its upkeep. */
export function registerAdmin(program: Command): void {
  const stores = program.command("stores").description("the configured store instances");
  addClientOptions(stores.command("list").description("list the configured stores and whether each is available")).action(
    (opts: ClientOptions) =>
      runClient(opts, async ({ admin }) => {
        const response = await admin.listStores({}, { timeoutMs: CALL_TIMEOUT_MS });
        if (opts.json) return printJson(ListStoresResponseSchema, response);
        process.stdout.write(formatTable(storeColumns, response.stores));
      }),
  );

  const plugins = program.command("plugins").description("the plugins found at start-up");
  addClientOptions(plugins.command("list").description("list every plugin found at start-up; failed ones show their error")).action(
    (opts: ClientOptions) =>
      runClient(opts, async ({ admin }) => {
        const response = await admin.listPlugins({}, { timeoutMs: CALL_TIMEOUT_MS });
        if (opts.json) return printJson(ListPluginsResponseSchema, response);
        const failed = response.plugins.some((p) => p.state === PluginState.FAILED);
        // The ERROR column only when something failed, so the usual table stays narrow.
        process.stdout.write(formatTable(failed ? pluginColumns : pluginColumns.slice(0, -1), response.plugins));
      }),
  );

  const admin = program.command("admin").description("operator tasks");
  addClientOptions(admin.command("status").description("the server's version, uptime, database, stores, plugins and task counts")).action(
    (opts: ClientOptions) =>
      runClient(opts, async ({ admin: client }) => {
        const status = await client.getStatus({}, { timeoutMs: CALL_TIMEOUT_MS });
        if (opts.json) return printJson(GetStatusResponseSchema, status);
        process.stdout.write(
          formatFields([
            ["version", status.version],
            ["uptime", formatDuration(Number(status.uptimeSeconds)) ?? "-"],
            ["role", status.role],
            ["database", `${status.database}, ${status.databaseReachable ? "reachable" : "UNREACHABLE"}`],
            ["plugins", `${status.pluginsLoaded} loaded, ${status.pluginsFailed} failed`],
            ["tasks", `${status.tasksPending} pending, ${status.tasksRunning} running (${status.tasksRunningHere} here)`],
          ]),
        );
        process.stdout.write(formatTable(storeColumns, status.stores));
      }),
  );
  addClientOptions(
    admin.command("gc").description("remove abandoned uploads, data of killed and deleted images, leftover temporary files and old tasks now"),
  ).action((opts: ClientOptions) =>
    runClient(opts, async ({ admin: client }) => {
      // A sweep lists whole stores: give it longer than an ordinary call.
      const response = await client.collectGarbage({}, { timeoutMs: 10 * CALL_TIMEOUT_MS });
      if (opts.json) return printJson(CollectGarbageResponseSchema, response);
      for (const uri of response.removedObjects) process.stdout.write(`removed ${uri}\n`);
      for (const dir of response.removedWorkDirs) process.stdout.write(`removed temporary folder ${dir}\n`);
      process.stdout.write(
        `${response.removedObjects.length} objects, ${response.removedPartialWrites} partial writes, ${response.removedWorkDirs.length} temporary folders, ${response.removedTasks} finished tasks removed\n`,
      );
    }),
  );
}
