import type { TaskRun } from "./environment.js";
import { taskFailure } from "./failure.js";

/**
 * Runs one attempt of a task under its wall-clock limit: `work` gets a signal that aborts on
 * cancel, handover or the deadline, and a run stopped by the deadline fails with TASK_TIMEOUT
 * (run.signal alone still tells cancel and handover apart for the cleanup inside `work`).
 */
export async function withDeadline<T>(run: TaskRun, seconds: number, what: string, work: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const deadline = AbortSignal.timeout(seconds * 1000);
  try {
    return await work(AbortSignal.any([run.signal, deadline]));
  } catch (err) {
    if (deadline.aborted && !run.signal.aborted) {
      throw taskFailure("TASK_TIMEOUT", `the ${what} ran longer than ${seconds} s, the limit for one task; it was stopped`, err);
    }
    throw err;
  }
}
