import { DomainError } from "../errors.js";

/**
 * Why a task failed: `reason` is the stable code clients switch on (it becomes the
 * task's error reason), `message` says what to do about it.
 */
export function taskFailure(reason: string, message: string, cause?: unknown): DomainError {
  return new DomainError("failed-precondition", reason, message, { cause });
}
