import * as fs from "node:fs/promises";
import { tmpdir } from "node:os";
import * as path from "node:path";
import plugin from "../../plugins/store-filesystem/index.js";
import { runStoreConformance } from "../../src/testing/index.js";

runStoreConformance({
  name: "store-filesystem",
  plugin,
  config: async () => ({
    name: "conformance",
    region: "test",
    options: { root: "objects" },
    dataDir: await fs.mkdtemp(path.join(tmpdir(), "itx-conformance-fs-")),
  }),
  cleanup: (config) => fs.rm(config.dataDir, { recursive: true, force: true }),
});
