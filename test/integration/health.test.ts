import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, expect, it } from "vitest";
import { Health, HealthCheckResponse_ServingStatus as Serving } from "../../src/gen/grpc/health/v1/health_pb.js";
import { startTestService, type TestService } from "../helpers/service.js";

let service: TestService;
beforeAll(async () => {
  // The only store names a plugin that is not installed: nothing can hold image data.
  service = await startTestService({ stores: [{ name: "s3", plugin: "store-s3-not-installed", default: true, staging: true }] });
});
afterAll(() => service?.stop());

it("reports NOT_SERVING for data transfers, and overall, while no store is usable; the catalogue still serves", async () => {
  const health = createClient(Health, createGrpcTransport({ baseUrl: service.url }));
  expect((await health.check({ service: "imagetransfer.v1.TransferService" })).status).toBe(Serving.NOT_SERVING);
  expect((await health.check({ service: "" })).status).toBe(Serving.NOT_SERVING);
  expect((await health.check({ service: "imagetransfer.v1.ImageService" })).status).toBe(Serving.SERVING);
  expect((await health.check({ service: "imagetransfer.v1.TaskService" })).status).toBe(Serving.SERVING);
});
