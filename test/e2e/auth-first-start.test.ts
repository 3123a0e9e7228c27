/**
 * First start without auth settings, as a user would do it with the built `itx`: the
 * server makes a local admin API key in its data dir (mode 0600) and says where, and
 * the CLI finds it through the same data-dir rules as `itx serve`; --token and ITX_TOKEN
 * take precedence. Tokens never reach the server's log. --insecure-no-auth warns.
 */
import { randomBytes } from "node:crypto";
import { mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ensureBuilt, runCli, spawnServer, type ServerProcess } from "../helpers/built-cli.js";

let dir: string;
let dataDir: string;
let server: ServerProcess | undefined;
let token: string;

beforeAll(async () => {
  await ensureBuilt();
  dir = await mkdtemp(join(tmpdir(), "itx-first-start-"));
  dataDir = join(dir, "var");
  server = await spawnServer(["--data-dir", dataDir], {}, { auth: true });
  token = (await readFile(join(dataDir, "admin-api-key"), "utf8")).trim();
}, 300_000);

afterAll(async () => {
  await server?.stop();
  await rm(dir, { recursive: true, force: true });
}, 30_000);

const itx = (args: string[], env: NodeJS.ProcessEnv = {}) => runCli(args, { env: { ITX_SERVER: server!.url, ...env }, timeoutMs: 60_000 });

describe("the local admin key", { timeout: 60_000 }, () => {
  it("is created on first start, readable by its owner only, and the log says where", async () => {
    expect((await stat(join(dataDir, "admin-api-key"))).mode & 0o777).toBe(0o600);
    expect(token).toMatch(/^itx_[\w-]{40,}$/);
    const line = server!
      .log()
      .split("\n")
      .filter(Boolean)
      .map((l) => JSON.parse(l))
      .find((l) => l.file === join(dataDir, "admin-api-key"));
    expect(line?.msg).toMatch(/created a local admin API key/);
  });

  it("is used by itx with the same data dir (ITX_DATA_DIR or --data-dir), through a whole import", async () => {
    const disk = join(dir, "disk.raw");
    await writeFile(disk, Buffer.concat([randomBytes(128 * 1024), Buffer.alloc(128 * 1024)]));
    const imported = await itx(["import", disk, "--name", "first", "--disk-format", "raw", "--wait", "--json"], { ITX_DATA_DIR: dataDir });
    expect(imported.stderr).toBe("");
    expect(imported.code).toBe(0);
    const task = JSON.parse(imported.stdout);
    expect(task.state).toBe("TASK_STATE_SUCCEEDED");

    const listed = await itx(["images", "list", "--json", "--data-dir", dataDir]);
    expect(listed.code).toBe(0);
    expect(JSON.parse(listed.stdout).images.map((i: { owner: string; status: string }) => [i.owner, i.status])).toEqual([["default", "IMAGE_STATUS_ACTIVE"]]);
    // Admin commands too: the key is an admin's.
    expect((await itx(["stores", "list", "--json"], { ITX_DATA_DIR: dataDir })).code).toBe(0);
  });

  it("is not found from another data dir: UNAUTHENTICATED, with a hint", async () => {
    const run = await itx(["images", "list"], { ITX_DATA_DIR: join(dir, "elsewhere") });
    expect(run.code).toBe(1);
    expect(run.stdout).toBe("");
    expect(run.stderr).toBe(
      'itx: unauthenticated: credentials required. Send an "authorization" header with "Bearer " and an API key or a JWT (pass --token or set ITX_TOKEN)\n',
    );
  });

  it("gives way to --token and ITX_TOKEN", async () => {
    const elsewhere = { ITX_DATA_DIR: join(dir, "elsewhere") };
    expect((await itx(["images", "list", "--token", token], elsewhere)).code).toBe(0);
    expect((await itx(["images", "list"], { ...elsewhere, ITX_TOKEN: token })).code).toBe(0);
    const wrong = await itx(["images", "list", "--token", "itx_not-a-key"], { ITX_DATA_DIR: dataDir });
    expect(wrong.stderr).toBe("itx: unauthenticated: unknown API key (pass --token or set ITX_TOKEN)\n");
    expect(wrong.code).toBe(1);
  });

  it("stays the same across restarts, and never appears in the log", async () => {
    await server!.stop();
    const firstLog = server!.log();
    server = await spawnServer(["--data-dir", dataDir, "--log-level", "debug"], {}, { auth: true });
    expect((await readFile(join(dataDir, "admin-api-key"), "utf8")).trim()).toBe(token);
    expect(server.log()).toMatch(/using the local admin API key/);
    expect((await itx(["images", "list", "--token", token])).code).toBe(0);
    expect(firstLog + server.log()).not.toContain(token);
  });
});

describe("--insecure-no-auth", { timeout: 60_000 }, () => {
  it("serves without credentials and warns at start and when requests come", async () => {
    const open = await spawnServer(["--data-dir", join(dir, "open")]);
    try {
      const run = await runCli(["images", "list", "--json"], { env: { ITX_SERVER: open.url, ITX_DATA_DIR: join(dir, "nowhere") } });
      expect(run.code).toBe(0);
      const warnings = open
        .log()
        .split("\n")
        .filter(Boolean)
        .map((l) => JSON.parse(l))
        .filter((l) => l.level === 40 && /insecure-no-auth/.test(l.msg));
      expect(warnings.map((w) => w.msg)).toEqual([
        "authentication is OFF (--insecure-no-auth): every caller is an admin; never expose this server",
        "serving requests WITHOUT authentication (--insecure-no-auth): every caller is an admin",
      ]);
    } finally {
      await open.stop();
    }
  });
});
