import { randomUUID } from "node:crypto";
import { Code, type ConnectError, type Interceptor } from "@connectrpc/connect";
import type { Logger } from "pino";
import { toConnectError } from "./errors.js";
import type { Metrics } from "../metrics.js";

/** A caller's own request id is kept if it looks like one; anything else gets a fresh id. */
const requestIdPattern = /^[\w.:-]{1,128}$/;

/**
 * Maps every error an RPC raises, including those raised while a server stream is
 * being sent, to a proper status, and logs one line per call with a request id (the
 * caller's x-request-id, or a new one) that the response carries back too.
 */
export function errorsAndLogging(logger: Logger, metrics: Metrics): Interceptor {
  return (next) => async (req) => {
    const started = performance.now();
    const procedure = `${req.service.typeName}/${req.method.name}`;
    const offered = req.header.get("x-request-id");
    const requestId = offered && requestIdPattern.test(offered) ? offered : randomUUID();
    const log = logger.child({ requestId, procedure });
    const finish = (code: string) => {
      const seconds = (performance.now() - started) / 1000;
      metrics.rpcRequests.inc({ method: procedure, code });
      metrics.rpcDuration.observe({ method: procedure }, seconds);
      log.debug({ code, durationMs: Math.round(seconds * 1000) }, "rpc");
    };
    try {
      const res = await next(req);
      res.header.set("x-request-id", requestId);
      if (!res.stream) {
        finish("OK");
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

/** Errors carry the request id to the client too, so a user can quote it to an operator. */
function withRequestId(err: ConnectError, requestId: string): ConnectError {
  err.metadata.set("x-request-id", requestId);
  return err;
}
