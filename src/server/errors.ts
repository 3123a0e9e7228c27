import { Code, ConnectError } from "@connectrpc/connect";
import type { Logger } from "pino";
import { isDomainError, type ErrorKind } from "../core/errors.js";

const codes: Record<ErrorKind, Code> = {
  "invalid-argument": Code.InvalidArgument,
  "not-found": Code.NotFound,
  "already-exists": Code.AlreadyExists,
  "failed-precondition": Code.FailedPrecondition,
  aborted: Code.Aborted,
  "resource-exhausted": Code.ResourceExhausted,
  unavailable: Code.Unavailable,
  unimplemented: Code.Unimplemented,
  internal: Code.Internal,
};

/**
 * The one place where errors become gRPC statuses. Domain errors keep their message;
 * anything unexpected is logged with its stack and reaches the client only as
 * "internal error", so no stack trace or internal detail ever leaks.
 */
export function toConnectError(err: unknown, logger: Logger, procedure: string): ConnectError {
  // Connect's own errors (bad messages, size limits, unimplemented methods) are already right.
  if (err instanceof ConnectError) return err;
  if (isDomainError(err)) {
    if (err.kind === "internal" || err.kind === "unavailable") logger.warn({ procedure, err }, err.message);
    return new ConnectError(err.message, codes[err.kind], undefined, undefined, err);
  }
  // The client went away or its deadline passed while we were working.
  if (err instanceof Error && (err.name === "AbortError" || err.name === "TimeoutError")) {
    return new ConnectError("the call was canceled", Code.Canceled, undefined, undefined, err);
  }
  logger.error({ procedure, err }, "unexpected error");
  return new ConnectError("internal error", Code.Internal, undefined, undefined, err);
}
