import { Code, type Interceptor } from "@connectrpc/connect";
import type { Logger } from "pino";
import { toConnectError } from "./errors.js";
import type { Metrics } from "../metrics.js";

/**
 * Maps every error an RPC raises, including those raised while a server stream is
 * being sent, to a proper status, and logs one line per call.
 */
export function errorsAndLogging(logger: Logger, metrics: Metrics): Interceptor {
  return (next) => async (req) => {
    const started = performance.now();
    const procedure = `${req.service.typeName}/${req.method.name}`;
    const finish = (code: string) => {
      const seconds = (performance.now() - started) / 1000;
      metrics.rpcRequests.inc({ method: procedure, code });
      metrics.rpcDuration.observe({ method: procedure }, seconds);
      logger.debug({ procedure, code, durationMs: Math.round(seconds * 1000) }, "rpc");
    };
    try {
      const res = await next(req);
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
            const mapped = toConnectError(err, logger, procedure);
            finish(Code[mapped.code]);
            throw mapped;
          }
        })(),
      };
    } catch (err) {
      const mapped = toConnectError(err, logger, procedure);
      finish(Code[mapped.code]);
      throw mapped;
    }
  };
}
