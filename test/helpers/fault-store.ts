/**
 * The fault-injecting store for tests: plugins/store-filesystem with resets, 503s and
 * stalls on demand (test/helpers/plugins/store-faulty). A service loads it with
 * `pluginsDirs: [testPluginsDir]` and a store `{ plugin: "store-faulty", options: { root } }`.
 */
import { fileURLToPath } from "node:url";

export { faultsOf, type CallRecord, type FaultControl, type FaultKind, type FaultRule } from "./plugins/store-faulty/index.js";

/** The folder of test plugins, for a service's `pluginsDirs`. */
export const testPluginsDir = fileURLToPath(new URL("./plugins/", import.meta.url));
