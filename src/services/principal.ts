import { createContextKey, type HandlerContext } from "@connectrpc/connect";

/** Who is calling: set by the authentication interceptor, read by services to scope data. */
export interface Principal {
  subject: string;
  project: string;
  roles: string[];
}

/**
 * Until authentication is configured every caller acts in one project, "default", so a
 * single-user deployment works out of the box and owner fields are always filled.
 */
export const principalKey = createContextKey<Principal>({ subject: "anonymous", project: "default", roles: [] });

export function principalOf(ctx: HandlerContext): Principal {
  return ctx.values.get(principalKey);
}
