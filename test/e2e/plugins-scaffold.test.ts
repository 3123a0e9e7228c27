// `itx plugins new`: the projects it creates build with tsc and pass the conformance kit out
// of the box, from outside this repository (the host package linked into node_modules, no
// network), and a real server loads them with --plugins-dir.
import { execFile } from "node:child_process";
import { mkdir, mkdtemp, readFile, rm, symlink } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { PLUGIN_API_VERSION } from "../../src/plugins/plugin-api.js";
import { ensureBuilt, repoRoot, runCli, runCliJson, spawnServer, type ServerProcess } from "../helpers/built-cli.js";

const run = promisify(execFile);
let dir: string;
let server: ServerProcess | undefined;

beforeAll(async () => {
  await ensureBuilt();
  dir = await mkdtemp(join(tmpdir(), "itx-scaffold-"));
});
afterAll(async () => {
  await server?.stop();
  if (dir !== undefined) await rm(dir, { recursive: true, force: true });
});

/** What `npm install` would give the project, as links to this checkout: the host package and its tools. */
async function linkDependencies(project: string): Promise<void> {
  await mkdir(join(project, "node_modules", "@types"), { recursive: true });
  await symlink(repoRoot, join(project, "node_modules", "imagetransfer"));
  await symlink(join(repoRoot, "node_modules/@types/node"), join(project, "node_modules/@types/node"));
}

/** Builds the project with tsc and runs its own test file with vitest; returns vitest's JSON report. */
async function buildAndTest(project: string) {
  await run(process.execPath, [join(repoRoot, "node_modules/typescript/bin/tsc"), "-p", project]).catch((err: Error & { stdout?: string }) => {
    throw new Error(`tsc failed in ${project}: ${err.stdout ?? err.message}`);
  });
  const results = join(project, "results.json");
  await run(process.execPath, [join(repoRoot, "node_modules/vitest/vitest.mjs"), "run", "--root", project, "--reporter=json", `--outputFile=${results}`], {
    cwd: project,
    maxBuffer: 16 * 1024 * 1024,
  }).catch((err: Error & { stderr?: string }) => {
    throw new Error(`the project's tests failed: ${err.stderr?.slice(-3000) ?? err.message}`);
  });
  return JSON.parse(await readFile(results, "utf8")) as { numPassedTests: number; numFailedTests: number; numTotalTests: number };
}

describe("itx plugins new", () => {
  it.each([
    ["store", "acme-store", 20],
    ["converter", "acme-converter", 3],
  ] as const)("creates a %s project that builds and passes the conformance kit", async (kind, name, minimumTests) => {
    const project = join(dir, "plugins", name);
    const created = await runCli(["plugins", "new", kind, name, "--dir", project]);
    expect(created.stderr).toBe("");
    expect(created.code).toBe(0);
    expect(created.stdout).toContain(`created ${kind} plugin ${name}`);
    const manifest = JSON.parse(await readFile(join(project, "package.json"), "utf8"));
    expect(manifest).toMatchObject({ name, type: "module", imageTransfer: { kind, apiVersion: PLUGIN_API_VERSION, entry: "./dist/index.js" } });
    expect(await readFile(join(project, "README.md"), "utf8")).toContain(`itx plugins new ${kind} ${name}`);

    await linkDependencies(project);
    const report = await buildAndTest(project);
    expect(report.numFailedTests).toBe(0);
    expect(report.numPassedTests).toBe(report.numTotalTests);
    expect(report.numPassedTests).toBeGreaterThanOrEqual(minimumTests);
  }, 300_000);

  it("refuses to overwrite a folder, and refuses unknown kinds and bad names, saying why", async () => {
    const existing = join(dir, "taken");
    await mkdir(existing);
    const taken = await runCli(["plugins", "new", "store", "taken", "--dir", existing]);
    expect(taken.code).toBe(1);
    expect(taken.stderr).toBe(`itx: already_exists: ${existing} already exists; choose another name or --dir\n`);
    const kind = await runCli(["plugins", "new", "exporter", "x", "--dir", join(dir, "x")]);
    expect(kind.code).toBe(2);
    expect(kind.stderr).toContain('plugin kind must be "store" or "converter", not "exporter"');
    const badName = await runCli(["plugins", "new", "store", "Bad Name", "--dir", join(dir, "y")]);
    expect(badName.code).toBe(2);
    expect(badName.stderr).toContain('"Bad Name" is not a valid npm package name');
  });

  it("a server started with --plugins-dir loads both projects, and `itx plugins list` shows them", async () => {
    server = await spawnServer(["--plugins-dir", join(dir, "plugins")]);
    const { plugins } = await runCliJson(["plugins", "list"], { env: { ITX_SERVER: server.url } });
    for (const [name, kind] of [["acme-store", "STORE"], ["acme-converter", "CONVERTER"]]) {
      expect(plugins, server.log().slice(-2000)).toContainEqual(expect.objectContaining({
        id: name,
        kind: `PLUGIN_KIND_${kind}`,
        state: "PLUGIN_STATE_LOADED",
        path: join(dir, "plugins", name!),
      }));
    }
    const table = await runCli(["plugins", "list"], { env: { ITX_SERVER: server.url } });
    expect(table.stdout).toMatch(new RegExp(`acme-converter\\s+converter\\s+0\\.1\\.0\\s+${PLUGIN_API_VERSION.replace(".", "\\.")}\\s+loaded\\s+0\\s+`));
  });
});
