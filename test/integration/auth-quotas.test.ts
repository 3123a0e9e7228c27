/**
 * Per-project quotas under races, on both repositories: the embedded SQLite one and
 * MongoDB (FerretDB, whose findOneAndUpdate is not atomic across connections). On
 * MongoDB the 20 racing imports are split over two service instances with their own
 * connections, as in a scaled-out deployment.
 */
import { randomBytes } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DiskFormat, ImageStatus } from "../../src/gen/imagetransfer/v1/image_pb.js";
import { TaskState } from "../../src/gen/imagetransfer/v1/task_pb.js";
import { apiKey, Code, connectClients, connectError } from "../helpers/auth.js";
import { startMongoServer, type MongoServer } from "../helpers/mongo-server.js";
import { withDatabase } from "../helpers/mongo-uri.js";
import { startTestService, type TestService } from "../helpers/service.js";
import { putFile } from "../helpers/transfer.js";

const alice = apiKey("alice", "alpha", ["member"]);
const bob = apiKey("bob", "beta", ["member"]);
const RACERS = 20;
const LIMIT = 5;

let mongo: MongoServer;
let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "itx-quota-"));
  mongo = await startMongoServer();
}, 180_000);
afterAll(async () => {
  await mongo?.stop();
  await rm(dir, { recursive: true, force: true });
});

/** Fires RACERS imports at once, spread over the servers; returns the successes and the failures. */
async function race(urls: string[], request: (i: number) => Parameters<ReturnType<typeof connectClients>["transfer"]["importImage"]>[0]) {
  const outcomes = await Promise.allSettled(
    Array.from({ length: RACERS }, (_, i) => connectClients(urls[i % urls.length]!, alice.token).transfer.importImage(request(i))),
  );
  const ok = outcomes.filter((o) => o.status === "fulfilled");
  const refused = outcomes.filter((o): o is PromiseRejectedResult => o.status === "rejected").map((o) => o.reason as { code: Code; rawMessage: string });
  return { ok, refused };
}

const backends: Array<[string, () => Record<string, unknown>]> = [
  ["embedded SQLite", () => ({})],
  ["MongoDB", () => ({ mongodbUri: withDatabase(mongo.uri, `itx_quota_${randomBytes(4).toString("hex")}`) })],
];

describe.each(backends)("quotas on %s", (_name, database) => {
  let servers: TestService[] = [];
  const start = async (quotas: Record<string, unknown>, extra: Record<string, unknown> = {}) => {
    const shared: Record<string, unknown> = { auth: { apiKeys: [alice.entry, bob.entry] }, quotas, ...database(), ...extra };
    const first = await startTestService(shared);
    servers = [first];
    // Two processes' worth of connections on MongoDB; the embedded database belongs to one process.
    if (shared.mongodbUri) servers.push(await startTestService({ ...shared, dataDir: join(dir, randomBytes(4).toString("hex")) }));
    return servers.map((s) => s.url);
  };
  const stopAll = async () => {
    await Promise.all(servers.map((s) => s.stop()));
    servers = [];
  };

  it(`lets exactly ${LIMIT} of ${RACERS} concurrent imports create images against an image quota of ${LIMIT}`, async () => {
    // api role: no tasks run, so every import stays pending and nothing else changes the counts.
    const urls = await start({ projects: { alpha: { images: LIMIT } } }, { role: "api" });
    try {
      const { seedUri } = await connectClients(urls[0]!, alice.token).transfer.createUploadUrl({});
      const { ok, refused } = await race(urls, (i) => ({ seedUri, name: `racer-${i}` }));
      expect(ok).toHaveLength(LIMIT);
      expect(refused).toHaveLength(RACERS - LIMIT);
      for (const err of refused) {
        expect(err.code).toBe(Code.ResourceExhausted);
        expect(err.rawMessage).toBe(`project "alpha" has reached its quota of ${LIMIT} images`);
      }
      const images = (await connectClients(urls[0]!, alice.token).images.listImages({ pageSize: 100 })).images;
      expect(images).toHaveLength(LIMIT);
      // Another project has its own count; deleting an image frees its place.
      expect((await connectClients(urls[0]!, bob.token).images.createImage({ name: "bobs" })).image?.owner).toBe("beta");
      const err = await connectError(connectClients(urls[0]!, alice.token).images.createImage({ name: "sixth" }));
      expect(err.code).toBe(Code.ResourceExhausted);
      await connectClients(urls[0]!, alice.token).images.deleteImage({ id: images[0]!.id });
      expect((await connectClients(urls[0]!, alice.token).images.createImage({ name: "sixth" })).image?.status).toBe(ImageStatus.QUEUED);
    } finally {
      await stopAll();
    }
  }, 120_000);

  it(`holds concurrent imports to ${LIMIT} under a race, and frees a place when an import ends`, async () => {
    const urls = await start({ default: { concurrentImports: LIMIT } }, { role: "api" });
    try {
      const { seedUri } = await connectClients(urls[0]!, alice.token).transfer.createUploadUrl({});
      const { ok, refused } = await race(urls, () => ({ seedUri }));
      expect(ok).toHaveLength(LIMIT);
      expect(new Set(refused.map((e) => e.rawMessage))).toEqual(new Set([`project "alpha" has reached its quota of ${LIMIT} concurrent imports`]));
      const first = (ok[0] as PromiseFulfilledResult<{ task?: { id: string } }>).value.task!.id;
      const canceled = await connectClients(urls[0]!, alice.token).tasks.cancelTask({ id: first });
      expect(canceled.task?.state).toBe(TaskState.CANCELED);
      expect((await connectClients(urls[0]!, alice.token).transfer.importImage({ seedUri })).task?.state).toBe(TaskState.PENDING);
      expect((await connectError(connectClients(urls[0]!, alice.token).transfer.importImage({ seedUri }))).code).toBe(Code.ResourceExhausted);
    } finally {
      await stopAll();
    }
  }, 120_000);

  it("refuses imports once the project stores its quota of bytes", async () => {
    const urls = await start({ default: { storedBytes: 64 * 1024 } });
    try {
      const c = connectClients(urls[0]!, alice.token);
      const file = join(dir, `disk-${randomBytes(4).toString("hex")}.raw`);
      await writeFile(file, Buffer.concat([randomBytes(64 * 1024), Buffer.alloc(64 * 1024)]));
      const { url, seedUri } = await c.transfer.createUploadUrl({});
      await putFile(url, file);
      const { task } = await c.transfer.importImage({ seedUri, diskFormat: DiskFormat.RAW });
      let state = task!.state;
      for await (const { task: t } of c.tasks.watchTask({ id: task!.id })) state = t!.state;
      expect(state).toBe(TaskState.SUCCEEDED);
      const err = await connectError(c.transfer.importImage({ seedUri }));
      expect(err.code).toBe(Code.ResourceExhausted);
      expect(err.rawMessage).toBe(`project "alpha" has reached its quota of ${64 * 1024} stored bytes`);
    } finally {
      await stopAll();
    }
  }, 120_000);
});
