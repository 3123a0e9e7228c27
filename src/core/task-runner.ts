import { mkdir, rm } from "node:fs/promises";
import { join, resolve } from "node:path";
import type { Logger } from "pino";
import { isStoreError } from "../plugins/plugin-api.js";
import { isDomainError } from "./errors.js";
import type { TaskHub } from "./task-hub.js";
import type { TaskError, TaskRecord, TaskType } from "./task.js";
import type { Executor, TransferEnvironment } from "./transfer/environment.js";

/** How often the runner looks for pending tasks and checks that its running tasks are still its to run. */
const POLL_MS = 500;

/**
 * Runs tasks in this process: claims pending tasks (oldest first) up to the configured
 * limit with a conditional PENDING -> RUNNING change, so among several processes only
 * one runs each task, and stops a run at once when its task is canceled here or
 * elsewhere.
 */
export class TaskRunner {
  private readonly running = new Map<string, AbortController>();
  private readonly stopping = new AbortController();
  private timer?: NodeJS.Timeout;
  private loop = Promise.resolve();
  private readonly workRoot: string;

  constructor(
    private readonly hub: TaskHub,
    private readonly env: TransferEnvironment,
    private readonly executors: Record<TaskType, Executor>,
    private readonly logger: Logger,
  ) {
    this.workRoot = resolve(env.config.dataDir, "work");
  }

  start(): void {
    this.timer = setInterval(() => this.poke(), POLL_MS);
    this.timer.unref();
    this.poke();
  }

  /** Looks for work now instead of at the next poll, e.g. right after a task is created; a no-op unless started. */
  poke(): void {
    if (!this.timer) return;
    this.loop = this.loop.then(() => this.tick()).catch((err) => this.logger.warn({ err: String(err) }, "task runner poll failed"));
  }

  /** Stops claiming, aborts running tasks and waits for them to clean up. */
  async stop(): Promise<void> {
    clearInterval(this.timer);
    this.timer = undefined;
    this.stopping.abort();
    for (const controller of this.running.values()) controller.abort(new Error("the service is stopping"));
    await this.loop;
    while (this.running.size > 0) await new Promise((r) => setTimeout(r, 20));
  }

  private async tick(): Promise<void> {
    await this.checkRunning();
    const free = this.env.config.maxConcurrentTasks - this.running.size;
    if (free <= 0 || this.stopping.signal.aborted) return;
    const { items } = await this.env.repository.listTasks({ filter: { state: "pending" }, limit: free * 2 });
    for (const task of items) {
      if (this.running.size >= this.env.config.maxConcurrentTasks || this.stopping.signal.aborted) return;
      const claimed = await this.hub.change(task.id, { expect: ["pending"], state: "running", patch: { attempts: task.attempts + 1 } }).catch(() => undefined);
      // Another process (or a cancel) got there first.
      if (claimed) this.execute(claimed);
    }
  }

  /** A task canceled by any process, or taken away, stops here within one poll. */
  private async checkRunning(): Promise<void> {
    for (const [id, controller] of this.running) {
      const task = await this.env.repository.findTask(id);
      if (task?.state !== "running") controller.abort(new Error(`task ${id} is ${task?.state ?? "gone"}`));
    }
  }

  private execute(task: TaskRecord): void {
    const controller = new AbortController();
    this.running.set(task.id, controller);
    const workDir = join(this.workRoot, task.id);
    const log = this.logger.child({ taskId: task.id, imageId: task.imageId, type: task.type });
    const run = async () => {
      log.info("task started");
      await mkdir(workDir, { recursive: true });
      try {
        const result = await this.executors[task.type](
          {
            task,
            signal: controller.signal,
            workDir,
            progress: (stage, bytesDone, bytesTotal) => this.hub.reportProgress(task.id, { stage, bytesDone, bytesTotal }),
          },
          this.env,
        );
        controller.signal.throwIfAborted();
        // Clean up before reporting success, so a finished task never has files left.
        await rm(workDir, { recursive: true, force: true });
        await this.hub.change(task.id, { expect: ["running"], state: "succeeded", patch: { result } });
        log.info("task succeeded");
      } catch (err) {
        if (controller.signal.aborted) {
          log.info({ reason: String(controller.signal.reason) }, "task stopped");
          return;
        }
        const error = taskError(err);
        if (error.reason === "INTERNAL") log.error({ err }, "task failed unexpectedly");
        else log.info({ reason: error.reason, message: error.message }, "task failed");
        await this.hub.change(task.id, { expect: ["running"], state: "failed", patch: { error } }).catch(() => undefined);
      } finally {
        await rm(workDir, { recursive: true, force: true });
      }
    };
    void run()
      .catch((err) => log.error({ err }, "task runner error"))
      .finally(() => {
        this.running.delete(task.id);
        this.poke();
      });
  }
}

/** The task error clients see: stable reason codes, messages without internals. */
function taskError(err: unknown): TaskError {
  if (isDomainError(err)) return { reason: err.reason, message: err.message };
  if (isStoreError(err)) return { reason: `STORE_${err.kind.toUpperCase().replace(/-/g, "_")}`, message: err.message };
  return { reason: "INTERNAL", message: "the task failed unexpectedly; the service log has details" };
}
