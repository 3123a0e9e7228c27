import { randomBytes } from "node:crypto";
import { mkdir, rm } from "node:fs/promises";
import { hostname } from "node:os";
import { join, resolve } from "node:path";
import type { Logger } from "pino";
import { isStoreError } from "../plugins/plugin-api.js";
import { isDomainError } from "./errors.js";
import { whileUnavailable } from "./retry.js";
import type { TaskChange } from "../persistence/repository.js";
import type { TaskHub } from "./task-hub.js";
import type { TaskError, TaskRecord, TaskType } from "./task.js";
import type { Metrics } from "../metrics.js";
import { traceTask, type TaskTrace } from "../tracing.js";
import { Handover, type Executor, type TransferEnvironment } from "./transfer/environment.js";

/** How often the runner looks for claimable tasks and checks that its running tasks are still its to run. */
const POLL_MS = 500;

/**
 * Runs tasks in this process. A task is claimed with one conditional change that
 * accepts a pending task or a running one whose lease expired (its worker died), and
 * is run under a lease the runner renews every third of its length (progress writes extend
 * it too). Every write the run makes
 * is conditional on holding the lease, so a worker that lost it stops at once and
 * leaves the task to its new holder. Cancellation, here or in any process, stops a
 * run within one poll.
 */
export class TaskRunner {
  /** This process as a lease holder. */
  readonly workerId = `${hostname()}-${process.pid}-${randomBytes(3).toString("hex")}`;
  private readonly running = new Map<string, AbortController>();
  private readonly stopping = new AbortController();
  private timer?: NodeJS.Timeout;
  private renewer?: NodeJS.Timeout;
  private loop = Promise.resolve();
  /** The tick queued behind the one running, if any: pokes join it instead of queueing more. */
  private queued?: { checkRunning: boolean };
  private readonly workRoot: string;
  private readonly leaseMs: number;

  constructor(
    private readonly hub: TaskHub,
    private readonly env: TransferEnvironment,
    private readonly executors: Record<TaskType, Executor>,
    private readonly logger: Logger,
    private readonly metrics: Metrics,
  ) {
    this.workRoot = resolve(env.config.dataDir, "work");
    this.leaseMs = env.config.leaseSeconds * 1000;
    // A cancel made in this process stops the run at once; one made elsewhere, within a poll.
    hub.onTaskEnded((task) => this.running.get(task.id)?.abort(new Error(`task ${task.id} is ${task.state}`)));
  }

  start(): void {
    this.timer = setInterval(() => this.schedule(true), POLL_MS);
    this.timer.unref();
    // A third of the lease: two renewals may be slow or lost before the lease lapses.
    this.renewer = setInterval(() => void this.renewLeases(), this.leaseMs / 3);
    this.renewer.unref();
    this.schedule(true);
  }

  /** The ids of the tasks running in this process now. */
  runningTasks(): Set<string> {
    return new Set(this.running.keys());
  }

  /**
   * Looks for work now instead of at the next poll, e.g. right after a task is created; a no-op
   * unless started, and while every slot is taken (a run that ends pokes again). Only claims:
   * checking the running tasks is the poll's job, so a burst of new tasks costs no reads of them.
   */
  poke(): void {
    if (!this.timer || this.running.size >= this.env.config.maxConcurrentTasks) return;
    this.schedule(false);
  }

  /** Queues a tick behind the running one; any number of requests meanwhile share one tick. */
  private schedule(checkRunning: boolean): void {
    if (this.queued) {
      this.queued.checkRunning ||= checkRunning;
      return;
    }
    const next = { checkRunning };
    this.queued = next;
    this.loop = this.loop
      .then(() => {
        this.queued = undefined;
        return this.tick(next.checkRunning);
      })
      .catch((err) => this.logger.warn({ err: String(err) }, "task runner poll failed"));
  }

  /**
   * Stops claiming, lets running tasks finish for up to `graceMs` (or until `hurry`
   * aborts), then hands the rest over: their pipelines stop, their files are removed, and
   * their leases are released so another worker takes them over at once.
   */
  async stop(options: { graceMs?: number; hurry?: AbortSignal } = {}): Promise<void> {
    clearInterval(this.timer);
    this.timer = undefined;
    this.stopping.abort();
    await this.loop;
    const deadline = Date.now() + (options.graceMs ?? 0);
    while (this.running.size > 0 && Date.now() < deadline && !options.hurry?.aborted) {
      await new Promise((r) => setTimeout(r, 50));
    }
    clearInterval(this.renewer);
    const handedOver = [...this.running.keys()];
    for (const controller of this.running.values()) controller.abort(new Handover("the service is stopping"));
    while (this.running.size > 0) await new Promise((r) => setTimeout(r, 20));
    await Promise.allSettled(
      handedOver.map(async (id) => {
        // No late progress write may extend the lease after it is released.
        await this.hub.stopProgress(id);
        await this.hub.change(id, { expect: ["running"], leaseOwner: this.workerId, patch: { lease: { owner: this.workerId, expireTime: 0 } } });
      }),
    );
  }

  private async tick(checkRunning: boolean): Promise<void> {
    if (checkRunning) await this.checkRunning();
    const free = this.env.config.maxConcurrentTasks - this.running.size;
    if (free <= 0 || this.stopping.signal.aborted) return;
    const now = Date.now();
    for (const task of fairOrder(await this.env.repository.listClaimableTasks(now, free * 20))) {
      if (this.running.size >= this.env.config.maxConcurrentTasks || this.stopping.signal.aborted) return;
      if (this.running.has(task.id)) continue;
      const claim = { expect: [task.state], leaseExpiredBefore: now };
      if (task.attempts >= this.env.config.maxAttempts) {
        const error = { reason: "ATTEMPTS_EXHAUSTED", message: `the task was started ${task.attempts} times without finishing; giving up` };
        await this.hub.change(task.id, { ...claim, state: "failed", patch: { error } }).catch(() => undefined);
        continue;
      }
      const claimed = await this.hub
        .change(task.id, {
          ...claim,
          state: task.state === "pending" ? "running" : undefined,
          patch: { attempts: task.attempts + 1, lease: { owner: this.workerId, expireTime: Date.now() + this.leaseMs } },
        })
        .catch(() => undefined);
      // Another worker (or a cancel) got there first.
      if (claimed) this.execute(claimed);
    }
  }

  /** A task canceled by any process, or taken away, stops here within one poll. */
  private async checkRunning(): Promise<void> {
    for (const [id, controller] of this.running) {
      const task = await this.env.repository.findTask(id);
      if (task?.state !== "running") controller.abort(new Error(`task ${id} is ${task?.state ?? "gone"}`));
      else if (task.lease?.owner !== this.workerId) controller.abort(new Handover(`task ${id} is now leased to ${task.lease?.owner}`));
    }
  }

  private async renewLeases(): Promise<void> {
    await Promise.allSettled([...this.running.keys()].map((id) => this.renew(id)));
  }

  /** Extends this worker's lease; a lease that is gone stops the run, leaving the task to its holder. */
  private async renew(id: string): Promise<void> {
    try {
      await this.hub.change(id, {
        expect: ["running"],
        leaseOwner: this.workerId,
        patch: { lease: { owner: this.workerId, expireTime: Date.now() + this.leaseMs } },
      });
    } catch (err) {
      if (isDomainError(err) && err.kind === "failed-precondition") {
        this.running.get(id)?.abort(err.reason === "LEASE_LOST" ? new Handover(err.message) : new Error(err.message));
        throw err;
      }
      // The database is unreachable: keep working; the next renewal may get through.
      this.logger.warn({ taskId: id, err: String(err) }, "could not renew a task lease");
    }
  }

  /**
   * Writes a task's final state. While the database is unreachable it keeps trying, so
   * an outcome reached meanwhile is written when the database returns, never lost.
   */
  private async finish(id: string, change: TaskChange, signal: AbortSignal): Promise<void> {
    await whileUnavailable(() => this.hub.change(id, change), signal, () =>
      this.logger.warn({ taskId: id }, "database unreachable; will write the task's final state when it is back"),
    );
  }

  private execute(task: TaskRecord): void {
    const controller = new AbortController();
    this.running.set(task.id, controller);
    this.metrics.tasksRunning.set(this.running.size);
    const started = performance.now();
    // The stage the run is in and since when, for the stage-duration histogram.
    let stage: { name: string; since: number } | undefined;
    const endStage = () => stage && this.metrics.stageDuration.observe({ stage: stage.name }, (performance.now() - stage.since) / 1000);
    const outcome = (name: "succeeded" | "failed", reason = "") => {
      this.metrics.tasksFinished.inc({ type: task.type, outcome: name, reason });
      this.metrics.taskDuration.observe({ type: task.type, outcome: name }, (performance.now() - started) / 1000);
    };
    const workDir = join(this.workRoot, task.id);
    const log = this.logger.child({ taskId: task.id, imageId: task.imageId, type: task.type, attempt: task.attempts });
    const held = { leaseOwner: this.workerId, expect: ["running" as const] };
    const run = async (trace: TaskTrace) => {
      log.info("task started");
      // A previous attempt that died may have left files here.
      await rm(workDir, { recursive: true, force: true });
      await mkdir(workDir, { recursive: true });
      try {
        const result = await this.executors[task.type](
          {
            task,
            signal: controller.signal,
            workDir,
            progress: (name, bytesDone, bytesTotal) => {
              // A stopped run reports nothing: its task may belong to another worker now.
              if (controller.signal.aborted) return;
              if (stage?.name !== name) {
                endStage();
                stage = { name, since: performance.now() };
                trace.enterStage(name);
              }
              this.hub.reportProgress(task.id, { stage: name, bytesDone, bytesTotal }, { owner: this.workerId, leaseMs: this.leaseMs });
            },
            // Strict: before a change that must happen once, the lease must be confirmed, so wait out a database outage.
            renewLease: () =>
              whileUnavailable(
                () => this.hub.change(task.id, { ...held, patch: { lease: { owner: this.workerId, expireTime: Date.now() + this.leaseMs } } }),
                controller.signal,
              ).then(
                () => undefined,
                (err: unknown) => {
                  // Lost to another worker: stop as a handover, so the run leaves the image and stores to it.
                  if (isDomainError(err) && err.reason === "LEASE_LOST") controller.abort(new Handover(err.message));
                  throw err;
                },
              ),
          },
          this.env,
        );
        controller.signal.throwIfAborted();
        // Clean up before reporting success, so a finished task never has files left.
        await rm(workDir, { recursive: true, force: true });
        await this.finish(task.id, { ...held, state: "succeeded", patch: { result } }, controller.signal);
        outcome("succeeded");
        log.info("task succeeded");
      } catch (err) {
        if (controller.signal.aborted) {
          log.info({ reason: String(controller.signal.reason) }, "task stopped");
          return;
        }
        const error = taskError(err);
        trace.fail(error.reason, error.message);
        if (error.reason === "INTERNAL") log.error({ err }, "task failed unexpectedly");
        else log.info({ reason: error.reason, message: error.message }, "task failed");
        // As on success: a task that reads FAILED has no files left.
        await rm(workDir, { recursive: true, force: true });
        await this.finish(task.id, { ...held, state: "failed", patch: { error } }, controller.signal).catch(() => undefined);
        outcome("failed", error.reason);
      } finally {
        endStage();
        await rm(workDir, { recursive: true, force: true });
      }
    };
    void traceTask(task, run)
      .catch((err) => log.error({ err }, "task runner error"))
      .finally(() => {
        this.running.delete(task.id);
        this.metrics.tasksRunning.set(this.running.size);
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

/**
 * Oldest first within each project, and projects in turn: one project's burst of
 * imports does not hold up everybody else's.
 */
export function fairOrder(tasks: readonly TaskRecord[]): TaskRecord[] {
  const byOwner = new Map<string, TaskRecord[]>();
  for (const task of tasks) byOwner.set(task.owner, [...(byOwner.get(task.owner) ?? []), task]);
  const queues = [...byOwner.values()];
  const order: TaskRecord[] = [];
  for (let round = 0; order.length < tasks.length; round++) {
    for (const queue of queues) if (queue[round]) order.push(queue[round]!);
  }
  return order;
}
