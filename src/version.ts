import { createRequire } from "node:module";

/** The package version, from package.json: two folders above src/, three above dist/src/. */
export const VERSION = (
  createRequire(import.meta.url)(import.meta.url.includes("/dist/") ? "../../package.json" : "../package.json") as { version: string }
).version;
