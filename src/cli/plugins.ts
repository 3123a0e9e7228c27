import { existsSync, readFileSync } from "node:fs";
import { mkdir, readFile, rm, writeFile } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import type { Command } from "commander";
import { PLUGIN_API_VERSION } from "../plugins/plugin-api.js";
import { CliError, UsageError } from "./output.js";

type PluginKind = "store" | "converter";

/** `itx plugins new store|converter NAME`: a plugin project that builds and passes the conformance kit as created. */
export function registerPlugins(program: Command): void {
  // `itx plugins` is declared with `plugins list`; `new` joins it.
  const plugins = program.commands.find((c) => c.name() === "plugins") ?? program.command("plugins");
  plugins
    .command("new")
    .description("create a plugin project: package.json manifest, TypeScript entry, conformance test, README")
    .argument("<kind>", "store or converter")
    .argument("<name>", "the package name, e.g. acme-store or @acme/itx-store")
    .option("--dir <dir>", "the folder to create (default: ./NAME without its @scope/)")
    .action(async (kind: string, name: string, opts: { dir?: string }) => {
      if (kind !== "store" && kind !== "converter") throw new UsageError(`plugin kind must be "store" or "converter", not "${kind}"`);
      if (!/^(@[a-z0-9-._~]+\/)?[a-z0-9-._~]+$/.test(name)) {
        throw new UsageError(`"${name}" is not a valid npm package name: use lower-case letters, digits, "-", "." or "_"`);
      }
      const dir = resolve(opts.dir ?? name.replace(/^@[^/]+\//, ""));
      if (existsSync(dir)) throw new CliError("already_exists", `${dir} already exists; choose another name or --dir`);
      await scaffold(kind, name, dir);
      process.stdout.write(`created ${kind} plugin ${name} in ${dir}\nnext: cd ${dir} && npm install && npm run build && npm test\n`);
    });
}

async function scaffold(kind: PluginKind, name: string, dir: string): Promise<void> {
  const host = hostPackage();
  const fill = (text: string) => text.replaceAll("__NAME__", name).replaceAll("__SCHEME__", name.replace(/^@[^/]+\//, "").replace(/[^a-z0-9+.-]/g, "-"));
  const template = async (file: string) => fill(await readFile(join(host.root, "src/cli/plugin-templates", file), "utf8"));
  const files: Record<string, string> = {
    "package.json": json({
      name,
      version: "0.1.0",
      private: true,
      type: "module",
      imageTransfer: { kind, apiVersion: PLUGIN_API_VERSION, entry: "./dist/index.js" },
      scripts: { build: "tsc", test: "vitest run" },
      peerDependencies: { imagetransfer: host.version },
      devDependencies: pick(host.devDependencies, ["@types/node", "typescript", "vitest"]),
    }),
    "tsconfig.json": json({
      compilerOptions: {
        target: "ES2022",
        module: "NodeNext",
        moduleResolution: "NodeNext",
        rootDir: "src",
        outDir: "dist",
        strict: true,
        skipLibCheck: true,
        types: ["node"],
      },
      include: ["src"],
    }),
    "src/index.ts": await template(`${kind}.ts.txt`),
    "test/plugin.test.ts": await template(`${kind}.test.ts.txt`),
    "README.md": (await template("README.md.txt")).replaceAll("__KIND__", kind),
  };
  try {
    for (const [file, text] of Object.entries(files)) {
      await mkdir(dirname(join(dir, file)), { recursive: true });
      await writeFile(join(dir, file), text, { flag: "wx" });
    }
  } catch (err) {
    // Half a project is worse than none.
    await rm(dir, { recursive: true, force: true });
    throw new CliError("internal", `could not create ${dir}: ${(err as Error).message}`);
  }
}

/** This package's root folder, version and dev dependencies: the scaffold pins the same tools. */
function hostPackage(): { root: string; version: string; devDependencies: Record<string, string> } {
  for (let dir = dirname(fileURLToPath(import.meta.url)); dir !== dirname(dir); dir = dirname(dir)) {
    const file = join(dir, "package.json");
    if (!existsSync(file)) continue;
    const pkg = JSON.parse(readFileSync(file, "utf8")) as { name?: string; version: string; devDependencies: Record<string, string> };
    if (pkg.name === "imagetransfer") return { root: dir, version: pkg.version, devDependencies: pkg.devDependencies };
  }
  throw new CliError("internal", "cannot find the imagetransfer package that itx belongs to");
}

function pick(versions: Record<string, string>, names: string[]): Record<string, string> {
  return Object.fromEntries(names.map((n) => [n, versions[n]!]));
}

const json = (value: unknown) => `${JSON.stringify(value, null, 2)}\n`;
