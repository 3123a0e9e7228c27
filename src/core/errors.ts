/**
 * The one error type the core throws. `kind` decides the gRPC status at the edge;
 * `reason` is a stable machine-readable code (it becomes a task's error reason);
 * `message` is for people and must never carry secrets or stack traces.
 */
export type ErrorKind =
  | "invalid-argument"
  | "not-found"
  | "already-exists"
  | "failed-precondition"
  | "aborted"
  | "resource-exhausted"
  | "unavailable"
  | "unimplemented"
  | "internal";

export class DomainError extends Error {
  override readonly name = "DomainError";

  constructor(
    readonly kind: ErrorKind,
    readonly reason: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** A type guard that works across module copies, where instanceof may not. */
export function isDomainError(err: unknown): err is DomainError {
  return err instanceof Error && err.name === "DomainError" && "kind" in err && "reason" in err;
}

export const invalidArgument = (message: string, reason = "INVALID_ARGUMENT") =>
  new DomainError("invalid-argument", reason, message);

export const notFound = (what: string, id: string) =>
  new DomainError("not-found", "NOT_FOUND", `${what} ${id} not found`);

export const failedPrecondition = (message: string, reason = "FAILED_PRECONDITION") =>
  new DomainError("failed-precondition", reason, message);

/** The database (or another dependency) cannot be reached; the caller may retry. */
export const unavailable = (message: string, cause?: unknown) =>
  new DomainError("unavailable", "UNAVAILABLE", message, { cause });
