export const taskTypes = ["import", "export", "copy"] as const;
export type TaskType = (typeof taskTypes)[number];
export const taskStates = ["pending", "running", "succeeded", "failed", "canceled"] as const;
export type TaskState = (typeof taskStates)[number];

export interface TaskProgress {
  stage: string;
  bytesDone: number;
  bytesTotal: number;
}

export interface TaskResult {
  imageId: string;
  storeUris: string[];
  /** Stores that failed when the task was allowed to succeed without them. */
  failedStores?: string[];
}

export interface TaskError {
  /** Stable and machine-readable, e.g. CANCELED or SOURCE_NOT_FOUND. */
  reason: string;
  message: string;
}

/** A task record as the repository keeps it; times are epoch milliseconds. */
export interface TaskRecord {
  id: string;
  type: TaskType;
  state: TaskState;
  imageId: string;
  owner: string;
  progress: TaskProgress;
  result?: TaskResult;
  error?: TaskError;
  attempts: number;
  /** What the task works on (seed URI, target formats...), opaque to the repository. */
  input: Record<string, unknown>;
  createTime: number;
  updateTime: number;
  finishTime?: number;
  /** Grows by one with every change, so watchers can tell changes apart and order them. */
  version: number;
  /** Held by the worker running the task; another worker may take the task over once it expires. */
  lease?: TaskLease;
  /** The W3C traceparent of the request that created the task, so its run joins that trace. */
  traceParent?: string;
}

export interface TaskLease {
  /** The worker's id: host, process and a random part. */
  owner: string;
  /** Epoch milliseconds. */
  expireTime: number;
}

export interface TaskFilter {
  owner?: string;
  state?: TaskState;
  type?: TaskType;
  imageId?: string;
}

/** What a task update may change besides its state. */
export type TaskPatch = Partial<Pick<TaskRecord, "progress" | "result" | "error" | "attempts" | "input" | "lease">>;

const taskTransitions: Record<TaskState, readonly TaskState[]> = {
  pending: ["running", "failed", "canceled"],
  running: ["succeeded", "failed", "canceled"],
  succeeded: [],
  failed: [],
  canceled: [],
};

export function isTerminal(state: TaskState): boolean {
  return taskTransitions[state].length === 0;
}

/** The states a task may move to `next` from. */
export function taskPredecessors(next: TaskState): TaskState[] {
  return (Object.keys(taskTransitions) as TaskState[]).filter((from) => taskTransitions[from].includes(next));
}

export function newTaskRecord(
  fields: Pick<TaskRecord, "id" | "type" | "imageId" | "owner"> & Partial<TaskRecord>,
  now: number,
): TaskRecord {
  return {
    state: "pending",
    progress: { stage: "", bytesDone: 0, bytesTotal: 0 },
    attempts: 0,
    input: {},
    ...fields,
    createTime: now,
    updateTime: now,
    version: 1,
  };
}
