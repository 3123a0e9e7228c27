import { inject, injectable } from "tsyringe";
import type { Config } from "../config/config.js";
import type { Repository, TaskChange } from "../persistence/repository.js";
import { Tokens } from "../tokens.js";
import { currentTraceParent } from "../tracing.js";
import { isDomainError, notFound, unavailable } from "./errors.js";
import { isTerminal, type TaskProgress, type TaskRecord } from "./task.js";

/** Progress is written at most this often per task; watchers see about ten updates a second. */
export const PROGRESS_INTERVAL_MS = 100;

/**
 * Where task changes are made and watched. Changes made in this process wake this
 * process's watchers at once; changes made by other processes sharing the database
 * are found by polling the task's change log, so every watcher sees every change in
 * version order wherever it was made.
 */
@injectable()
export class TaskHub {
  private readonly waiters = new Map<string, Set<() => void>>();
  private readonly reporters = new Map<string, ProgressReporter>();
  private readonly pollMs: number;
  private readonly closing = new AbortController();
  private readonly endListeners: Array<(task: TaskRecord) => void> = [];

  constructor(
    @inject(Tokens.Repository) private readonly repository: Repository,
    @inject(Tokens.Config) config: Pick<Config, "watchPollMs">,
  ) {
    this.pollMs = config.watchPollMs;
  }

  async create(task: TaskRecord): Promise<TaskRecord> {
    const traceParent = currentTraceParent();
    if (traceParent) task = { ...task, traceParent };
    await this.repository.insertTask(task);
    return task;
  }

  /**
   * Applies a conditional change. Before a state change, the progress pending for the
   * task is written first, so the state is never overtaken by an older progress write.
   * Other changes (lease renewals) do not wait for progress.
   */
  async change(id: string, change: TaskChange): Promise<TaskRecord> {
    if (change.state !== undefined) await this.reporters.get(id)?.flush();
    const task = await this.repository.updateTask(id, change);
    if (isTerminal(task.state)) this.reporters.delete(id);
    this.wake(id);
    for (const listener of this.endListeners) if (isTerminal(task.state)) listener(task);
    return task;
  }

  /** Calls `listener` when a task ends through this process (e.g. canceled here), so a local run can stop at once. */
  onTaskEnded(listener: (task: TaskRecord) => void): void {
    this.endListeners.push(listener);
  }

  /**
   * Records progress of a running task, coalesced to one write per PROGRESS_INTERVAL_MS.
   * With a lease, each write is made only while its owner holds the task, and extends
   * the lease by `leaseMs`: a worker that makes progress keeps its task even when its
   * lease keeper is slow.
   */
  reportProgress(id: string, progress: TaskProgress, lease?: { owner: string; leaseMs: number }): void {
    let reporter = this.reporters.get(id);
    if (!reporter) {
      reporter = new ProgressReporter(async (p) => {
        try {
          await this.repository.updateTask(id, {
            expect: ["running"],
            leaseOwner: lease?.owner,
            patch: lease ? { progress: p, lease: { owner: lease.owner, expireTime: Date.now() + lease.leaseMs } } : { progress: p },
          });
          this.wake(id);
        } catch (err) {
          // The task has ended or moved on (e.g. canceled); its worker learns that from its own checks.
          if (!isDomainError(err) || err.kind !== "failed-precondition") throw err;
        }
      });
      this.reporters.set(id, reporter);
    }
    reporter.report(progress);
  }

  /**
   * Stops writing progress for a task and waits for a write in flight: a worker handing
   * a task over must not extend the lease it is about to release.
   */
  async stopProgress(id: string): Promise<void> {
    const reporter = this.reporters.get(id);
    this.reporters.delete(id);
    await reporter?.close();
  }

  /** The current snapshot, then every change in version order, until a terminal state. */
  async *watch(id: string, signal: AbortSignal): AsyncGenerator<TaskRecord> {
    let task = await this.repository.findTask(id);
    if (!task) throw notFound("task", id);
    yield task;
    while (!isTerminal(task.state)) {
      await this.waitForChange(id, signal);
      const changes = await this.repository.listTaskChanges(id, task.version);
      // A change whose log entry was lost is still visible on the task itself.
      const latest = changes.at(-1) ?? (await this.repository.findTask(id));
      if (latest && latest.version > task.version && !changes.includes(latest)) changes.push(latest);
      for (const change of changes) {
        task = change;
        yield change;
        if (isTerminal(change.state)) break;
      }
    }
  }

  /** Ends every watch with UNAVAILABLE, so clients can tell a shutdown from a network fault and reconnect. */
  close(): void {
    this.closing.abort(unavailable("the server is shutting down; watch again to continue"));
  }

  private wake(id: string): void {
    for (const wake of this.waiters.get(id) ?? []) wake();
  }

  /** Resolves when this process changes the task or the poll interval passes; rejects on abort. */
  private waitForChange(id: string, signal: AbortSignal): Promise<void> {
    return new Promise((resolve, reject) => {
      const waiters = this.waiters.get(id) ?? new Set();
      this.waiters.set(id, waiters);
      const settle = (outcome: () => void) => {
        clearTimeout(timer);
        signal.removeEventListener("abort", onAbort);
        this.closing.signal.removeEventListener("abort", onAbort);
        waiters.delete(wake);
        if (waiters.size === 0) this.waiters.delete(id);
        outcome();
      };
      const wake = () => settle(resolve);
      const onAbort = () => settle(() => reject(signal.aborted ? signal.reason : this.closing.signal.reason));
      const timer = setTimeout(wake, this.pollMs);
      waiters.add(wake);
      if (signal.aborted || this.closing.signal.aborted) return onAbort();
      signal.addEventListener("abort", onAbort, { once: true });
      this.closing.signal.addEventListener("abort", onAbort, { once: true });
    });
  }
}

/**
 * Keeps the latest progress and writes it at most once per interval, one write at a
 * time, so a fast pipeline cannot flood the database. A new stage is written without
 * waiting, and every stage is written at least once, however short it was.
 */
export class ProgressReporter {
  /** At most one sample per stage, oldest first; only the last one is replaced by newer samples. */
  private pending: TaskProgress[] = [];
  private inFlight?: Promise<void>;
  private timer?: NodeJS.Timeout;
  private flushing = false;
  private closed = false;
  private lastWrite = 0;
  private lastStage?: string;

  constructor(
    private readonly write: (progress: TaskProgress) => Promise<void>,
    private readonly intervalMs = PROGRESS_INTERVAL_MS,
  ) {}

  report(progress: TaskProgress): void {
    if (this.closed) return;
    const last = this.pending.at(-1);
    if (last && last.stage === progress.stage) this.pending[this.pending.length - 1] = progress;
    else this.pending.push(progress);
    this.schedule();
  }

  /**
   * Writes what is pending now, in order, and waits for it. Progress reported meanwhile
   * waits for the next interval: a pipeline still reporting never keeps the caller waiting.
   */
  async flush(): Promise<void> {
    this.flushing = true;
    try {
      clearTimeout(this.timer);
      this.timer = undefined;
      await this.inFlight;
      const due = this.pending.length;
      for (let i = 0; i < due && this.pending.length > 0; i++) {
        await this.writeNext();
      }
    } finally {
      this.flushing = false;
      this.schedule();
    }
  }

  /** Drops what is pending, writes nothing more, and waits for a write in flight. */
  async close(): Promise<void> {
    this.closed = true;
    this.pending = [];
    clearTimeout(this.timer);
    this.timer = undefined;
    await this.inFlight;
  }

  private schedule(): void {
    if (this.flushing || this.timer || this.inFlight || this.pending.length === 0) return;
    const stageChanged = this.pending[0]!.stage !== this.lastStage;
    const wait = stageChanged ? 0 : this.lastWrite + this.intervalMs - Date.now();
    if (wait <= 0) void this.writeNext();
    else this.timer = setTimeout(() => void this.writeNext(), wait);
  }

  private async writeNext(): Promise<void> {
    this.timer = undefined;
    const progress = this.pending.shift();
    if (!progress) return;
    this.lastWrite = Date.now();
    this.lastStage = progress.stage;
    this.inFlight = this.write(progress)
      .catch(() => undefined)
      .finally(() => {
        this.inFlight = undefined;
        this.schedule();
      });
    await this.inFlight;
  }
}
