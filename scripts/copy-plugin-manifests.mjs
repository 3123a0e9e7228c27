// tsc compiles plugins/*/index.ts to dist/plugins/*/index.js; their manifests must sit beside them.
// A plugin that imports the host by its public name ("imagetransfer/plugin-api") and says so
// in peerDependencies finds it through a node_modules link to the package root.
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, symlinkSync } from "node:fs";

for (const name of readdirSync("plugins")) {
  const manifest = `plugins/${name}/package.json`;
  if (!existsSync(manifest)) continue;
  cpSync(manifest, `dist/plugins/${name}/package.json`);
  const link = `dist/plugins/${name}/node_modules/imagetransfer`;
  if (JSON.parse(readFileSync(manifest, "utf8")).peerDependencies?.imagetransfer && !existsSync(link)) {
    mkdirSync(`dist/plugins/${name}/node_modules`, { recursive: true });
    symlinkSync("../../../..", link);
  }
}
