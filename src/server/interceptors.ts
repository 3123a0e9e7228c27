import { Code, type Interceptor } from "@connectrpc/connect";
import type { Logger } from "pino";
import { toConnectError } from "./errors.js";

/**
 * Maps every error an RPC raises, including those raised while a server stream is
 * being sent, to a proper status, and logs one line per call.
 */
export function errorsAndLogging(logger: Logger): Interceptor {
  return (next) => async (req) => {
    const started = performance.now();
    const procedure = `${req.service.typeName}/${req.method.name}`;
    const finish = (code: string) =>
      logger.debug({ procedure, code, durationMs: Math.round(performance.now() - started) }, "rpc");
    try {
      const res = await next(req);
      if (!res.stream) {
        finish("ok");
        return res;
      }
      const messages = res.message;
      return {
        ...res,
        message: (async function* () {
          try {
            yield* messages;
            finish("ok");
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
