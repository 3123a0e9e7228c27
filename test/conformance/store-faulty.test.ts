/**
 * The fault-injecting test store, with no fault injected, is a correct store: the kit's
 * verdict, so that the faults tests see are the injected ones and nothing else.
 */
import * as fs from "node:fs/promises";
import { tmpdir } from "node:os";
import * as path from "node:path";
import plugin from "../helpers/plugins/store-faulty/index.js";
import { runStoreConformance } from "../../src/testing/index.js";

runStoreConformance({
  name: "store-faulty (test helper, no faults)",
  plugin,
  largeObjectBytes: 16 * 1024 * 1024,
  config: async () => ({
    name: "conformance-faulty",
    region: "test",
    options: { root: "objects" },
    dataDir: await fs.mkdtemp(path.join(tmpdir(), "itx-conformance-faulty-")),
  }),
  cleanup: (config) => fs.rm(config.dataDir, { recursive: true, force: true }),
});
