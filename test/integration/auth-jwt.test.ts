/**
 * JWTs verified with jose against a JWKS file and against a PEM public key, through a
 * real server and real gRPC clients: the good token works and maps its claims; every
 * kind of bad token gets UNAUTHENTICATED with a reason and never the token.
 */
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { exportJWK, exportSPKI, generateKeyPair, SignJWT, type JWTPayload } from "jose";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { apiKey, Code, connectClients, connectError } from "../helpers/auth.js";
import { startTestService, type TestService } from "../helpers/service.js";

const ISSUER = "https://id.example.test";
const AUDIENCE = "imagetransfer";
type KeyPair = Awaited<ReturnType<typeof generateKeyPair>>;

let dir: string;
let signing: KeyPair;
let stranger: KeyPair;
let service: TestService;
let pemService: TestService;
const rotatedOut = apiKey("deployer", "alpha", ["member"]);
const rotatedIn = apiKey("deployer", "alpha", ["member"]);

function sign(claims: JWTPayload, options: { key?: KeyPair; iss?: string; aud?: string; exp?: number | string; nbf?: number | string } = {}) {
  const jwt = new SignJWT({ project: "alpha", roles: ["member"], ...claims })
    .setProtectedHeader({ alg: "ES256", kid: "k1" })
    .setIssuer(options.iss ?? ISSUER)
    .setAudience(options.aud ?? AUDIENCE)
    .setIssuedAt()
    .setExpirationTime(options.exp ?? "5m");
  if (!("sub" in claims)) jwt.setSubject("alice");
  if (options.nbf !== undefined) jwt.setNotBefore(options.nbf);
  return jwt.sign((options.key ?? signing).privateKey);
}

/** An unsigned token ("alg": "none") with otherwise valid claims. */
function unsigned(): string {
  const part = (value: object) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const now = Math.floor(Date.now() / 1000);
  return `${part({ alg: "none", typ: "JWT" })}.${part({ sub: "alice", project: "alpha", roles: ["admin"], iss: ISSUER, aud: AUDIENCE, exp: now + 300 })}.`;
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "itx-jwt-"));
  signing = await generateKeyPair("ES256", { extractable: true });
  stranger = await generateKeyPair("ES256", { extractable: true });
  const jwks = join(dir, "jwks.json");
  await writeFile(jwks, JSON.stringify({ keys: [{ ...(await exportJWK(signing.publicKey)), kid: "k1", alg: "ES256", use: "sig" }] }));
  const pem = join(dir, "public.pem");
  await writeFile(pem, await exportSPKI(signing.publicKey));
  // API keys and JWTs at once; two keys of one subject during a rotation.
  service = await startTestService({
    auth: { apiKeys: [rotatedOut.entry, rotatedIn.entry], jwt: { issuer: ISSUER, audience: AUDIENCE, jwksFile: jwks } },
  });
  pemService = await startTestService({
    auth: { jwt: { issuer: ISSUER, audience: AUDIENCE, publicKeyFile: pem, claims: { project: "tenant", roles: "scope" } } },
  });
});

afterAll(async () => {
  await service?.stop();
  await pemService?.stop();
  await rm(dir, { recursive: true, force: true });
});

describe("JWTs", () => {
  it("accepts a valid token and maps its claims to subject, project and roles", async () => {
    const { image } = await connectClients(service.url, await sign({})).images.createImage({ name: "by-jwt" });
    expect(image?.owner).toBe("alpha");
    const admin = connectClients(service.url, await sign({ roles: ["admin"] }));
    expect((await admin.admin.listStores({})).stores.length).toBeGreaterThan(0);
  });

  it("maps configured claims, roles given as a space-separated string, with a PEM public key", async () => {
    const token = await sign({ tenant: "gamma", scope: "member admin" });
    const { image } = await connectClients(pemService.url, token).images.createImage({ name: "pem" });
    expect(image?.owner).toBe("gamma");
    expect((await connectClients(pemService.url, token).admin.listStores({})).stores.length).toBeGreaterThan(0);
  });

  const now = () => Math.floor(Date.now() / 1000);
  const cases: Array<[string, () => Promise<string> | string, string]> = [
    ["the wrong issuer", () => sign({}, { iss: "https://evil.example.test" }), "the token's issuer is not accepted"],
    ["the wrong audience", () => sign({}, { aud: "another-service" }), "the token's audience is not accepted"],
    ["an expired token (beyond the clock skew)", () => sign({}, { exp: now() - 120 }), "the token has expired"],
    ["a token not valid yet (beyond the clock skew)", () => sign({}, { nbf: now() + 120 }), "the token is not valid yet"],
    ["a token signed with another key", () => sign({}, { key: stranger }), "the token's signature does not verify"],
    ["an unsigned token (alg none)", unsigned, "the token's signing algorithm is not accepted"],
    ["a token without a subject", () => sign({ sub: undefined }), "the token has no \"sub\" claim"],
  ];
  for (const [name, make, message] of cases) {
    it(`refuses ${name} with UNAUTHENTICATED, not echoing it`, async () => {
      const token = await make();
      const err = await connectError(connectClients(service.url, token).images.listImages({}));
      expect(err.code).toBe(Code.Unauthenticated);
      expect(err.rawMessage).toBe(message);
      expect(err.rawMessage).not.toContain(token.split(".")[1]!);
    });
  }

  it("tolerates a small clock skew", async () => {
    const slightlyExpired = await sign({}, { exp: now() - 5 });
    expect((await connectClients(service.url, slightlyExpired).images.listImages({})).images).toBeDefined();
  });

  it("fetches the keys from a JWKS URL", async () => {
    const jwks = JSON.stringify({ keys: [{ ...(await exportJWK(signing.publicKey)), kid: "k1", alg: "ES256", use: "sig" }] });
    const keyServer = createServer((_req, res) => res.writeHead(200, { "content-type": "application/json" }).end(jwks));
    await new Promise<void>((resolve) => keyServer.listen(0, "127.0.0.1", resolve));
    const jwksUrl = `http://127.0.0.1:${(keyServer.address() as { port: number }).port}/jwks.json`;
    const remote = await startTestService({ auth: { jwt: { issuer: ISSUER, audience: AUDIENCE, jwksUrl } } });
    try {
      expect((await connectClients(remote.url, await sign({})).images.createImage({ name: "remote" })).image?.owner).toBe("alpha");
      const err = await connectError(connectClients(remote.url, await sign({}, { key: stranger })).images.listImages({}));
      expect(err.rawMessage).toBe("the token's signature does not verify");
    } finally {
      await remote.stop();
      keyServer.close();
    }
  });

  it("refuses JWTs on a server configured with API keys only", async () => {
    const keysOnly = await startTestService({ auth: { apiKeys: [rotatedIn.entry] } });
    try {
      const err = await connectError(connectClients(keysOnly.url, await sign({})).images.listImages({}));
      expect(err.code).toBe(Code.Unauthenticated);
      expect(err.rawMessage).toBe("this server does not accept JWTs. Use an API key");
    } finally {
      await keysOnly.stop();
    }
  });
});

describe("API key rotation", () => {
  it("accepts both keys of a subject while both are configured, and only the new one after", async () => {
    for (const key of [rotatedOut, rotatedIn]) {
      const { image } = await connectClients(service.url, key.token).images.createImage({ name: "rotating" });
      expect(image?.owner).toBe("alpha");
    }
    const rotated = await startTestService({ auth: { apiKeys: [rotatedIn.entry] } });
    try {
      expect((await connectClients(rotated.url, rotatedIn.token).images.listImages({})).images).toEqual([]);
      const err = await connectError(connectClients(rotated.url, rotatedOut.token).images.listImages({}));
      expect(err.code).toBe(Code.Unauthenticated);
      expect(err.rawMessage).toBe("unknown API key");
    } finally {
      await rotated.stop();
    }
  });
});
