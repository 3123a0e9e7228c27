import { spawn, type ChildProcess } from "node:child_process";
import { expect } from "vitest";
import { cliPath, repoRoot } from "../../scripts/ensure-built.mjs";

/** ensureBuilt runs `npm run build` if dist/ is stale, so tests of the built CLI run the current code outside vitest's transform. */
export { cliPath, ensureBuilt, repoRoot } from "../../scripts/ensure-built.mjs";

export interface ServerProcess {
  url: string;
  process: ChildProcess;
  /** Everything the server wrote to stderr (its log). */
  log(): string;
  /** SIGTERM, then SIGKILL after 5 s; resolves with the exit code. */
  stop(): Promise<number | null>;
}

/**
 * Runs `itx serve` from dist/ on a free port and waits for its "listening on" line. Tests
 * that are not about authentication get --insecure-no-auth; with `auth: true` the server
 * authenticates as configured (with no auth settings: its local admin key).
 */
export async function spawnServer(args: string[], env: NodeJS.ProcessEnv = {}, options: { auth?: boolean } = {}): Promise<ServerProcess> {
  const auth = options.auth ? [] : ["--insecure-no-auth"];
  const child = spawn(process.execPath, [cliPath, "serve", "--listen", "127.0.0.1:0", ...auth, ...args], {
    cwd: repoRoot,
    env: { ...outsideSettings(), ITX_LOG_LEVEL: "info", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stderr = "";
  child.stderr!.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
  const url = await listeningUrl(child, () => stderr);
  return { url, process: child, log: () => stderr, stop: () => terminate(child) };
}

/** The URL from the server's "listening on URL" stdout line; rejects with its output if it exits or takes 30 s. */
function listeningUrl(child: ChildProcess, log: () => string): Promise<string> {
  return new Promise((resolve, reject) => {
    let stdout = "";
    const timer = setTimeout(() => reject(new Error(`server did not start in 30 s:\n${stdout}${log()}`)), 30_000);
    child.stdout!.on("data", (chunk: Buffer) => {
      stdout += chunk.toString();
      const match = /listening on (\S+)/.exec(stdout);
      if (match) {
        clearTimeout(timer);
        resolve(match[1]!);
      }
    });
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`server exited with ${code} before listening:\n${stdout}${log()}`));
    });
  });
}

/** SIGTERM, then SIGKILL after 5 s, so a server that hangs on shutdown cannot outlive the test run. */
function terminate(child: ChildProcess): Promise<number | null> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve(child.exitCode);
    const kill = setTimeout(() => child.kill("SIGKILL"), 5_000);
    child.once("exit", (code) => {
      clearTimeout(kill);
      resolve(code);
    });
    child.kill("SIGTERM");
  });
}

export interface CliRun {
  code: number | null;
  stdout: string;
  stderr: string;
}

export interface CliOptions {
  /** Added to this process's environment. */
  env?: NodeJS.ProcessEnv;
  /** SIGKILL after this long, so a hung command fails its test instead of the whole run. */
  timeoutMs?: number;
}

/** Runs `node dist/src/cli/main.js` to completion, as a user's shell would, and returns what it printed. */
export function runCli(args: string[], { env = {}, timeoutMs = 30_000 }: CliOptions = {}): Promise<CliRun> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [cliPath, ...args], { cwd: repoRoot, env: { ...outsideSettings(), ...env }, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    child.once("error", reject);
    child.once("close", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** Runs a command that must succeed with `--json` and parses its stdout, which must be one JSON document. */
export async function runCliJson(args: string[], options?: CliOptions): Promise<any> {
  const run = await runCli([...args, "--json"], options);
  expect(run.stderr).toBe("");
  expect(run.code).toBe(0);
  return JSON.parse(run.stdout);
}

/**
 * The environment without the service's own settings (MONGODB_URI, ITX_*): a developer's
 * shell must not point the servers and commands a test starts elsewhere than it says.
 */
function outsideSettings(): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(process.env).filter(([name]) => name !== "MONGODB_URI" && !name.startsWith("ITX_")));
}
