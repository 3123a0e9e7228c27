// Credentials for tests of authentication: API keys as the config holds them, and
// clients (Connect over gRPC, stock @grpc/grpc-js) that send a bearer token.
import { randomBytes } from "node:crypto";
import * as grpc from "@grpc/grpc-js";
import { Code, ConnectError, createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { sha256Hex } from "../../src/auth/credentials.js";
import { AdminService } from "../../src/gen/imagetransfer/v1/admin_pb.js";
import { ImageService } from "../../src/gen/imagetransfer/v1/image_pb.js";
import { TaskService } from "../../src/gen/imagetransfer/v1/task_pb.js";
import { TransferService } from "../../src/gen/imagetransfer/v1/transfer_pb.js";
import { createGrpcJsClients, type GrpcJsClients } from "./grpc-js-client.js";

export interface TestKey {
  token: string;
  /** The entry for `auth.apiKeys`. */
  entry: { sha256: string; subject: string; project: string; roles: string[] };
}

/** A fresh API key bound to a subject, project and roles. */
export function apiKey(subject: string, project: string, roles: string[] = []): TestKey {
  const token = `itx_${randomBytes(24).toString("base64url")}`;
  return { token, entry: { sha256: sha256Hex(token), subject, project, roles } };
}

export interface ConnectClients {
  images: Client<typeof ImageService>;
  transfer: Client<typeof TransferService>;
  tasks: Client<typeof TaskService>;
  admin: Client<typeof AdminService>;
}

/** Connect clients over gRPC sending `token` (none when undefined). */
export function connectClients(baseUrl: string, token?: string): ConnectClients {
  const bearer: Interceptor = (next) => (req) => {
    if (token !== undefined) req.header.set("authorization", `Bearer ${token}`);
    return next(req);
  };
  const transport = createGrpcTransport({ baseUrl, interceptors: [bearer] });
  return {
    images: createClient(ImageService, transport),
    transfer: createClient(TransferService, transport),
    tasks: createClient(TaskService, transport),
    admin: createClient(AdminService, transport),
  };
}

/** Stock grpc-js clients whose every call carries `authorization: Bearer token`. */
export function grpcJsClients(url: string, token?: string): GrpcJsClients {
  const withToken: grpc.Interceptor = (options, nextCall) =>
    new grpc.InterceptingCall(nextCall(options), {
      start(metadata, listener, next) {
        if (token !== undefined) metadata.set("authorization", `Bearer ${token}`);
        next(metadata, listener);
      },
    });
  return createGrpcJsClients(new URL(url).host, grpc.credentials.createInsecure(), { interceptors: [withToken] } as grpc.ChannelOptions);
}

/** The ConnectError a call failed with; fails the test if it succeeded. */
export async function connectError(call: Promise<unknown> | (() => Promise<unknown>)): Promise<ConnectError> {
  try {
    await (typeof call === "function" ? call() : call);
  } catch (err) {
    return ConnectError.from(err);
  }
  throw new Error("expected the call to fail, but it succeeded");
}

export { Code };
