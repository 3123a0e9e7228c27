import {
  PLUGIN_API_VERSION,
  type ConverterDriver,
  type PluginDefinition,
  type RegistrationContext,
  type StoreDriver,
} from "../plugins/plugin-api.js";

/**
 * Runs a plugin's register hook with a registration context like the host's, which keeps
 * the drivers it is given instead of adding them to a registry. Log lines are dropped.
 */
export async function registerForTest(definition: PluginDefinition): Promise<{ stores: StoreDriver[]; converters: ConverterDriver[] }> {
  const stores: StoreDriver[] = [];
  const converters: ConverterDriver[] = [];
  const context: RegistrationContext = {
    pluginId: "conformance",
    hostApiVersion: PLUGIN_API_VERSION,
    logger: { info() {}, warn() {}, error() {} },
    registerStore: (driver) => void stores.push(driver),
    registerConverter: (driver) => void converters.push(driver),
  };
  await definition.register(context);
  return { stores, converters };
}
