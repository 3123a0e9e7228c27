/**
 * Keeps dist/ current for code that runs the built CLI outside vitest's transform: the e2e and
 * integration tests (test/helpers/built-cli.ts) and `npm run bench` (bench/run.mjs). Plain
 * Node ESM, so that the bench can import it without a TypeScript loader; ensure-built.d.mts
 * declares its exports for the tests.
 */
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdirSync, readdirSync, rmSync, statSync, utimesSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

export const repoRoot = fileURLToPath(new URL("../", import.meta.url));
export const cliPath = join(repoRoot, "dist/src/cli/main.js");

/** A failed or timed-out build: an expected failure, reported without a stack by the bench. */
export class BuildError extends Error {}

/** Shared by every vitest worker and bench run on this checkout, so that parallel callers build at most once. */
const buildLock = join(tmpdir(), `itx-e2e-build-${createHash("sha1").update(repoRoot).digest("hex").slice(0, 12)}.lock`);

/** The newest mtime of anything `npm run build` reads: src/, plugins/, package.json and tsconfig*.json. */
function newestSourceMtime() {
  let newest = 0;
  const walk = (dir) => {
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      if (entry.name === "node_modules" || entry.name.startsWith(".")) continue;
      const full = join(dir, entry.name);
      if (entry.isDirectory()) walk(full);
      else if (/\.(ts|json|mjs)$/.test(entry.name) && !entry.name.endsWith(".d.ts")) newest = Math.max(newest, statSync(full).mtimeMs);
    }
  };
  walk(join(repoRoot, "src"));
  walk(join(repoRoot, "plugins"));
  const rootFiles = readdirSync(repoRoot).filter((name) => name === "package.json" || /^tsconfig.*\.json$/.test(name));
  for (const file of rootFiles) newest = Math.max(newest, statSync(join(repoRoot, file)).mtimeMs);
  return newest;
}

/** True when dist/ is missing or older than a source, so callers would run yesterday's code. */
function buildIsStale() {
  try {
    return statSync(cliPath).mtimeMs < newestSourceMtime();
  } catch {
    return true;
  }
}

/** Takes the build lock (mkdir is atomic), breaking one left behind by a crashed worker after 5 minutes. */
async function acquireBuildLock() {
  const deadline = Date.now() + 240_000;
  for (;;) {
    try {
      mkdirSync(buildLock);
      return;
    } catch (err) {
      if (err.code !== "EEXIST") throw err;
    }
    try {
      if (Date.now() - statSync(buildLock).mtimeMs > 300_000) rmSync(buildLock, { recursive: true, force: true });
    } catch {
      // Released meanwhile.
    }
    if (Date.now() > deadline) throw new BuildError(`timed out waiting for another build (lock ${buildLock})`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

/**
 * Runs `npm run build` if dist/ is stale. `log`, if given, gets one line before a build starts.
 * @param {{ log?: (line: string) => void }} [options]
 */
export async function ensureBuilt({ log } = {}) {
  if (!buildIsStale()) return;
  await acquireBuildLock();
  try {
    // Another worker may have built while this one waited for the lock.
    if (!buildIsStale()) return;
    log?.("dist/ is missing or stale: npm run build");
    const result = spawnSync(process.platform === "win32" ? "npm.cmd" : "npm", ["run", "build"], { cwd: repoRoot, encoding: "utf8" });
    if (result.status !== 0) throw new BuildError(`npm run build failed:\n${result.stdout}\n${result.stderr}`);
    // tsc leaves unchanged outputs alone; touching the entry point marks this build as current.
    const now = new Date();
    utimesSync(cliPath, now, now);
  } finally {
    rmSync(buildLock, { recursive: true, force: true });
  }
}
