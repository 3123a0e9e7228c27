/**
 * The four steps through a real Swift with the BUILT CLI and real qemu-img: `itx upload-url`
 * hands out a Swift TempURL, curl PUTs a qcow2 there with no token, `itx import` of the seed
 * URI makes an active raw image in Swift, `itx export --format vmdk --store swift` writes the
 * VMDK to Swift, and `itx download` fetches it through a Swift TempURL; qemu-img compare finds
 * it identical to the upload. The steps share one image, so they run in order.
 */
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import * as fs from "node:fs/promises";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ensureBuilt, runCli, spawnServer, type ServerProcess } from "../helpers/built-cli.js";
import { createContainer, objectNames, removeContainer, swiftRequest, swiftStoreOptions, swiftToken, uniqueContainer } from "../helpers/swift.js";

const run = promisify(execFile);
const MiB = 1024 * 1024;
const DISK_BYTES = 8 * MiB;

let server: ServerProcess | undefined;
let work: string;
let dataDir: string;
let storageUrl: string;
const container = uniqueContainer("four-steps");
let seedUri = "";
let imageId = "";

const file = (name: string) => path.join(work, name);
const itx = (args: string[]) => runCli(args, { env: { ITX_SERVER: server?.url, ITX_DATA_DIR: dataDir }, timeoutMs: 120_000 });

async function itxJson(args: string[]): Promise<any> {
  const result = await itx([...args, "--json"]);
  expect(result.stderr).toBe("");
  expect(result.code).toBe(0);
  return JSON.parse(result.stdout);
}

async function tool(command: string, args: string[]): Promise<{ code: number; output: string }> {
  try {
    const { stdout, stderr } = await run(command, args);
    return { code: 0, output: `${stdout}${stderr}`.trim() };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof e.code === "number" ? e.code : -1, output: `${e.stdout ?? ""}${e.stderr ?? ""}`.trim() };
  }
}

beforeAll(async () => {
  await ensureBuilt();
  work = mkdtempSync(path.join(tmpdir(), "itx-swift-four-steps-"));
  dataDir = file("data");
  await fs.mkdir(dataDir);
  await createContainer(container);
  storageUrl = (await swiftToken()).storageUrl;
  // Swift is both the staging store (uploads) and the default store (images, exports).
  const config = { stores: [{ name: "swift", plugin: "store-swift", default: true, staging: true, options: swiftStoreOptions(container) }] };
  await fs.writeFile(file("config.json"), JSON.stringify(config));
  server = await spawnServer(["--config", file("config.json"), "--data-dir", dataDir]);

  await fs.writeFile(file("disk.raw"), Buffer.concat([randomBytes(DISK_BYTES / 2), Buffer.alloc(DISK_BYTES / 2)]));
  const convert = await tool("qemu-img", ["convert", "-f", "raw", "-O", "qcow2", file("disk.raw"), file("disk.qcow2")]);
  expect(convert.code, convert.output).toBe(0);
}, 300_000);

afterAll(async () => {
  await server?.stop();
  await removeContainer(container);
  if (work) rmSync(work, { recursive: true, force: true });
}, 60_000);

describe("upload, import, export, download through Swift", { timeout: 120_000 }, () => {
  it("upload-url hands out a Swift TempURL for PUT into the staging container", async () => {
    const response = await itxJson(["upload-url"]);
    expect(response.method).toBe("PUT");
    expect(response.url.startsWith(`${storageUrl}/${container}/uploads/`)).toBe(true);
    expect(response.url).toMatch(/\?temp_url_sig=[0-9a-f]{64}&temp_url_expires=\d+$/);
    expect(response.seedUri).toMatch(/^swift:\/\/swift\/uploads\/[0-9a-f-]+$/);
    seedUri = response.seedUri;

    // curl, as a customer would: no token, just the URL.
    const put = await tool("curl", ["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-T", file("disk.qcow2"), response.url]);
    expect(put).toEqual({ code: 0, output: "201" });
    const key = seedUri.slice("swift://swift/".length);
    expect(await objectNames(container)).toEqual([key]);
  });

  it("import of the seed URI makes an active raw image stored in Swift, and removes the upload", async () => {
    const task = await itxJson(["import", seedUri, "--name", "from-swift", "--disk-format", "qcow2", "--wait"]);
    expect(task).toMatchObject({ type: "TASK_TYPE_IMPORT", state: "TASK_STATE_SUCCEEDED" });
    imageId = task.imageId;
    expect(task.result.storeUris).toEqual([`swift://swift/images/${imageId}`]);

    const { image } = await itxJson(["images", "get", imageId]);
    expect(image).toMatchObject({ status: "IMAGE_STATUS_ACTIVE", diskFormat: "DISK_FORMAT_RAW", size: String(DISK_BYTES) });
    // The raw image is 8 MiB: over the 1 MiB segment size, so an SLO with its segments beside it.
    const head = await swiftRequest("HEAD", `/${container}/images/${imageId}`);
    expect(head.status).toBe(200);
    expect(head.headers.get("x-static-large-object")).toBe("True");
    expect(head.headers.get("content-length")).toBe(String(DISK_BYTES));
    expect(await objectNames(container)).toEqual([`images/${imageId}`]);
  });

  it("export --format vmdk --store swift writes the VMDK to Swift", async () => {
    const task = await itxJson(["export", imageId, "--format", "vmdk", "--store", "swift", "--wait"]);
    expect(task).toMatchObject({ type: "TASK_TYPE_EXPORT", state: "TASK_STATE_SUCCEEDED" });
    expect(task.result.storeUris).toEqual([`swift://swift/exports/${imageId}.vmdk`]);
    expect((await swiftRequest("HEAD", `/${container}/exports/${imageId}.vmdk`)).status).toBe(200);
  });

  it("download fetches the VMDK through a Swift TempURL, and qemu-img finds it identical to the upload", async () => {
    const { url } = await itxJson(["download-url", imageId, "--format", "vmdk"]);
    expect(url.startsWith(`${storageUrl}/${container}/exports/${imageId}.vmdk?temp_url_sig=`)).toBe(true);

    const result = await itx(["download", imageId, "--format", "vmdk", "-o", file("out.vmdk")]);
    expect(result.stderr).toBe("");
    expect(result.code).toBe(0);
    const compare = await tool("qemu-img", ["compare", "-f", "qcow2", "-F", "vmdk", file("disk.qcow2"), file("out.vmdk")]);
    expect(compare).toEqual({ code: 0, output: "Images are identical." });

    // The same URL with curl gives the same bytes.
    const viaCurl = await tool("curl", ["-sS", "-f", "-o", file("curl.vmdk"), url]);
    expect(viaCurl.code, viaCurl.output).toBe(0);
    expect((await fs.readFile(file("curl.vmdk"))).equals(await fs.readFile(file("out.vmdk")))).toBe(true);
  });
});
