import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { expect, it } from "vitest";
import { newId } from "../../src/core/ids.js";
import { TaskHub } from "../../src/core/task-hub.js";
import { newTaskRecord } from "../../src/core/task.js";
import { TaskService, TaskState } from "../../src/gen/imagetransfer/v1/task_pb.js";
import { startTestService } from "../helpers/service.js";

it("ends open watches with UNAVAILABLE on shutdown, promptly, so clients know to reconnect", async () => {
  const service = await startTestService({ role: "api" });
  const hub = service.container.resolve(TaskHub);
  const task = await hub.create(newTaskRecord({ id: newId(), type: "import", imageId: newId(), owner: "default" }, Date.now()));
  const client = createClient(TaskService, createGrpcTransport({ baseUrl: service.url }));
  const states: TaskState[] = [];
  const watching = (async () => {
    for await (const { task: t } of client.watchTask({ id: task.id })) states.push(t!.state);
  })().catch((e: unknown) => e);
  await new Promise((r) => setTimeout(r, 100));

  const started = Date.now();
  await service.stop();
  const err = await watching;
  expect(states).toEqual([TaskState.PENDING]);
  expect(err).toBeInstanceOf(ConnectError);
  expect(err).toMatchObject({ code: Code.Unavailable, rawMessage: expect.stringContaining("shutting down") });
  // Well inside the 2 s grace period after which remaining connections are cut.
  expect(Date.now() - started).toBeLessThan(1_500);
});
