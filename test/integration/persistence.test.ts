import { randomBytes } from "node:crypto";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { newId } from "../../src/core/ids.js";
import { TaskHub } from "../../src/core/task-hub.js";
import { newTaskRecord } from "../../src/core/task.js";
import { Health, HealthCheckResponse_ServingStatus as Serving } from "../../src/gen/grpc/health/v1/health_pb.js";
import { AdminService } from "../../src/gen/imagetransfer/v1/admin_pb.js";
import { ImageService, ImageStatus } from "../../src/gen/imagetransfer/v1/image_pb.js";
import { TaskService, TaskState } from "../../src/gen/imagetransfer/v1/task_pb.js";
import { startMongoServer, type MongoServer } from "../helpers/mongo-server.js";
import { withDatabase } from "../helpers/mongo-uri.js";
import { startTestService } from "../helpers/service.js";

let mongo: MongoServer;
beforeAll(async () => {
  mongo = await startMongoServer();
});
afterAll(() => mongo?.stop());

const adapters = [
  { name: "embedded", overrides: () => ({}) },
  { name: "MongoDB", overrides: () => ({ mongodbUri: withDatabase(mongo.uri, `itx_restart_${randomBytes(4).toString("hex")}`) }) },
];

describe.each(adapters)("a restart with the $name database", ({ overrides }) => {
  it("keeps images and tasks, with their states and order", async () => {
    // role "api": the tasks made here are the test's, not work for a runner.
    const settings = { ...overrides(), role: "api" };
    const first = await startTestService(settings);
    const images = createClient(ImageService, createGrpcTransport({ baseUrl: first.url }));
    const created = [];
    for (const name of ["one", "two", "three"]) created.push((await images.createImage({ name, properties: { os: "linux" } })).image!);
    await images.deleteImage({ id: created[1]!.id });
    const hub = first.container.resolve(TaskHub);
    const task = await hub.create(newTaskRecord({ id: newId(), type: "import", imageId: created[0]!.id, owner: "default" }, Date.now()));
    await hub.change(task.id, { state: "running", patch: { attempts: 1 } });
    await first.stop({ keepData: true });

    const second = await startTestService({ ...settings, dataDir: first.dataDir });
    try {
      const again = createClient(ImageService, createGrpcTransport({ baseUrl: second.url }));
      const { images: listed } = await again.listImages({});
      expect(listed.map((i) => i.name)).toEqual(["one", "three"]);
      expect(listed[0]).toMatchObject({ status: ImageStatus.QUEUED, properties: { os: "linux" } });
      await expect(again.getImage({ id: created[1]!.id })).rejects.toMatchObject({ code: Code.NotFound });
      const tasks = createClient(TaskService, createGrpcTransport({ baseUrl: second.url }));
      expect((await tasks.getTask({ id: task.id })).task).toMatchObject({ state: TaskState.RUNNING, attempts: 1, version: 2n });
    } finally {
      await second.stop();
    }
  });
});

describe("an unreachable MongoDB", () => {
  it("gives UNAVAILABLE and NOT_SERVING while it is down, and the server recovers by itself", async () => {
    // A server of its own, so killing it does not disturb the other tests.
    const db = await startMongoServer();
    const service = await startTestService({ mongodbUri: withDatabase(db.uri, "itx_outage") });
    try {
      const images = createClient(ImageService, createGrpcTransport({ baseUrl: service.url }));
      const health = createClient(Health, createGrpcTransport({ baseUrl: service.url }));
      const { image } = await images.createImage({ name: "before" });
      expect((await health.check({ service: "" })).status).toBe(Serving.SERVING);

      const restart = await db.outage!();
      const err = await images.getImage({ id: image!.id }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ConnectError);
      expect(err).toMatchObject({ code: Code.Unavailable, rawMessage: expect.stringMatching(/database is unreachable/) });
      expect((await health.check({ service: "imagetransfer.v1.ImageService" })).status).toBe(Serving.NOT_SERVING);
      // Operators still get a status, saying what is wrong.
      const status = await createClient(AdminService, createGrpcTransport({ baseUrl: service.url })).getStatus({});
      expect(status).toMatchObject({ database: "mongodb", databaseReachable: false });

      await restart();
      const deadline = Date.now() + 30_000;
      let name: string | undefined;
      while (Date.now() < deadline && name === undefined) {
        name = await images.getImage({ id: image!.id }).then((r) => r.image?.name, () => undefined);
        if (name === undefined) await new Promise((r) => setTimeout(r, 250));
      }
      expect(name).toBe("before");
      expect((await health.check({ service: "" })).status).toBe(Serving.SERVING);
    } finally {
      await service.stop();
      await db.stop();
    }
  }, 90_000);
});
