/**
 * The HTTP side of `itx import FILE` and `itx download`: putFile and downloadFile against
 * the real data endpoint of an in-process server (uploads, refusals, resume), and one
 * small HTTP server of the test's own for the race the real one cannot be made to lose on
 * cue: an object replaced between the HEAD and the ranged GET.
 */
import { randomBytes } from "node:crypto";
import { createServer, type Server } from "node:http";
import * as fs from "node:fs/promises";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createClients, type Clients } from "../../src/cli/client.js";
import { CliError } from "../../src/cli/output.js";
import { downloadFile, putFile } from "../../src/cli/transfer.js";
import { TaskState } from "../../src/gen/imagetransfer/v1/task_pb.js";
import { startTestService, type TestService } from "../helpers/service.js";

const LIMIT = 256 * 1024;
let service: TestService;
let clients: Clients;
let work: string;
let image: Buffer;
let imageId: string;

/** Uploads `data` through a fresh upload URL; returns the seed URI. */
async function upload(data: Buffer, name: string): Promise<string> {
  const file = path.join(work, name);
  await fs.writeFile(file, data);
  const { url, seedUri } = await clients.transfer.createUploadUrl({});
  let counted = 0;
  await putFile(file, data.length, new URL(url), (n) => (counted += n));
  expect(counted).toBe(data.length);
  return seedUri;
}

async function downloadUrl(): Promise<{ url: URL; size: number }> {
  const response = await clients.transfer.createDownloadUrl({ imageId });
  return { url: new URL(response.url), size: Number(response.size) };
}

/** A URL whose signature no longer matches. */
function tampered(url: URL): URL {
  const copy = new URL(url);
  const signature = copy.searchParams.get("signature")!;
  copy.searchParams.set("signature", `${signature[0] === "0" ? "1" : "0"}${signature.slice(1)}`);
  return copy;
}

async function rejection(promise: Promise<unknown>): Promise<CliError> {
  const err = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(CliError);
  return err as CliError;
}

beforeAll(async () => {
  service = await startTestService({ maxImageBytes: LIMIT });
  clients = createClients(service.url);
  work = await fs.mkdtemp(path.join(tmpdir(), "itx-cli-transfer-"));
  // A raw image: random data, then zeros.
  image = Buffer.concat([randomBytes(96 * 1024), Buffer.alloc(32 * 1024)]);
  const seedUri = await upload(image, "image.raw");
  const { task } = await clients.transfer.importImage({ seedUri, name: "unit" });
  let last = task!;
  for await (const r of clients.tasks.watchTask({ id: task!.id })) last = r.task!;
  expect(last.error?.message ?? "").toBe("");
  expect(last.state).toBe(TaskState.SUCCEEDED);
  imageId = last.imageId;
}, 60_000);

afterAll(async () => {
  await service?.stop();
  if (work) await fs.rm(work, { recursive: true, force: true });
});

describe("putFile", () => {
  it("streams a file with its Content-Length into the upload URL", async () => {
    const data = randomBytes(10_000);
    const seedUri = await upload(data, "small.bin");
    expect(seedUri).toMatch(/^file:\/\/local\/uploads\//);
  });

  it("reports a 413 refusal with its status and body line, without the URL's signature", async () => {
    const file = path.join(work, "too-big.bin");
    await fs.writeFile(file, randomBytes(LIMIT + 1));
    const { url } = await clients.transfer.createUploadUrl({});
    const err = await rejection(putFile(file, LIMIT + 1, new URL(url)));
    expect(err.code).toBe("http_error");
    expect(err.message).toMatch(/^PUT http:\/\/127\.0\.0\.1:\d+\/v1\/data\/local\/uploads\/\S+: HTTP 413 Payload Too Large: image larger than 262144 bytes$/);
    expect(err.message).not.toContain("signature");
  });

  it("reports a 403 for a URL whose signature does not match", async () => {
    const file = path.join(work, "forbidden.bin");
    await fs.writeFile(file, randomBytes(1000));
    const { url } = await clients.transfer.createUploadUrl({});
    const err = await rejection(putFile(file, 1000, tampered(new URL(url))));
    expect(err.message).toMatch(/: HTTP 403 Forbidden: invalid signature$/);
  });
});

describe("downloadFile", () => {
  it("writes the whole object to a new file", async () => {
    const { url, size } = await downloadUrl();
    const out = path.join(work, "fresh.raw");
    expect(await downloadFile(url, out, size)).toEqual({ path: out, size: image.length, resumedFrom: 0 });
    expect((await fs.readFile(out)).equals(image)).toBe(true);
  });

  it("resumes a shorter file from its end", async () => {
    const { url, size } = await downloadUrl();
    const out = path.join(work, "partial.raw");
    await fs.writeFile(out, image.subarray(0, 50_001));
    expect(await downloadFile(url, out, size)).toMatchObject({ resumedFrom: 50_001 });
    expect((await fs.readFile(out)).equals(image)).toBe(true);
  });

  it("starts over when the file is not shorter than the object", async () => {
    const { url, size } = await downloadUrl();
    const out = path.join(work, "longer.raw");
    await fs.writeFile(out, randomBytes(image.length + 10));
    expect(await downloadFile(url, out, size)).toMatchObject({ resumedFrom: 0 });
    expect((await fs.readFile(out)).equals(image)).toBe(true);
  });

  it("fails with the status and body line, leaving an existing file alone", async () => {
    const { url, size } = await downloadUrl();
    const out = path.join(work, "untouched.raw");
    await fs.writeFile(out, "keep me");
    const err = await rejection(downloadFile(tampered(url), out, size));
    expect(err.message).toMatch(/^(HEAD|GET) http:\/\/127\.0\.0\.1:\d+\/v1\/data\/local\/\S+: HTTP 403 Forbidden/);
    expect(await fs.readFile(out, "utf8")).toBe("keep me");
  });
});

describe("downloadFile when the object changes between HEAD and GET", () => {
  let server: Server;
  let base: string;
  const before = Buffer.from("old object, first version: ".repeat(100));
  const after = Buffer.from("NEW OBJECT, SECOND VERSION ".repeat(100));
  const ranges: Array<string | undefined> = [];

  beforeAll(async () => {
    // HEAD describes the old object; GET serves the new one, which fails the old ETag's If-Range.
    server = createServer((req, res) => {
      if (req.method === "HEAD") {
        res.writeHead(200, { "Content-Length": String(before.length), ETag: '"old"', "Accept-Ranges": "bytes" });
        return res.end();
      }
      ranges.push(req.headers.range);
      if (req.headers.range && req.headers["if-range"] === '"new"') {
        const start = Number(/bytes=(\d+)-/.exec(req.headers.range)![1]);
        res.writeHead(206, { "Content-Range": `bytes ${start}-${after.length - 1}/${after.length}`, "Content-Length": String(after.length - start), ETag: '"new"' });
        return res.end(after.subarray(start));
      }
      res.writeHead(200, { "Content-Length": String(after.length), ETag: '"new"' });
      res.end(after);
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });

  afterAll(() => new Promise<void>((resolve) => server.close(() => resolve())));

  it("takes the 200 answer to its If-Range and writes the new object from the start", async () => {
    const out = path.join(work, "changed.bin");
    await fs.writeFile(out, before.subarray(0, 1000));
    expect(await downloadFile(new URL(`${base}/object`), out, after.length)).toMatchObject({ resumedFrom: 0 });
    expect(ranges).toEqual(["bytes=1000-"]);
    expect((await fs.readFile(out)).equals(after)).toBe(true);
  });
});
