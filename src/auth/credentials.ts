/**
 * Authentication: turns the bearer token of a request into a principal. Two kinds of
 * token are accepted, both at once if configured: static API keys (the config holds only
 * their SHA-256) and JWTs verified with jose. Error messages never repeat the token.
 */
import { createHash, createPublicKey, type KeyObject } from "node:crypto";
import { readFile } from "node:fs/promises";
import { Code, ConnectError } from "@connectrpc/connect";
import { createLocalJWKSet, createRemoteJWKSet, errors as joseErrors, jwtVerify, type JWTPayload, type JWTVerifyGetKey } from "jose";
import type { Config } from "../config/config.js";
import type { Principal } from "./principal.js";

type AuthConfig = NonNullable<Config["auth"]>;
type JwtConfig = NonNullable<AuthConfig["jwt"]>;
export type ApiKeyEntry = AuthConfig["apiKeys"][number];

/** Establishes who sent a request from its `authorization` header value. */
export interface Authenticator {
  authenticate(authorization: string | null | undefined): Promise<Principal>;
}

export function sha256Hex(text: string): string {
  return createHash("sha256").update(text).digest("hex");
}

/** Every caller is an admin of project "default": --insecure-no-auth. */
export const insecurePrincipal: Principal = { subject: "anonymous", project: "default", roles: ["admin"] };

function unauthenticated(message: string): ConnectError {
  return new ConnectError(message, Code.Unauthenticated);
}

const JWT_SHAPE = /^[\w-]*\.[\w-]*\.[\w-]*$/;

/**
 * Checks API keys and JWTs. Key material is loaded once, at start-up, so a bad JWKS file
 * or public key stops start-up instead of failing every request.
 */
export async function createAuthenticator(apiKeys: ApiKeyEntry[], jwt: JwtConfig | undefined): Promise<Authenticator> {
  const byHash = new Map(apiKeys.map((k) => [k.sha256, k]));
  const verifyJwt = jwt ? await jwtVerifier(jwt) : undefined;
  return {
    async authenticate(authorization) {
      if (!authorization) throw unauthenticated('credentials required. Send an "authorization" header with "Bearer " and an API key or a JWT');
      const match = /^Bearer +(\S+)\s*$/i.exec(authorization);
      if (!match) throw unauthenticated('malformed "authorization" header. Expected "Bearer " and an API key or a JWT');
      const token = match[1]!;
      if (JWT_SHAPE.test(token)) {
        if (!verifyJwt) throw unauthenticated("this server does not accept JWTs. Use an API key");
        return verifyJwt(token);
      }
      const key = byHash.get(sha256Hex(token));
      if (!key) throw unauthenticated("unknown API key");
      return { subject: key.subject, project: key.project, roles: [...key.roles] };
    },
  };
}

async function jwtVerifier(config: JwtConfig): Promise<(token: string) => Promise<Principal>> {
  const key = await verificationKey(config);
  return async (token) => {
    let payload: JWTPayload;
    try {
      ({ payload } = await jwtVerify(token, key as JWTVerifyGetKey, {
        issuer: config.issuer,
        audience: config.audience,
        algorithms: config.algorithms,
        clockTolerance: config.clockToleranceSeconds,
        requiredClaims: ["exp"],
      }));
    } catch (err) {
      throw unauthenticated(jwtFailure(err));
    }
    const subject = payload[config.claims.subject];
    if (typeof subject !== "string" || subject === "") throw unauthenticated(`the token has no "${config.claims.subject}" claim`);
    const project = payload[config.claims.project];
    const roles = payload[config.claims.roles];
    return {
      subject,
      project: typeof project === "string" ? project : "",
      roles: Array.isArray(roles) ? roles.filter((r): r is string => typeof r === "string") : typeof roles === "string" ? roles.split(/\s+/).filter(Boolean) : [],
    };
  };
}

/** Why a JWT was refused, in words that help its holder and say nothing of the token itself. */
function jwtFailure(err: unknown): string {
  if (err instanceof joseErrors.JWTExpired) return "the token has expired";
  if (err instanceof joseErrors.JWTClaimValidationFailed) {
    if (err.claim === "nbf") return "the token is not valid yet";
    if (err.claim === "iss") return "the token's issuer is not accepted";
    if (err.claim === "aud") return "the token's audience is not accepted";
    return `the token's "${err.claim}" claim is not accepted`;
  }
  if (err instanceof joseErrors.JOSEAlgNotAllowed || err instanceof joseErrors.JOSENotSupported) return "the token's signing algorithm is not accepted";
  if (err instanceof joseErrors.JWSSignatureVerificationFailed || err instanceof joseErrors.JWKSNoMatchingKey) {
    return "the token's signature does not verify";
  }
  if (err instanceof joseErrors.JWKSTimeout || !(err instanceof joseErrors.JOSEError)) return "the token could not be verified";
  return "the token is not a valid JWT";
}

async function verificationKey(config: JwtConfig): Promise<JWTVerifyGetKey | KeyObject> {
  if (config.jwksUrl) return createRemoteJWKSet(new URL(config.jwksUrl));
  if (config.jwksFile) {
    const text = await readFile(config.jwksFile, "utf8").catch((err: NodeJS.ErrnoException) => {
      throw new Error(`auth.jwt.jwksFile: cannot read ${config.jwksFile}: ${err.code ?? String(err)}`);
    });
    try {
      return createLocalJWKSet(JSON.parse(text));
    } catch (err) {
      throw new Error(`auth.jwt.jwksFile: ${config.jwksFile} is not a JWK set: ${(err as Error).message}`);
    }
  }
  const file = config.publicKeyFile!;
  const pem = await readFile(file, "utf8").catch((err: NodeJS.ErrnoException) => {
    throw new Error(`auth.jwt.publicKeyFile: cannot read ${file}: ${err.code ?? String(err)}`);
  });
  try {
    return createPublicKey(pem);
  } catch {
    throw new Error(`auth.jwt.publicKeyFile: ${file} holds no PEM public key`);
  }
}
