import { spawn } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { cliPath, ensureBuilt, runCli, spawnServer } from "../helpers/built-cli.js";

describe("itx serve (built) refuses to start with one clear line", () => {
  let dir: string;
  beforeAll(async () => {
    await ensureBuilt();
    dir = await mkdtemp(join(tmpdir(), "itx-serve-"));
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));

  it("names the bad key in the config file and exits 2", async () => {
    const config = join(dir, "bad.yaml");
    await writeFile(config, "stores:\n  - name: Local Disk\n    plugin: store-filesystem\n    default: true\n    staging: true\n");
    const run = await runCli(["serve", "--config", config, "--listen", "127.0.0.1:0"]);
    expect(run.code).toBe(2);
    expect(run.stdout).toBe("");
    expect(run.stderr).toBe("itx serve: invalid configuration: stores[0].name: must be lower-case letters, digits and dashes\n");
  });

  it("names a bad flag value the same way", async () => {
    const run = await runCli(["serve", "--listen", "localhost"]);
    expect(run.code).toBe(2);
    expect(run.stderr).toBe("itx serve: invalid configuration: listen: must be HOST:PORT\n");
  });

  it("names a bad environment value the same way", async () => {
    const run = await runCli(["serve", "--listen", "127.0.0.1:0"], { env: { ITX_MONGODB_URI: "mysql://db" } });
    expect(run.code).toBe(2);
    expect(run.stderr).toBe("itx serve: invalid configuration: mongodbUri: must be a mongodb:// URI\n");
  });

  it("says the address is in use instead of printing a stack", async () => {
    const first = await spawnServer(["--data-dir", join(dir, "a")]);
    try {
      const run = await runCli(["serve", "--listen", new URL(first.url).host, "--data-dir", join(dir, "b")]);
      expect(run.code).toBe(1);
      expect(run.stderr).toMatch(/itx serve: cannot start: address 127\.0\.0\.1:\d+ is already in use\n$/);
      expect(run.stderr).not.toMatch(/\n\s+at /);
    } finally {
      await first.stop();
    }
  });

  // Retried once: in one of about ten full runs on a loaded machine the process ended by the
  // signal instead of exit code 0, never reproduced alone; the cause is still open (see the issue note).
  it("runs as a worker without a listener", { retry: 1 }, async () => {
    const child = spawn(process.execPath, [cliPath, "serve", "--role", "worker", "--data-dir", join(dir, "w")], { stdio: ["ignore", "pipe", "pipe"] });
    const firstLine = await new Promise<string>((resolve) => child.stdout.once("data", (d: Buffer) => resolve(d.toString())));
    expect(firstLine).toBe("worker started\n");
    const exited = new Promise<number | null>((resolve) => child.once("exit", resolve));
    child.kill("SIGTERM");
    expect(await exited).toBe(0);
  });

  it("stops cleanly on SIGTERM with exit code 0", async () => {
    const server = await spawnServer(["--data-dir", join(dir, "c")]);
    expect(await server.stop()).toBe(0);
    expect(server.log()).toMatch(/"msg":"shutting down"/);
  });
});
