import { execFile } from "node:child_process";
import { mkdir, mkdtemp, readFile, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ensureBuilt, repoRoot } from "../helpers/built-cli.js";

const run = promisify(execFile);

/**
 * A plugin author's project outside this repository: the host package installed under
 * node_modules, and a test file that imports the kit by its public name and runs both suites.
 */
const authorTest = (dist: string) => `
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { runConverterConformance, runStoreConformance } from "imagetransfer/testing";
import store from ${JSON.stringify(pathToFileURL(join(dist, "plugins/store-filesystem/index.js")).href)};
import passthrough from ${JSON.stringify(pathToFileURL(join(dist, "plugins/converter-passthrough/index.js")).href)};

runStoreConformance({
  name: "author's store",
  plugin: store,
  config: async () => ({ name: "s", region: "r", options: { root: "objects" }, dataDir: await mkdtemp(join(tmpdir(), "itx-author-")) }),
  cleanup: (config) => rm(config.dataDir, { recursive: true, force: true }),
  largeObjectBytes: 4 * 1024 * 1024,
});

runConverterConformance({
  name: "author's converter",
  plugin: passthrough,
  conversions: [{ from: "raw", to: "raw" }, { from: "qcow2", to: "qcow2" }],
  cancelImageBytes: 8 * 1024 * 1024,
});
`;

describe('the kit as "imagetransfer/testing", from a plugin author\'s own project', () => {
  let dir: string;

  beforeAll(async () => {
    await ensureBuilt();
    dir = await mkdtemp(join(tmpdir(), "itx-plugin-author-"));
    await mkdir(join(dir, "node_modules"));
    await symlink(repoRoot, join(dir, "node_modules", "imagetransfer"));
    await writeFile(join(dir, "package.json"), JSON.stringify({ name: "acme-plugin", type: "module", private: true }));
    await writeFile(join(dir, "plugin.test.js"), authorTest(join(repoRoot, "dist")));
  });
  afterAll(async () => {
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  });

  it("runs the store and converter suites, and they pass for built-in plugins", async () => {
    const results = join(dir, "results.json");
    const vitest = join(repoRoot, "node_modules/vitest/vitest.mjs");
    await run(process.execPath, [vitest, "run", "--root", dir, "--testTimeout=30000", "--reporter=json", `--outputFile=${results}`], {
      cwd: dir,
      maxBuffer: 16 * 1024 * 1024,
    }).catch(async (err: Error & { stdout?: string; stderr?: string }) => {
      throw new Error(`the author's vitest run failed: ${err.stderr?.slice(-2000) ?? err.message}`);
    });
    const report = JSON.parse(await readFile(results, "utf8")) as { numPassedTests: number; numFailedTests: number; testResults: Array<{ assertionResults: Array<{ ancestorTitles: string[] }> }> };
    expect(report.numFailedTests).toBe(0);
    const suites = new Set(report.testResults.flatMap((f) => f.assertionResults.map((a) => a.ancestorTitles[0])));
    expect(suites).toEqual(new Set(["store conformance: author's store", "converter conformance: author's converter"]));
    expect(report.numPassedTests).toBeGreaterThan(25);
  }, 240_000);
});
