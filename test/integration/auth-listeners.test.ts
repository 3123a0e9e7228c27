/**
 * The two-listener deployment: a public listener for users and an internal one for
 * services, each with its own policy, in one process. The same service token streams
 * image data on the internal listener and is refused on the public one. Bad policies
 * stop start-up with a message naming the rule.
 */
import { randomBytes } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DiskFormat, ImageStatus } from "../../src/gen/imagetransfer/v1/image_pb.js";
import { apiKey, Code, connectClients, connectError } from "../helpers/auth.js";
import { startTestService, type TestService } from "../helpers/service.js";

const user = apiKey("alice", "alpha", ["member"]);
const compute = apiKey("compute", "services", ["service"]);

let dir: string;
let service: TestService;
let logText = "";

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "itx-listeners-"));
  // The internal listener's rules come from a policy file: it serves no temporary URLs.
  const internalPolicy = join(dir, "internal-policy.yaml");
  await writeFile(internalPolicy, 'data_put: "!"\ndata_get: "!"\n');
  const sink = new Writable({
    write(chunk, _encoding, done) {
      logText += chunk.toString();
      done();
    },
  });
  service = await startTestService(
    {
      auth: { apiKeys: [user.entry, compute.entry] },
      listeners: [
        { name: "public", address: "127.0.0.1:0", policy: { upload_image_data: "!", download_image_data: "!" } },
        { name: "internal", address: "127.0.0.1:0", policyFile: internalPolicy },
      ],
    },
    { logger: pino({ level: "info" }, sink) },
  );
});

afterAll(async () => {
  await service?.stop();
  await rm(dir, { recursive: true, force: true });
});

async function* upload(imageId: string, bytes: Buffer) {
  yield { imageId, diskFormat: DiskFormat.RAW, chunk: bytes };
}

describe("two listeners with their own policies", () => {
  it("listen on two addresses", () => {
    expect(Object.keys(service.urls)).toEqual(["public", "internal"]);
    expect(service.urls.public).not.toBe(service.urls.internal);
    expect(service.url).toBe(service.urls.public);
  });

  it("let the same service token stream image data on the internal listener only", async () => {
    const { image } = await connectClients(service.urls.public!, user.token).images.createImage({ name: "boot-disk" });
    const bytes = Buffer.concat([randomBytes(64 * 1024), Buffer.alloc(64 * 1024)]);

    const refused = await connectError(connectClients(service.urls.public!, compute.token).transfer.uploadImageData(upload(image!.id, bytes)));
    expect(refused.code).toBe(Code.PermissionDenied);
    expect(refused.rawMessage).toBe('upload_image_data is not allowed for compute on listener "public"');

    const internal = connectClients(service.urls.internal!, compute.token);
    const uploaded = await internal.transfer.uploadImageData(upload(image!.id, bytes));
    expect(uploaded.image).toMatchObject({ owner: "alpha", status: ImageStatus.ACTIVE });

    let read = 0;
    for await (const { chunk } of internal.transfer.downloadImageData({ imageId: image!.id })) read += chunk.length;
    expect(read).toBe(bytes.length);
    const publicRead = connectClients(service.urls.public!, compute.token).transfer.downloadImageData({ imageId: image!.id });
    const err = await connectError(async () => {
      for await (const _ of publicRead);
    });
    expect(err.code).toBe(Code.PermissionDenied);
  });

  it("serve temporary URLs where the listener's policy allows them", async () => {
    const { url } = await connectClients(service.urls.public!, user.token).transfer.createUploadUrl({});
    const body = Buffer.concat([randomBytes(4096), Buffer.alloc(4096)]);
    const onInternal = new URL(url);
    onInternal.host = new URL(service.urls.internal!).host;
    const refused = await fetch(onInternal, { method: "PUT", body });
    expect(refused.status).toBe(403);
    expect(await refused.text()).toMatch(/this listener does not serve temporary URLs/);
    expect((await fetch(url, { method: "PUT", body })).status).toBe(201);
  });

  it("name the listener in the audit log", () => {
    const audits = logText
      .split("\n")
      .filter(Boolean)
      .map((l) => JSON.parse(l))
      .filter((l) => l.audit && l.action === "upload_image_data");
    expect(audits.map((a) => [a.listener, a.subject, a.outcome])).toEqual([
      ["public", "compute", "PermissionDenied"],
      ["internal", "compute", "OK"],
    ]);
    expect(logText).not.toContain(compute.token);
  });
});

describe("bad policies stop start-up, naming the rule", () => {
  const attempts: Array<[string, Record<string, unknown>, string]> = [
    ["a dangling operator", { policy: { get_image: "role:admin or" } }, 'listener "default": policy rule "get_image": expected a check (like role:admin), @, ! or ( at the end in "role:admin or"'],
    ["an unknown check", { policy: { get_image: "group:admins" } }, 'listener "default": policy rule "get_image": unknown check "group:" at character 1; use role:, project:, subject: or rule: in "group:admins"'],
    ["an unbalanced parenthesis", { policy: { get_image: "(role:admin or role:service" } }, 'listener "default": policy rule "get_image": expected ) at the end in "(role:admin or role:service"'],
    ["a reference to no rule", { policy: { get_image: "rule:readers" } }, 'listener "default": policy rule "get_image": rule:readers names no rule'],
    ["a cycle", { policy: { a: "rule:b", b: "rule:a" } }, 'listener "default": policy rule "a": rules refer to each other in a cycle: a -> b -> a'],
    ["an unknown target field", { policy: { get_image: "project:%(project_id)s" } }, 'listener "default": policy rule "get_image": unknown target field %(project_id)s at character 1; known: %(owner)s in "project:%(project_id)s"'],
  ];
  for (const [name, overrides, message] of attempts) {
    it(name, async () => {
      await expect(startTestService({ auth: { apiKeys: [user.entry] }, ...overrides })).rejects.toThrow(message);
    });
  }

  it("a policy file that is not a mapping of rules", async () => {
    const file = join(dir, "bad-policy.yaml");
    await writeFile(file, "- role:admin\n");
    await expect(startTestService({ auth: { apiKeys: [user.entry] }, policyFile: file })).rejects.toThrow(`policyFile: ${file} must map rule names to rules`);
  });
});
