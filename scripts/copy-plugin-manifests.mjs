// tsc compiles plugins/*/index.ts to dist/plugins/*/index.js; their manifests must sit beside them.
import { cpSync, existsSync, readdirSync } from "node:fs";

for (const name of readdirSync("plugins")) {
  const manifest = `plugins/${name}/package.json`;
  if (existsSync(manifest)) cpSync(manifest, `dist/plugins/${name}/package.json`);
}
