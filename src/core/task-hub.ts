import { setMaxListeners } from "node:events";
import { inject, injectable } from "tsyringe";
import type { Config } from "../config/config.js";
import type { Repository, TaskChange } from "../persistence/repository.js";
import { Tokens } from "../tokens.js";
import { currentTraceParent } from "../tracing.js";
import { isDomainError, notFound, unavailable } from "./errors.js";
import { isTerminal, type TaskProgress, type TaskRecord } from "./task.js";

/** Progress is written at most this often per task; watchers see about ten updates a second. */
export const PROGRESS_INTERVAL_MS = 100;

/** The latest changes a feed keeps: enough for a watcher a second behind; one further behind reads the change log. */
const FEED_RECORDS = 16;

/**
 * Where task changes are made and watched. All watchers of a task in this process share
 * one feed: changes made in this process reach it at once, without a read; changes made
 * by other processes sharing the database are found by one poll of the task's change log
 * per interval, so every watcher sees every change in version order wherever it was made.
 */
@injectable()
export class TaskHub {
  private readonly feeds = new Map<string, TaskFeed>();
  private readonly reporters = new Map<string, ProgressReporter>();
  private readonly pollMs: number;
  private readonly closing = new AbortController();
  private readonly endListeners: Array<(task: TaskRecord) => void> = [];

  constructor(
    @inject(Tokens.Repository) private readonly repository: Repository,
    @inject(Tokens.Config) config: Pick<Config, "watchPollMs">,
  ) {
    this.pollMs = config.watchPollMs;
    // Every watch listens for shutdown: thousands of listeners are expected, not a leak.
    setMaxListeners(0, this.closing.signal);
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
    this.feeds.get(id)?.offer(task);
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
          const task = await this.repository.updateTask(id, {
            expect: ["running"],
            leaseOwner: lease?.owner,
            patch: lease ? { progress: p, lease: { owner: lease.owner, expireTime: Date.now() + lease.leaseMs } } : { progress: p },
          });
          this.feeds.get(id)?.offer(task);
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
    // Follow first, so that no change made while the snapshot is read is missed.
    const feed = this.follow(id);
    // One pair of abort listeners per watch, not per change: they are costly to add and remove.
    let interrupt: ((reason: unknown) => void) | undefined;
    const onAbort = () => interrupt?.(signal.aborted ? signal.reason : this.closing.signal.reason);
    signal.addEventListener("abort", onAbort);
    this.closing.signal.addEventListener("abort", onAbort);
    const nextChange = () =>
      new Promise<void>((resolve, reject) => {
        if (signal.aborted || this.closing.signal.aborted) return reject(signal.aborted ? signal.reason : this.closing.signal.reason);
        if (feed.failure !== undefined) return reject(feed.failure);
        const wake = () => (feed.failure === undefined ? resolve() : reject(feed.failure));
        feed.wakers.add(wake);
        interrupt = (reason) => {
          feed.wakers.delete(wake);
          reject(reason);
        };
      });
    try {
      let task = await this.repository.findTask(id);
      if (!task) throw notFound("task", id);
      feed.offer(task);
      yield task;
      while (!isTerminal(task.state)) {
        let changes = feed.after(task.version);
        if (!changes) {
          // Further behind than the feed keeps: what this watcher missed is in the change log.
          const missed = await this.repository.listTaskChanges(id, task.version);
          changes = missed.length > 0 ? missed : feed.newerThan(task.version);
        }
        if (changes.length === 0) await nextChange();
        for (const change of changes) {
          task = change;
          yield change;
          if (isTerminal(change.state)) break;
        }
      }
    } finally {
      signal.removeEventListener("abort", onAbort);
      this.closing.signal.removeEventListener("abort", onAbort);
      this.unfollow(id, feed);
    }
  }

  /** Ends every watch with UNAVAILABLE, so clients can tell a shutdown from a network fault and reconnect. */
  close(): void {
    this.closing.abort(unavailable("the server is shutting down; watch again to continue"));
  }

  private follow(id: string): TaskFeed {
    let feed = this.feeds.get(id);
    if (!feed) {
      feed = new TaskFeed(id, this.repository, this.pollMs, (failed) => {
        if (this.feeds.get(id) === failed) this.feeds.delete(id);
      });
      this.feeds.set(id, feed);
    }
    feed.watchers++;
    return feed;
  }

  private unfollow(id: string, feed: TaskFeed): void {
    if (--feed.watchers > 0) return;
    feed.stop();
    if (this.feeds.get(id) === feed) this.feeds.delete(id);
  }
}

/**
 * The changes of one watched task, shared by its watchers in this process. `records` holds
 * the latest changes in version order with no unknown change between two of them; a record
 * that arrives ahead of a gap (another process changed the task in between, or two writes
 * here finished out of order) waits in `ahead` until one read of the change log fills the gap.
 */
class TaskFeed {
  watchers = 0;
  readonly wakers = new Set<() => void>();
  /** Why the feed could not follow the task (the database failed); its watchers end with it. */
  failure?: unknown;
  private records: TaskRecord[] = [];
  private ahead: TaskRecord[] = [];
  private reading = false;
  private stopped = false;
  private timer?: NodeJS.Timeout;
  /** When the feed last knew the task's latest version: the next poll is due pollMs later. */
  private confirmed = Date.now();

  constructor(
    private readonly id: string,
    private readonly repository: Repository,
    private readonly pollMs: number,
    private readonly onFailure: (feed: TaskFeed) => void,
  ) {
    this.schedulePoll();
  }

  /** A snapshot written or read here: the next version goes to the watchers at once, a later one after a read fills the gap. */
  offer(task: TaskRecord): void {
    const latest = this.records.at(-1)?.version;
    if (latest !== undefined && task.version <= latest) return;
    if (latest === undefined || task.version === latest + 1) {
      this.settle([task]);
    } else if (!this.ahead.some((t) => t.version === task.version)) {
      this.ahead.push(task);
      this.ahead.sort((a, b) => a.version - b.version);
      void this.fill();
    }
  }

  /** The changes after `version`, or undefined when the feed no longer holds the one right after it. */
  after(version: number): TaskRecord[] | undefined {
    const first = this.records[0];
    if (first && first.version > version + 1) return undefined;
    return this.newerThan(version);
  }

  newerThan(version: number): TaskRecord[] {
    return this.records.filter((t) => t.version > version);
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
  }

  /** Appends changes newer than the latest, then those waiting ahead that now follow on, and wakes the watchers. */
  private settle(changes: TaskRecord[]): void {
    const latest = () => this.records.at(-1)?.version ?? 0;
    for (const task of changes) if (task.version > latest()) this.records.push(task);
    while (this.ahead.length > 0 && this.ahead[0]!.version <= latest() + 1) {
      const next = this.ahead.shift()!;
      if (next.version > latest()) this.records.push(next);
    }
    if (this.records.length > FEED_RECORDS) this.records.splice(0, this.records.length - FEED_RECORDS);
    this.confirmed = Date.now();
    this.wake();
  }

  /** Reads the change log after the latest record, until nothing waits ahead; one read at a time. */
  private async fill(): Promise<void> {
    if (this.reading) return;
    this.reading = true;
    try {
      while (this.ahead.length > 0 && !this.stopped) {
        // Every record ahead now was committed before this read begins, so the read returns it.
        const covered = this.ahead.at(-1)!.version;
        const changes = await this.repository.listTaskChanges(this.id, this.records.at(-1)!.version);
        // A record missing from the log (its entry was lost) is still a change of the task.
        const missing = this.ahead.filter((t) => t.version <= covered && !changes.some((c) => c.version === t.version));
        this.ahead = this.ahead.filter((t) => t.version > covered);
        this.settle([...changes, ...missing].sort((a, b) => a.version - b.version));
      }
    } catch (err) {
      this.fail(err);
    } finally {
      this.reading = false;
    }
  }

  /** Finds changes made by other processes: one read per interval, skipped while this process's own writes show the latest. */
  private schedulePoll(): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => void this.poll(), Math.max(0, this.confirmed + this.pollMs - Date.now()));
  }

  private async poll(): Promise<void> {
    const latest = this.records.at(-1)?.version;
    // Before the first snapshot there is nothing to follow on from; during a read, the read is the poll.
    if (latest !== undefined && !this.reading && Date.now() - this.confirmed >= this.pollMs) {
      try {
        const changes = await this.repository.listTaskChanges(this.id, latest);
        this.confirmed = Date.now();
        if (changes.length > 0) this.settle(changes);
      } catch (err) {
        return this.fail(err);
      }
    }
    this.schedulePoll();
  }

  private fail(err: unknown): void {
    this.failure = err;
    this.stop();
    this.onFailure(this);
    this.wake();
  }

  private wake(): void {
    const wakers = [...this.wakers];
    this.wakers.clear();
    for (const wake of wakers) wake();
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
