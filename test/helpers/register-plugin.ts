import {
  PLUGIN_API_VERSION,
  type ConverterDriver,
  type PluginDefinition,
  type RegistrationContext,
  type StoreDriver,
} from "../../src/plugins/plugin-api.js";

/**
 * Runs a plugin's register() against a context that only records what it registers, as the
 * loader would but without a registry; log lines are dropped.
 */
export async function registerPlugin(definition: PluginDefinition): Promise<{ stores: StoreDriver[]; converters: ConverterDriver[] }> {
  const stores: StoreDriver[] = [];
  const converters: ConverterDriver[] = [];
  const context: RegistrationContext = {
    pluginId: "test",
    hostApiVersion: PLUGIN_API_VERSION,
    logger: { info() {}, warn() {}, error() {} },
    registerStore: (driver) => void stores.push(driver),
    registerConverter: (driver) => void converters.push(driver),
  };
  await definition.register(context);
  return { stores, converters };
}
