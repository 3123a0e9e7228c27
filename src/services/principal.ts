import { Code, ConnectError, createContextKey, type HandlerContext } from "@connectrpc/connect";
import type { Principal } from "../auth/principal.js";
import type { Policy, PolicyAction } from "../auth/policy.js";

export type { Principal } from "../auth/principal.js";

/** What the authentication interceptor establishes for one call: who, and under which listener's policy. */
export interface Access {
  principal: Principal;
  policy: Policy;
  /** The listener's name, for the audit log and messages. */
  listener: string;
}

/** Unset only if a call bypassed authentication, which then fails closed (see accessOf). */
export const accessKey = createContextKey<Access | undefined>(undefined);

export function accessOf(ctx: Pick<HandlerContext, "values">): Access {
  const access = ctx.values.get(accessKey);
  if (!access) throw new ConnectError("internal error", Code.Internal, undefined, undefined, new Error("a call reached a service without authentication"));
  return access;
}

export function principalOf(ctx: Pick<HandlerContext, "values">): Principal {
  return accessOf(ctx).principal;
}

export function permissionDenied(access: Access, action: string): ConnectError {
  return new ConnectError(`${action} is not allowed for ${access.principal.subject} on listener "${access.listener}"`, Code.PermissionDenied);
}

/** Throws PERMISSION_DENIED unless the policy allows `action` on something `owner` owns (default: the caller's own project). */
export function authorize(ctx: Pick<HandlerContext, "values">, action: PolicyAction, owner?: string): void {
  const access = accessOf(ctx);
  if (!access.policy.allows(action, access.principal, { owner: owner ?? access.principal.project })) throw permissionDenied(access, action);
}

/** An owner no project can have: a rule that holds for it holds for every project. */
const ANY_PROJECT = "\u0000any";

/** The owner a listing is limited to: the caller's project, or none when the policy lets the caller read every project. */
export function listScope(ctx: Pick<HandlerContext, "values">, action: PolicyAction): string | undefined {
  const { policy, principal } = accessOf(ctx);
  return policy.allows(action, principal, { owner: ANY_PROJECT }) ? undefined : principal.project;
}
