import { z } from "zod";

const hostPort = z.string().regex(/^(\[[0-9a-fA-F:]+\]|[^:\s]+):\d{1,5}$/, "must be HOST:PORT");
const tls = z.strictObject({ cert: z.string().min(1), key: z.string().min(1) });
/** Policy rule overrides: action or rule name -> rule text. */
const rules = z.record(z.string(), z.string());

const apiKey = z.strictObject({
  /** The SHA-256 of the key, in hex: the key itself is never stored. */
  sha256: z.string().regex(/^[0-9a-f]{64}$/, "must be 64 lower-case hex digits (sha256sum of the key)"),
  subject: z.string().min(1),
  project: z.string().default(""),
  roles: z.array(z.string().min(1)).default([]),
});

const jwt = z
  .strictObject({
    /** Required `iss`. */
    issuer: z.string().min(1),
    /** Required `aud`. */
    audience: z.string().min(1),
    /** Verification keys: exactly one of a JWKS file, a JWKS URL, or a PEM public key file. */
    jwksFile: z.string().min(1).optional(),
    jwksUrl: z.url().optional(),
    publicKeyFile: z.string().min(1).optional(),
    /** Accepted signature algorithms; default the asymmetric ones jose knows. */
    algorithms: z.array(z.string().min(1)).default(["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]),
    /** Tolerated clock difference for exp and nbf. */
    clockToleranceSeconds: z.number().int().min(0).max(300).default(30),
    /** Claims holding the subject, project and roles (roles: an array or a space-separated string). */
    claims: z
      .strictObject({
        subject: z.string().min(1).default("sub"),
        project: z.string().min(1).default("project"),
        roles: z.string().min(1).default("roles"),
      })
      .default({ subject: "sub", project: "project", roles: "roles" }),
  })
  .refine((j) => [j.jwksFile, j.jwksUrl, j.publicKeyFile].filter(Boolean).length === 1, {
    message: "set exactly one of jwksFile, jwksUrl or publicKeyFile",
  });

const quota = z.strictObject({
  /** Images a project may have (every status but deleted). */
  images: z.number().int().min(0).optional(),
  /** Bytes of active images; an import is refused once the project stores this much. */
  storedBytes: z.number().int().min(0).optional(),
  /** Import tasks of the project pending or running at once. */
  concurrentImports: z.number().int().min(0).optional(),
});

/** The configuration keys of authentication, policy, listeners and quotas (merged into the config schema). */
export const authConfigKeys = {
  auth: z
    .strictObject({
      apiKeys: z.array(apiKey).default([]),
      jwt: jwt.optional(),
      /** Services anyone may call without credentials. */
      openServices: z.array(z.string().min(1)).default(["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"]),
    })
    .optional(),
  /** Serve without authentication: every caller is an admin of project "default". For development only. */
  insecureNoAuth: z.boolean().default(false),
  /** YAML or JSON file of policy rule overrides, for every listener. */
  policyFile: z.string().min(1).optional(),
  /** Policy rule overrides for every listener, after policyFile. */
  policy: rules.default({}),
  /**
   * Several listeners, each with its own address, TLS and policy overrides; when unset,
   * `listen` and `tls` make the one listener, named "default".
   */
  listeners: z
    .array(
      z.strictObject({
        name: z.string().regex(/^[a-z0-9][a-z0-9-]{0,62}$/, "must be lower-case letters, digits and dashes"),
        address: hostPort,
        tls: tls.optional(),
        policyFile: z.string().min(1).optional(),
        policy: rules.default({}),
      }),
    )
    .min(1)
    .optional(),
  /** Per-project limits: `default` for every project, `projects` by name (replacing the default per key). */
  quotas: z
    .strictObject({
      default: quota.default({}),
      projects: z.record(z.string(), quota).default({}),
    })
    .default({ default: {}, projects: {} }),
  /** The longest lifetime a caller may ask of a temporary URL. */
  maxUrlTtlSeconds: z.number().int().min(1).max(7 * 24 * 3600).default(7 * 24 * 3600),
};
