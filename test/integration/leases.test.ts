import { afterAll, beforeAll, expect, it } from "vitest";
import { newId } from "../../src/core/ids.js";
import { TaskHub } from "../../src/core/task-hub.js";
import { newTaskRecord, type TaskRecord } from "../../src/core/task.js";
import type { TaskRunner } from "../../src/core/task-runner.js";
import { Tokens } from "../../src/tokens.js";
import { startTestService, type TestService } from "../helpers/service.js";

let service: TestService;
beforeAll(async () => {
  service = await startTestService({ maxAttempts: 2, leaseSeconds: 1 });
});
afterAll(() => service?.stop());

/** A task left RUNNING by a worker that died: its lease lapsed a while ago. */
async function orphan(attempts: number): Promise<TaskRecord> {
  const hub = service.container.resolve(TaskHub);
  const task = await hub.create(newTaskRecord({ id: newId(), type: "export", imageId: newId(), owner: "default" }, Date.now()));
  return service.container.resolve(Tokens.Repository).updateTask(task.id, {
    expect: ["pending"],
    state: "running",
    patch: { attempts, lease: { owner: "dead-worker", expireTime: Date.now() - 60_000 } },
  });
}

async function finalState(id: string): Promise<TaskRecord> {
  let last: TaskRecord | undefined;
  for await (const t of service.container.resolve(TaskHub).watch(id, AbortSignal.timeout(20_000))) last = t;
  return last!;
}

it("takes over a task whose worker died, as a new attempt under its own lease", async () => {
  const task = await orphan(1);
  const done = await finalState(task.id);
  // The export fails (its image does not exist), but only after this worker claimed it as attempt 2.
  expect(done).toMatchObject({ state: "failed", attempts: 2, error: { reason: "IMAGE_NOT_ACTIVE" } });
  const runner = service.container.resolve(Tokens.TaskRunner) as TaskRunner;
  const claims = (await service.container.resolve(Tokens.Repository).listTaskChanges(task.id, 0)).filter((c) => c.attempts === 2);
  expect(claims[0]?.lease?.owner).toBe(runner.workerId);
});

it("gives up on a task that has used all its attempts, saying so", async () => {
  const task = await orphan(2);
  const done = await finalState(task.id);
  expect(done).toMatchObject({ state: "failed", attempts: 2, error: { reason: "ATTEMPTS_EXHAUSTED", message: expect.stringContaining("2 times") } });
});
