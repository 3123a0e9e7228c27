/**
 * The README tour of the data plane, end to end: the BUILT CLI against a real server on
 * a temporary data dir, with real qemu-img. A qcow2 disk is uploaded and imported, checked
 * against `qemu-img convert -O raw`, exported to vmdk, downloaded both ways, and a cut-off
 * download is resumed. The steps share one image, so they run in order.
 */
import { execFile } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import * as fs from "node:fs/promises";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { ensureBuilt, runCli, spawnServer, type ServerProcess } from "../helpers/built-cli.js";

const run = promisify(execFile);
const MiB = 1024 * 1024;
const DISK_BYTES = 32 * MiB;

let server: ServerProcess | undefined;
let work: string;
let dataDir: string;
/** The bytes the guest sees: `qemu-img convert -O raw` of the uploaded qcow2. */
let rawBytes: Buffer;
/** Set by the import step, used by every later one. */
let imageId = "";

const itx = (args: string[]) => runCli(args, { env: { ITX_SERVER: server?.url }, timeoutMs: 60_000 });
const file = (name: string) => path.join(work, name);
const sha512 = (data: Buffer) => createHash("sha512").update(data).digest("hex");

async function qemuImg(args: string[]): Promise<{ code: number; output: string }> {
  try {
    const { stdout, stderr } = await run("qemu-img", args);
    return { code: 0, output: `${stdout}${stderr}`.trim() };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof e.code === "number" ? e.code : -1, output: `${e.stdout ?? ""}${e.stderr ?? ""}`.trim() };
  }
}

/** The server's "data request" log lines (it runs at debug level) for one object key. */
function dataRequests(key: string): Array<{ method: string; status: number; bytes: number }> {
  return server!
    .log()
    .split("\n")
    .filter((line) => line.startsWith("{"))
    .map((line) => JSON.parse(line) as { msg?: string; key?: string; method: string; status: number; bytes: number })
    .filter((entry) => entry.msg === "data request" && entry.key === key);
}

beforeAll(async () => {
  await ensureBuilt();
  work = mkdtempSync(path.join(tmpdir(), "itx-round-trip-"));
  dataDir = path.join(work, "data");
  await fs.mkdir(dataDir);
  server = await spawnServer(["--data-dir", dataDir, "--log-level", "debug"]);

  // 32 MiB: the first half random, the second half zeros; then qcow2, as a customer would have it.
  await fs.writeFile(file("disk.raw"), Buffer.concat([randomBytes(DISK_BYTES / 2), Buffer.alloc(DISK_BYTES / 2)]));
  const convert = await qemuImg(["convert", "-f", "raw", "-O", "qcow2", file("disk.raw"), file("disk.qcow2")]);
  expect(convert.code, convert.output).toBe(0);
  const back = await qemuImg(["convert", "-f", "qcow2", "-O", "raw", file("disk.qcow2"), file("expected.raw")]);
  expect(back.code, back.output).toBe(0);
  rawBytes = await fs.readFile(file("expected.raw"));
  expect(rawBytes.length).toBe(DISK_BYTES);
}, 300_000);

afterAll(async () => {
  await server?.stop();
  if (work) rmSync(work, { recursive: true, force: true });
}, 30_000);

describe("the data-plane tour with the built itx", { timeout: 120_000 }, () => {
  it("import uploads a local qcow2 file and --wait --json prints only the final task, SUCCEEDED", async () => {
    const result = await itx(["import", file("disk.qcow2"), "--name", "cirros", "--disk-format", "qcow2", "--wait", "--json"]);
    expect(result.stderr).toBe("");
    expect(result.code).toBe(0);
    const task = JSON.parse(result.stdout);
    expect(task).toMatchObject({ type: "TASK_TYPE_IMPORT", state: "TASK_STATE_SUCCEEDED" });
    expect(task.imageId).toMatch(/^[0-9a-f-]{36}$/);
    expect(task.result.imageId).toBe(task.imageId);
    imageId = task.imageId;
  });

  it("the image is ACTIVE, raw, and its sha512 is that of `qemu-img convert -O raw`", async () => {
    const result = await itx(["images", "get", imageId, "--json"]);
    expect(result.code).toBe(0);
    const { image } = JSON.parse(result.stdout);
    expect(image).toMatchObject({
      id: imageId,
      name: "cirros",
      status: "IMAGE_STATUS_ACTIVE",
      diskFormat: "DISK_FORMAT_RAW",
      size: String(DISK_BYTES),
      osHashAlgo: "sha512",
    });
    expect(image.osHashValue).toBe(sha512(rawBytes));
  });

  it("export --format vmdk --wait follows the task to SUCCEEDED", async () => {
    const result = await itx(["export", imageId, "--format", "VMDK", "--wait"]);
    expect(result.stderr).toBe("");
    expect(result.code).toBe(0);
    // Not a terminal: one "TIME STATE STAGE DONE/TOTAL" line per change, as `tasks watch` prints.
    const lines = result.stdout.trimEnd().split("\n");
    for (const line of lines) expect(line).toMatch(/^\S+ (pending|running|succeeded) \S+ \d+\/\d+$/);
    expect(lines.at(-1)).toMatch(/ succeeded /);
  });

  it("download --format vmdk writes a file that qemu-img finds identical to the upload", async () => {
    // Whatever the export step saw, its task has ended before the download starts.
    await vi.waitFor(
      async () => {
        const list = await itx(["tasks", "list", "--type", "export", "--image", imageId, "--json"]);
        const states = (JSON.parse(list.stdout).tasks as Array<{ state: string }>).map((t) => t.state);
        expect(states.length).toBeGreaterThan(0);
        expect(states.filter((s) => s === "TASK_STATE_PENDING" || s === "TASK_STATE_RUNNING")).toEqual([]);
      },
      { timeout: 60_000, interval: 250 },
    );
    const result = await itx(["download", imageId, "--format", "vmdk", "-o", file("out.vmdk")]);
    expect(result.stderr).toBe("");
    expect(result.code).toBe(0);
    const info = await qemuImg(["info", "--output=json", file("out.vmdk")]);
    expect(JSON.parse(info.output).format).toBe("vmdk");
    const compare = await qemuImg(["compare", "-f", "qcow2", "-F", "vmdk", file("disk.qcow2"), file("out.vmdk")]);
    expect(compare).toEqual({ code: 0, output: "Images are identical." });
  });

  it("download writes the raw bytes, and resumes a cut-off file by fetching only the rest", async () => {
    const out = file("out.raw");
    const first = await itx(["download", imageId, "-o", out, "--json"]);
    expect(first.stderr).toBe("");
    expect(first.code).toBe(0);
    expect(JSON.parse(first.stdout)).toEqual({ path: out, size: DISK_BYTES, resumedFrom: 0 });
    expect((await fs.readFile(out)).equals(rawBytes)).toBe(true);

    const key = `images/${imageId}`;
    const before = dataRequests(key).length;
    await fs.truncate(out, DISK_BYTES / 2);
    const resumed = await itx(["download", imageId, "-o", out, "--json"]);
    expect(resumed.stderr).toBe("");
    expect(resumed.code).toBe(0);
    expect(JSON.parse(resumed.stdout)).toEqual({ path: out, size: DISK_BYTES, resumedFrom: DISK_BYTES / 2 });
    expect((await fs.readFile(out)).equals(rawBytes)).toBe(true);

    // The server's own count: a HEAD for the validator, then one 206 carrying the second half only.
    await vi.waitFor(() => expect(dataRequests(key).length).toBeGreaterThanOrEqual(before + 2), { timeout: 5_000 });
    const requests = dataRequests(key).slice(before);
    expect(requests).toEqual([
      expect.objectContaining({ method: "HEAD", status: 200, bytes: 0 }),
      expect.objectContaining({ method: "GET", status: 206, bytes: DISK_BYTES / 2 }),
    ]);
  });

  it("import with a wrong --expect-sha256 exits 3 with CHECKSUM_MISMATCH", async () => {
    const result = await itx(["import", file("disk.qcow2"), "--disk-format", "qcow2", "--expect-sha256", "0".repeat(64), "--wait", "--json"]);
    expect(result.code).toBe(3);
    expect(result.stderr).toMatch(/^itx: task_failed: .*CHECKSUM_MISMATCH/);
    expect(JSON.parse(result.stdout)).toMatchObject({ state: "TASK_STATE_FAILED", error: { reason: "CHECKSUM_MISMATCH" } });
  });

  it("import of a seed URI naming an unknown store exits 1 with invalid_argument", async () => {
    const result = await itx(["import", "file://no-such-store/uploads/disk", "--wait"]);
    expect(result.code).toBe(1);
    expect(result.stdout).toBe("");
    expect(result.stderr).toMatch(/^itx: invalid_argument: .*no-such-store.*\n$/);
  });

  it("download-url --json has a URL to the image and its size", async () => {
    const result = await itx(["download-url", imageId, "--json"]);
    expect(result.stderr).toBe("");
    expect(result.code).toBe(0);
    const response = JSON.parse(result.stdout);
    expect(response.url.startsWith(`${server!.url}/`)).toBe(true);
    expect(response.size).toBe(String(DISK_BYTES));
  });
});
