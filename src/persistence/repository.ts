import { DomainError, failedPrecondition, notFound } from "../core/errors.js";
import {
  imagePredecessors,
  type ImageFilter,
  type ImagePatch,
  type ImageRecord,
  type ImageStatus,
} from "../core/image.js";
import type { Page, PageRequest } from "../core/paging.js";
import {
  isTerminal,
  taskPredecessors,
  type TaskFilter,
  type TaskPatch,
  type TaskRecord,
  type TaskState,
  type TaskType,
} from "../core/task.js";

/** A conditional change to an image: applied only while its status is in `expect`. */
export interface ImageChange {
  expect?: readonly ImageStatus[];
  status?: ImageStatus;
  patch?: ImagePatch;
}

/** A conditional change to a task: applied only while its state is in `expect` and the lease conditions hold. */
export interface TaskChange {
  expect?: readonly TaskState[];
  state?: TaskState;
  patch?: TaskPatch;
  /** Only while this worker holds the task's lease. */
  leaseOwner?: string;
  /** Only while the task has no lease or its lease expired before this time: a takeover. */
  leaseExpiredBefore?: number;
}

/** What a project holds, for its quotas. */
export interface Usage {
  /** Images in any status but deleted. */
  images: number;
  /** Import tasks pending or running. */
  imports: number;
  /** Bytes of active images. */
  storedBytes: number;
}

/** How many tasks of one type are in one state. */
export interface TaskCount {
  type: TaskType;
  state: TaskState;
  count: number;
}

/** A project's limits; an absent key is unlimited. */
export interface QuotaLimits {
  images?: number;
  storedBytes?: number;
  concurrentImports?: number;
}

/**
 * The persistence contract for images and tasks. Every change is one atomic
 * conditional update, so several service processes can share one database: of two
 * racing changes, exactly one wins and the other gets FAILED_PRECONDITION.
 * Every task change is also kept as a numbered snapshot, so watchers in any process
 * can replay changes in order.
 */
export interface Repository {
  /** Creates indexes and tables; safe to call on every start. */
  init(): Promise<void>;
  close(): Promise<void>;
  /** Throws UNAVAILABLE when the database cannot be reached. */
  ping(): Promise<void>;

  insertImage(image: ImageRecord): Promise<void>;
  findImage(id: string): Promise<ImageRecord | undefined>;
  listImages(request: PageRequest<ImageFilter>): Promise<Page<ImageRecord>>;
  updateImage(id: string, change: ImageChange): Promise<ImageRecord>;

  insertTask(task: TaskRecord): Promise<void>;
  findTask(id: string): Promise<TaskRecord | undefined>;
  listTasks(request: PageRequest<TaskFilter>): Promise<Page<TaskRecord>>;
  updateTask(id: string, change: TaskChange): Promise<TaskRecord>;
  /**
   * Records that `key` from project `owner` names task `taskId`, unless it already names
   * a task recorded at or after `since`: returns the id the key names after the call.
   * Atomic across processes, so of two racing requests with one key only one starts a task.
   */
  reserveIdempotencyKey(owner: string, key: string, taskId: string, now: number, since: number): Promise<string>;
  /** Frees a key reserved for `taskId`, when starting that task failed; a key naming another task stays. */
  releaseIdempotencyKey(owner: string, key: string, taskId: string): Promise<void>;
  /** How many tasks match the filter. */
  countTasks(filter: TaskFilter): Promise<number>;
  /** Tasks counted by type and state in one query, for the metrics; combinations without tasks are absent. */
  countTasksByTypeAndState(): Promise<TaskCount[]>;
  /** Removes tasks that finished before `finishedBefore`, with their change history; returns how many. */
  deleteFinishedTasks(finishedBefore: number): Promise<number>;
  /** Tasks a worker may claim now, oldest first: pending ones, and running ones whose lease expired before `now`. */
  listClaimableTasks(now: number, limit: number): Promise<TaskRecord[]>;
  /** Snapshots of the task after each change with a version above `afterVersion`, oldest first. */
  listTaskChanges(id: string, afterVersion: number, limit?: number): Promise<TaskRecord[]>;
  /**
   * Adds `delta` to a project's usage in one atomic step across processes, refusing with
   * RESOURCE_EXHAUSTED (naming the quota) when a positive delta would pass `limits`.
   * Repositories lower the usage themselves when an image is deleted or activated and
   * when an import task ends; callers add images and imports before creating them.
   */
  changeUsage(owner: string, delta: Partial<Usage>, limits?: QuotaLimits): Promise<Usage>;
  getUsage(owner: string): Promise<Usage>;
}

/** The usage after `delta`, or the quota it would pass. Counts never drop below zero. */
export function applyUsage(owner: string, current: Usage, delta: Partial<Usage>, limits: QuotaLimits = {}): Usage {
  const over = (name: string, limit: number) =>
    new DomainError("resource-exhausted", "QUOTA_EXCEEDED", `project "${owner}" has reached its quota of ${limit} ${name}`);
  if ((delta.images ?? 0) > 0 && limits.images !== undefined && current.images + delta.images! > limits.images) throw over("images", limits.images);
  if ((delta.imports ?? 0) > 0) {
    if (limits.concurrentImports !== undefined && current.imports + delta.imports! > limits.concurrentImports) {
      throw over("concurrent imports", limits.concurrentImports);
    }
    // The size of an import is known only at its end: refuse new ones once the project is full.
    if (limits.storedBytes !== undefined && current.storedBytes >= limits.storedBytes) throw over("stored bytes", limits.storedBytes);
  }
  return {
    images: Math.max(0, current.images + (delta.images ?? 0)),
    imports: Math.max(0, current.imports + (delta.imports ?? 0)),
    storedBytes: Math.max(0, current.storedBytes + (delta.storedBytes ?? 0)),
  };
}

/** Whether two usages are the same, so that a change between them need not be written. */
export function sameUsage(a: Usage, b: Usage): boolean {
  return a.images === b.images && a.imports === b.imports && a.storedBytes === b.storedBytes;
}

/** How an image change moves its project's usage. */
export function imageUsageDelta(before: ImageRecord, after: ImageRecord): Partial<Usage> | undefined {
  if (before.status === after.status) return undefined;
  if (after.status === "deleted") return { images: -1, storedBytes: before.status === "active" ? -before.size : 0 };
  if (after.status === "active") return { storedBytes: after.size };
  return undefined;
}

/** An import task that ends frees its project's import slot. */
export function taskUsageDelta(before: TaskRecord, after: TaskRecord): Partial<Usage> | undefined {
  return before.type === "import" && !isTerminal(before.state) && isTerminal(after.state) ? { imports: -1 } : undefined;
}

export const noUsage: Usage = { images: 0, imports: 0, storedBytes: 0 };

const allImageStatuses: ImageStatus[] = ["queued", "uploading", "importing", "active", "killed", "deleted"];
const allTaskStates: TaskState[] = ["pending", "running", "succeeded", "failed", "canceled"];

/**
 * The statuses an image change may start from: those the caller expects, narrowed to
 * those the state machine allows. Plain patches never touch deleted images.
 */
export function imageChangeSources(change: ImageChange): ImageStatus[] {
  const expected = change.expect ?? allImageStatuses.filter((s) => s !== "deleted");
  if (change.status === undefined) return [...expected];
  const allowed = imagePredecessors(change.status);
  return expected.filter((s) => allowed.includes(s) || s === change.status);
}

/** Like imageChangeSources, for tasks; terminal tasks never change. */
export function taskChangeSources(change: TaskChange): TaskState[] {
  const expected = change.expect ?? allTaskStates.filter((s) => !isTerminal(s));
  if (change.state === undefined) return expected.filter((s) => !isTerminal(s));
  const allowed = taskPredecessors(change.state);
  return expected.filter((s) => allowed.includes(s));
}

/** Whether a conditional task change applies to the task as it is now. */
export function taskChangeApplies(current: TaskRecord, change: TaskChange, sources: readonly TaskState[]): boolean {
  if (!sources.includes(current.state)) return false;
  if (change.leaseOwner !== undefined && current.lease?.owner !== change.leaseOwner) return false;
  if (change.leaseExpiredBefore !== undefined && current.lease && current.lease.expireTime >= change.leaseExpiredBefore) return false;
  return true;
}

/** Why a task change was refused, for the caller's error. */
export function taskRefusal(id: string, current: TaskRecord | undefined, change: TaskChange) {
  if (current && taskChangeApplies(current, { ...change, leaseOwner: undefined, leaseExpiredBefore: undefined }, taskChangeSources(change))) {
    return failedPrecondition(`task ${id} is leased to another worker`, "LEASE_LOST");
  }
  return refusal("task", id, current?.state, change.state);
}

/** The fields a task change writes, besides the version increment. */
export function taskChangeFields(change: TaskChange, now: number): Partial<TaskRecord> {
  const fields: Partial<TaskRecord> = { ...change.patch, updateTime: now };
  if (change.state !== undefined) {
    fields.state = change.state;
    if (isTerminal(change.state)) fields.finishTime = now;
  }
  return fields;
}

/** Why a conditional change found nothing to update: the record is gone, or in another state. */
export function refusal(kind: "image" | "task", id: string, current: string | undefined, target?: string) {
  if (current === undefined) return notFound(kind, id);
  const wanted = target === undefined ? "be changed" : `become ${target.toUpperCase()}`;
  return failedPrecondition(`${kind} ${id} is ${current.toUpperCase()} and cannot ${wanted}`);
}
