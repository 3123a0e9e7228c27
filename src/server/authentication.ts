import type { Interceptor } from "@connectrpc/connect";
import type { Logger } from "pino";
import { insecurePrincipal, type Authenticator } from "../auth/credentials.js";
import type { Policy } from "../auth/policy.js";
import { accessKey, permissionDenied, type Access } from "../services/principal.js";

/** How often --insecure-no-auth is recalled in the log while requests come in. */
const INSECURE_REMINDER_MS = 60_000;

export interface AuthenticationOptions {
  /** Undefined with --insecure-no-auth: every caller is an admin of project "default". */
  authenticator: Authenticator | undefined;
  policy: Policy;
  listener: string;
  /** Services callable without credentials (health, reflection). */
  openServices: readonly string[];
  logger: Logger;
}

/** The policy action of an RPC: its method name in snake_case, e.g. ImportImage -> import_image. */
export function actionOf(methodName: string): string {
  return methodName.replace(/(?<!^)([A-Z])/g, "_$1").toLowerCase();
}

/**
 * Authenticates each call from its bearer token and checks the listener's policy for
 * the method, with the caller's own project as the target; services check again
 * against the owner of the image or task they load. The outcome is left in the call's
 * context for services, logging and the audit log.
 */
export function authentication(options: AuthenticationOptions): Interceptor {
  const open = new Set(options.openServices);
  let lastReminder = 0;
  return (next) => async (req) => {
    let access: Access;
    if (!options.authenticator) {
      const now = Date.now();
      if (now - lastReminder >= INSECURE_REMINDER_MS) {
        lastReminder = now;
        options.logger.warn({ listener: options.listener }, "serving requests WITHOUT authentication (--insecure-no-auth): every caller is an admin");
      }
      access = { principal: insecurePrincipal, policy: options.policy, listener: options.listener };
    } else if (open.has(req.service.typeName)) {
      return next(req);
    } else {
      const principal = await options.authenticator.authenticate(req.header.get("authorization"));
      access = { principal, policy: options.policy, listener: options.listener };
    }
    req.contextValues.set(accessKey, access);
    if (open.has(req.service.typeName)) return next(req);
    const action = actionOf(req.method.name);
    if (!access.policy.allows(action, access.principal, { owner: access.principal.project })) {
      throw permissionDenied(access, action);
    }
    return next(req);
  };
}
