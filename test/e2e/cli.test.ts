/**
 * End-to-end tests of the BUILT `itx` CLI against a real server started with the built
 * CLI: they prove the compiled code (decorators included) works outside vitest.
 */
import { randomUUID } from "node:crypto";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parse as parseYaml } from "yaml";
import { ensureBuilt, repoRoot, runCli, runCliJson, spawnServer, type CliRun, type ServerProcess } from "../helpers/built-cli.js";

/** The built CLI, pointed at this file's server through ITX_SERVER as a user's environment would. */
const itx = (args: string[], env: NodeJS.ProcessEnv = {}) => runCli(args, { env: { ITX_SERVER: server?.url, ...env } });
const itxJson = (args: string[]) => runCliJson(args, { env: { ITX_SERVER: server?.url } });

/** One `itx: <code>: <message>` line on stderr, nothing on stdout. */
function expectError(run: CliRun, exitCode: number, code: string): void {
  expect(run.stdout).toBe("");
  expect(run.stderr).toMatch(new RegExp(`^itx: ${code}: \\S.*\\n$`));
  expect(run.code).toBe(exitCode);
}

async function closedPort(): Promise<number> {
  const probe = createServer();
  await new Promise<void>((resolve) => probe.listen(0, "127.0.0.1", resolve));
  const { port } = probe.address() as { port: number };
  await new Promise((resolve) => probe.close(resolve));
  return port;
}

// ---------------------------------------------------------------------------

let server: ServerProcess | undefined;
let dataDir: string;

beforeAll(async () => {
  await ensureBuilt();
  dataDir = mkdtempSync(path.join(tmpdir(), "itx-cli-e2e-"));
  server = await spawnServer(["--data-dir", dataDir, "--log-level", "warn"]);
}, 300_000);

afterAll(async () => {
  await server?.stop();
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
}, 30_000);

describe("itx (built) against a running server", { timeout: 30_000 }, () => {
  it("creates an image that images list --json then shows", async () => {
    const name = `cirros-${randomUUID().slice(0, 8)}`;
    const created = await itxJson(["images", "create", "--name", name, "--disk-format", "QCOW2", "--property", "os=linux", "--property", "note=a=b"]);
    expect(created.image.name).toBe(name);
    expect(created.image.status).toBe("IMAGE_STATUS_QUEUED");

    const listed = await itxJson(["images", "list"]);
    const image = listed.images.find((i: { id: string }) => i.id === created.image.id);
    expect(image).toMatchObject({
      name,
      owner: "default",
      status: "IMAGE_STATUS_QUEUED",
      diskFormat: "DISK_FORMAT_QCOW2",
      properties: { os: "linux", note: "a=b" },
    });
    // lowerCamelCase protobuf JSON, timestamps as RFC 3339.
    expect(Object.keys(image)).toEqual(expect.arrayContaining(["createTime", "updateTime", "virtualSize", "osHashAlgo"]));
    expect(Object.keys(image)).not.toContain("create_time");
    expect(new Date(image.createTime).toISOString()).toBe(image.createTime);
    expect(listed.nextPageToken).toBe("");

    const byName = await itxJson(["images", "list", "--name", name, "--status", "Queued"]);
    expect(byName.images.map((i: { id: string }) => i.id)).toEqual([created.image.id]);
  });

  it("prints images list as a table with a header row", async () => {
    const created = await itxJson(["images", "create", "--name", "table-check", "--disk-format", "raw"]);
    const run = await itx(["images", "list"]);
    expect(run.code).toBe(0);
    expect(run.stderr).toBe("");
    const lines = run.stdout.trimEnd().split("\n");
    expect(lines[0]).toMatch(/^ID\s+NAME\s+STATUS\s+DISK\s+SIZE\s+CREATED$/);
    const row = lines.find((l) => l.startsWith(created.image.id));
    expect(row).toMatch(/table-check\s+queued\s+raw\s+-\s+\d{4}-\d\d-\d\dT/);
  });

  it("follows next_page_token with --all", async () => {
    for (let i = 0; i < 3; i++) await itxJson(["images", "create", "--name", `page-${i}`]);
    const everything = await itxJson(["images", "list"]);
    const firstPage = await itxJson(["images", "list", "--page-size", "2"]);
    expect(firstPage.images).toHaveLength(2);
    expect(firstPage.nextPageToken).not.toBe("");
    const all = await itxJson(["images", "list", "--page-size", "2", "--all"]);
    expect(all.images.map((i: { id: string }) => i.id)).toEqual(everything.images.map((i: { id: string }) => i.id));
    expect(all.nextPageToken).toBe("");
    const second = await itxJson(["images", "list", "--page-size", "2", "--page-token", firstPage.nextPageToken]);
    expect(second.images[0].id).toBe(everything.images[2].id);
  });

  it("images get of an unknown id is not_found, with nothing on stdout", async () => {
    const id = randomUUID();
    const run = await itx(["images", "get", id]);
    expectError(run, 1, "not_found");
    expect(run.stderr).toContain(id);
    expectError(await itx(["images", "get", id, "--json"]), 1, "not_found");
  });

  it("images get of a malformed id is invalid_argument", async () => {
    expectError(await itx(["images", "get", "not-a-uuid"]), 1, "invalid_argument");
  });

  it("images delete hides the image from list and get", async () => {
    const created = await itxJson(["images", "create", "--name", "to-delete"]);
    const id = created.image.id as string;
    expect((await itx(["images", "get", id])).stdout).toMatch(/^id:\s+\S+\n/);
    const deleted = await itx(["images", "delete", id]);
    expect(deleted.code).toBe(0);
    expect(deleted.stdout).toBe(`deleted image ${id}\n`);
    const listed = await itxJson(["images", "list"]);
    expect(listed.images.map((i: { id: string }) => i.id)).not.toContain(id);
    const onlyDeleted = await itxJson(["images", "list", "--status", "deleted"]);
    expect(onlyDeleted.images.map((i: { id: string }) => i.id)).toContain(id);
    expectError(await itx(["images", "get", id]), 1, "not_found");
    expectError(await itx(["images", "delete", id]), 1, "not_found");
  });

  it("stores list shows the default store; plugins list --json shows store-filesystem LOADED", async () => {
    const stores = await itx(["stores", "list"]);
    expect(stores.code).toBe(0);
    const lines = stores.stdout.trimEnd().split("\n");
    expect(lines[0]).toMatch(/^NAME\s+PLUGIN\s+/);
    expect(lines.some((l) => /^local\s+@imagetransfer\/store-filesystem\s+.*\bavailable$/.test(l))).toBe(true);

    const storesJson = await itxJson(["stores", "list"]);
    expect(storesJson.stores).toContainEqual(expect.objectContaining({ name: "local", plugin: "@imagetransfer/store-filesystem", available: true, isDefault: true }));

    const plugins = await itxJson(["plugins", "list"]);
    const fs = plugins.plugins.find((p: { id: string }) => p.id.endsWith("store-filesystem"));
    expect(fs).toMatchObject({ kind: "PLUGIN_KIND_STORE", state: "PLUGIN_STATE_LOADED", error: "" });

    const table = await itx(["plugins", "list"]);
    expect(table.stdout).toMatch(/^ID\s+KIND\s+VERSION\s+API\s+STATE\s+ERRORS\s+PATH\n/);
    expect(table.stdout).toMatch(/store-filesystem\s+store\s+\S+\s+\S+\s+loaded\s+0\s+/);
  });

  it("tasks list --json gives an empty list", async () => {
    const tasks = await itxJson(["tasks", "list"]);
    expect(tasks).toEqual({ tasks: [], nextPageToken: "" });
    const filtered = await itxJson(["tasks", "list", "--state", "RUNNING", "--type", "import", "--image", randomUUID()]);
    expect(filtered.tasks).toEqual([]);
  });

  it("tasks watch, get and cancel of an unknown task are not_found", async () => {
    expectError(await itx(["tasks", "watch", randomUUID()]), 1, "not_found");
    expectError(await itx(["tasks", "watch", randomUUID(), "--json"]), 1, "not_found");
    expectError(await itx(["tasks", "get", randomUUID()]), 1, "not_found");
    expectError(await itx(["tasks", "cancel", randomUUID()]), 1, "not_found");
  });

  it("says in one line that a server on a closed port is unreachable", async () => {
    const url = `http://127.0.0.1:${await closedPort()}`;
    const run = await itx(["images", "list", "--server", url]);
    expectError(run, 1, "unavailable");
    expect(run.stderr).toContain(`the server at ${url} is unreachable`);
    expect(run.stderr).not.toMatch(/\bat .*\.js:\d+/);
    // ITX_SERVER works too, and --json does not change where errors go.
    expectError(await itx(["stores", "list", "--json"], { ITX_SERVER: url }), 1, "unavailable");
  });

  it("rejects bad command lines with exit code 2", async () => {
    const status = await itx(["images", "list", "--status", "bogus"]);
    expectError(status, 2, "usage");
    expect(status.stderr).toContain("queued, uploading, importing, active, killed, deleted");
    expectError(await itx(["tasks", "list", "--state", "done"]), 2, "usage");
    expectError(await itx(["images", "create", "--disk-format", "floppy"]), 2, "usage");
    expectError(await itx(["images", "create", "--property", "novalue"]), 2, "usage");
    expectError(await itx(["images", "list", "--page-size", "0"]), 2, "usage");
    expectError(await itx(["images", "list", "--server", "ftp://example.com"]), 2, "usage");
    expect((await itx(["images", "get"])).code).toBe(2);
    expect((await itx(["images", "frobnicate"])).code).toBe(2);
  });

  it("completes commands and options in bash from a generated script", async () => {
    const script = await itx(["completion", "bash"]);
    expect(script.code).toBe(0);
    const file = path.join(dataDir, "completion.bash");
    writeFileSync(file, script.stdout);
    const complete = (...words: string[]) =>
      execFileSync("bash", ["-c", `source "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 )); _itx; echo "\${COMPREPLY[*]}"`, "bash", file, ...words], {
        encoding: "utf8",
      }).trim();
    expect(complete("itx", "ima")).toBe("images");
    expect(complete("itx", "images", "l")).toBe("list");
    expect(complete("itx", "images", "list", "--st")).toBe("--status");
    // An argument (an image id) does not hide the options after it.
    expect(complete("itx", "download", randomUUID(), "--f")).toBe("--format");
    expect((await itx(["completion", "zsh"])).stdout).toMatch(/^autoload -U \+X bashcompinit && bashcompinit\n_itx\(\) \{/);
    expect(await itx(["completion", "fish"])).toMatchObject({ code: 2, stdout: "" });
  });

  it("prints the same document as YAML with --output yaml, and as JSON with --output json", async () => {
    const asJson = await itxJson(["stores", "list"]);
    const yaml = await itx(["stores", "list", "--output", "yaml"]);
    expect(yaml.code).toBe(0);
    expect(parseYaml(yaml.stdout)).toEqual(asJson);
    expect(JSON.parse((await itx(["stores", "list", "--output", "json"])).stdout)).toEqual(asJson);
    expect(await itx(["stores", "list", "--output", "xml"])).toMatchObject({ code: 2, stdout: "" });
  });

  it("admin status summarises the server", async () => {
    const status = await itxJson(["admin", "status"]);
    expect(status).toMatchObject({
      version: expect.stringMatching(/^\d+\.\d+\.\d+/),
      database: "embedded",
      databaseReachable: true,
      role: "all",
      pluginsFailed: 0,
      tasksPending: "0",
      tasksRunning: "0",
      tasksRunningHere: 0,
    });
    expect(status.pluginsLoaded).toBeGreaterThanOrEqual(3);
    expect(status.stores).toContainEqual(expect.objectContaining({ name: "local", available: true }));
    const table = await itx(["admin", "status"]);
    expect(table.code).toBe(0);
    expect(table.stdout).toMatch(/^database:\s+embedded, reachable$/m);
  });

  it("admin gc sweeps now and says what it removed", async () => {
    const json = await itxJson(["admin", "gc"]);
    expect(json).toEqual({ removedObjects: [], removedWorkDirs: [], removedTasks: 0, removedPartialWrites: 0 });
    const run = await itx(["admin", "gc"]);
    expect(run.code).toBe(0);
    expect(run.stdout).toBe("0 objects, 0 partial writes, 0 temporary folders, 0 finished tasks removed\n");
  });

  it("prints its version, the package's, with --version", async () => {
    const { version } = JSON.parse(readFileSync(path.join(repoRoot, "package.json"), "utf8")) as { version: string };
    const run = await itx(["--version"]);
    expect(run).toMatchObject({ code: 0, stdout: `${version}\n`, stderr: "" });
  });

  it("describes the exit codes in itx --help", async () => {
    const run = await itx(["--help"]);
    expect(run.code).toBe(0);
    expect(run.stdout).toMatch(/Exit codes:/);
    for (const code of ["0", "1", "2", "3", "4"]) expect(run.stdout).toMatch(new RegExp(`^\\s+${code}\\s+\\S`, "m"));
    expect(run.stdout).toMatch(/images\s/);
    expect(run.stdout).toMatch(/tasks\s/);
    expect(run.stdout).toMatch(/stores\s/);
    expect(run.stdout).toMatch(/plugins\s/);
    expect(run.stdout).toMatch(/serve\s/);
  });
});
