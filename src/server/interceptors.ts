import { randomUUID } from "node:crypto";
import { Code, type ConnectError, type Interceptor } from "@connectrpc/connect";
import type { Logger } from "pino";
import { toConnectError } from "./errors.js";
import type { Metrics } from "../metrics.js";
import { accessKey } from "../services/principal.js";
import { actionOf } from "./authentication.js";

/** A caller's own request id is kept if it looks like one; anything else gets a fresh id. */
const requestIdPattern = /^[\w.:-]{1,128}$/;

/** Calls that only read: every other RPC changes something and is audited. */
const readOnlyMethod = /^(Get|List|Watch|Check|Download|ServerReflection)/;

/**
 * Maps every error an RPC raises, including those raised while a server stream is
 * being sent, to a proper status, and logs one line per call with a request id (the
 * caller's x-request-id, or a new one) that the response carries back too, and who
 * called. Every call that changes something also gets an audit line (see docs/security.md).
 */
export function errorsAndLogging(logger: Logger, metrics: Metrics, listener = "default"): Interceptor {
  return (next) => async (req) => {
    const started = performance.now();
    const procedure = `${req.service.typeName}/${req.method.name}`;
    const offered = req.header.get("x-request-id");
    const requestId = offered && requestIdPattern.test(offered) ? offered : randomUUID();
    const log = logger.child({ requestId, procedure });
    const finish = (code: string, response?: unknown) => {
      const seconds = (performance.now() - started) / 1000;
      metrics.rpcRequests.inc({ method: procedure, code });
      metrics.rpcDuration.observe({ method: procedure }, seconds);
      // Set by authentication; absent when it failed or the service is open.
      const principal = req.contextValues.get(accessKey)?.principal;
      const who = { subject: principal?.subject, project: principal?.project, listener };
      log.debug({ code, durationMs: Math.round(seconds * 1000), ...who }, "rpc");
      if (!readOnlyMethod.test(req.method.name) && req.service.typeName.startsWith("imagetransfer.")) {
        log.info(
          { audit: true, time: new Date().toISOString(), ...who, action: actionOf(req.method.name), targets: targetIds(req.service.typeName, req.message, response), outcome: code },
          "audit",
        );
      }
    };
    try {
      const res = await next(req);
      res.header.set("x-request-id", requestId);
      if (!res.stream) {
        finish("OK", res.message);
        return res;
      }
      const messages = res.message;
      return {
        ...res,
        message: (async function* () {
          try {
            yield* messages;
            finish("OK");
          } catch (err) {
            const mapped = withRequestId(toConnectError(err, log, procedure), requestId);
            finish(Code[mapped.code]);
            throw mapped;
          }
        })(),
      };
    } catch (err) {
      const mapped = withRequestId(toConnectError(err, log, procedure), requestId);
      finish(Code[mapped.code]);
      throw mapped;
    }
  };
}

/** The ids a call names or creates: image and task ids from the request and the response (never URLs, which hold signatures). */
function targetIds(service: string, request: unknown, response: unknown): { imageId?: string; taskId?: string } {
  const ids: { imageId?: string; taskId?: string } = {};
  for (const message of [request, response]) {
    if (typeof message !== "object" || message === null || Symbol.asyncIterator in message) continue;
    const m = message as { id?: unknown; imageId?: unknown; image?: { id?: unknown }; task?: { id?: unknown; imageId?: unknown } };
    // A bare id names an image in ImageService and a task in TaskService.
    if (typeof m.id === "string" && m.id !== "") {
      if (service.endsWith(".ImageService")) ids.imageId ??= m.id;
      if (service.endsWith(".TaskService")) ids.taskId ??= m.id;
    }
    const image = m.imageId ?? m.image?.id ?? m.task?.imageId;
    if (typeof image === "string" && image !== "") ids.imageId ??= image;
    if (typeof m.task?.id === "string") ids.taskId ??= m.task.id;
  }
  return ids;
}

/** Errors carry the request id to the client too, so a user can quote it to an operator. */
function withRequestId(err: ConnectError, requestId: string): ConnectError {
  err.metadata.set("x-request-id", requestId);
  return err;
}
