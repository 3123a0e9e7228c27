/**
 * The store conformance suite on store-swift, against the real Swift through its own API,
 * with 1 MiB segments so that every object over 1 MiB is a Static Large Object.
 */
import { tmpdir } from "node:os";
import plugin from "../../plugins/store-swift/index.js";
import { runStoreConformance } from "../../src/testing/index.js";
import { createContainer, removeContainer, swiftStoreOptions, uniqueContainer } from "../helpers/swift.js";

runStoreConformance({
  name: "store-swift",
  plugin,
  config: async () => {
    const container = uniqueContainer("conformance");
    await createContainer(container);
    return { name: "conformance", region: "test", options: swiftStoreOptions(container), dataDir: tmpdir() };
  },
  cleanup: (config) => removeContainer(config.options.container as string),
  // A closed port on loopback: nothing listens there.
  unavailableConfig: () => ({
    name: "unreachable",
    region: "test",
    options: swiftStoreOptions("itx-unreachable", { authUrl: "http://127.0.0.1:9/auth/v1.0", timeoutSeconds: 5 }),
    dataDir: tmpdir(),
  }),
});
