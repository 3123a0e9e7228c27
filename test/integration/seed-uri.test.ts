/**
 * Seed URIs end to end: ImportImage on a real service with its filesystem store never
 * reads a host file, whatever the URI says (absolute file URIs, ../ segments plain or
 * percent-encoded, symbolic links out of the store root, schemes no store serves), and the
 * built `itx import` sends anything with a scheme to the server and uploads only bare paths.
 */
import { randomBytes } from "node:crypto";
import * as fs from "node:fs/promises";
import * as path from "node:path";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DiskFormat, ImageService, ImageStatus } from "../../src/gen/imagetransfer/v1/image_pb.js";
import { TaskState } from "../../src/gen/imagetransfer/v1/task_pb.js";
import { TransferService } from "../../src/gen/imagetransfer/v1/transfer_pb.js";
import { ensureBuilt, runCli } from "../helpers/built-cli.js";
import { startTestService, type TestService } from "../helpers/service.js";
import { watchToEnd } from "../helpers/transfer.js";

let service: TestService;
let storeRoot: string;

beforeAll(async () => {
  service = await startTestService();
  storeRoot = path.join(service.dataDir, "images");
  // Links inside the store that lead out of it: to a host file, and to a host directory.
  await fs.mkdir(path.join(storeRoot, "links"), { recursive: true });
  await fs.symlink("/etc/passwd", path.join(storeRoot, "links", "passwd"));
  await fs.symlink("/etc", path.join(storeRoot, "links", "etc"));
});

afterAll(async () => {
  await service?.stop();
});

const transfer = () => createClient(TransferService, createGrpcTransport({ baseUrl: service.url }));
const images = () => createClient(ImageService, createGrpcTransport({ baseUrl: service.url }));
const imageCount = async () => (await images().listImages({ pageSize: 1000 })).images.length;

describe("ImportImage", () => {
  it.each([
    ["/etc/passwd", /must look like SCHEME:\/\/STORE\/KEY/],
    ["file:///etc/passwd", /must name a store/],
    ["file:/etc/passwd", /must look like file:\/\/STORE\/KEY/],
    ["file://local/../../etc/passwd", /"\.\." segment/],
    ["file://local/uploads/../../../../etc/passwd", /"\.\." segment/],
    ["file://local/uploads/%2e%2e/%2e%2e/%2e%2e/etc/passwd", /"\.\." segment/],
    ["file://local/%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd", /"\.\." segment/],
    ["file://etc/passwd", /names store "etc", which is not configured here/],
    ["https://images.example.com/disk.qcow2", /uses scheme "https", which no store here serves \(schemes served: file\)/],
    ["ftp://local/etc/passwd", /uses scheme "ftp", which no store here serves/],
  ])("refuses %j with INVALID_ARGUMENT and creates no image", async (seedUri, message) => {
    const before = await imageCount();
    const err = await transfer()
      .importImage({ seedUri, diskFormat: DiskFormat.RAW })
      .then(() => undefined, (e: unknown) => ConnectError.from(e));
    expect(err?.code).toBe(Code.InvalidArgument);
    expect(err?.rawMessage).toMatch(message);
    expect(await imageCount()).toBe(before);
  });

  it.each(["file://local/links/passwd", "file://local/links/etc/passwd"])(
    "fails the import of %s, a symbolic link out of the store, and kills the image",
    async (seedUri) => {
      const { task, image } = await transfer().importImage({ seedUri, diskFormat: DiskFormat.RAW });
      const done = await watchToEnd(service.url, task!.id);
      expect(done.state).toBe(TaskState.FAILED);
      expect(done.error).toMatchObject({ reason: "STORE_INVALID", message: expect.stringMatching(/leads outside the store root through a symbolic link/) });
      expect((await images().getImage({ id: image!.id })).image?.status).toBe(ImageStatus.KILLED);
      // Nothing of /etc/passwd was stored as an image.
      expect(await fs.readdir(path.join(storeRoot, "images")).catch(() => [])).toEqual([]);
    },
  );
});

describe("itx import", () => {
  beforeAll(async () => {
    await ensureBuilt();
  });

  it("sends a SOURCE with a scheme to the server as a seed URI", async () => {
    const run = await runCli(["import", "ftp:whatever", "--server", service.url]);
    expect(run.code).toBe(1);
    expect(run.stderr).toMatch(/invalid.argument: seed_uri uses scheme "ftp", which no store here serves/i);
  });

  it("uploads a bare path as a local file, even one that contains ://", async () => {
    const dir = path.join(service.dataDir, "client", "odd:");
    await fs.mkdir(dir, { recursive: true });
    await fs.writeFile(path.join(dir, "disk.raw"), randomBytes(256 * 1024));
    // ".../client/odd://disk.raw" is a path (the file system reads // as /), not a URI: it has no scheme.
    const source = `${path.join(service.dataDir, "client", "odd:")}//disk.raw`;
    const run = await runCli(["import", source, "--disk-format", "raw", "--wait", "--json", "--server", service.url], { timeoutMs: 60_000 });
    expect(run.stderr).toBe("");
    expect(run.code).toBe(0);
    expect(JSON.parse(run.stdout)).toMatchObject({ state: "TASK_STATE_SUCCEEDED" });
  });

  it("reads a bare path that does not exist as a missing local file", async () => {
    const run = await runCli(["import", "no-such-dir/disk.raw", "--server", service.url]);
    expect(run.code).toBe(2);
    expect(run.stderr).toMatch(/cannot read SOURCE "no-such-dir\/disk.raw"/);
  });
});
