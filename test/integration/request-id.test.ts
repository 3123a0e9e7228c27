import { afterAll, beforeAll, expect, it } from "vitest";
import { startTestService, type TestService } from "../helpers/service.js";

let service: TestService;
beforeAll(async () => {
  service = await startTestService();
});
afterAll(() => service?.stop());

const call = (path: string, body: unknown, headers: Record<string, string> = {}) =>
  fetch(`${service.url}/${path}`, { method: "POST", headers: { "content-type": "application/json", ...headers }, body: JSON.stringify(body) });

it("answers every call with a request id: the caller's own, or a new one, on errors too", async () => {
  const own = await call("imagetransfer.v1.ImageService/ListImages", {}, { "x-request-id": "support-case-42" });
  expect(own.status).toBe(200);
  expect(own.headers.get("x-request-id")).toBe("support-case-42");

  const fresh = await call("imagetransfer.v1.ImageService/GetImage", { id: "nope" });
  expect(fresh.status).toBe(400);
  expect(fresh.headers.get("x-request-id")).toMatch(/^[0-9a-f-]{36}$/);

  // Something that is not an id is not echoed back.
  const odd = await call("imagetransfer.v1.ImageService/ListImages", {}, { "x-request-id": "a b <script>" });
  expect(odd.headers.get("x-request-id")).toMatch(/^[0-9a-f-]{36}$/);
});
