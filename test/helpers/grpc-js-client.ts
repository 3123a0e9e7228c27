// Stock @grpc/grpc-js clients built at run time from the .proto files with
// @grpc/proto-loader, the way a third-party client that never saw our generated code would.
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

/** The repository's proto/ directory. */
export const protoDir = fileURLToPath(new URL("../../proto", import.meta.url));

const loaderOptions: protoLoader.Options = {
  includeDirs: [protoDir],
  keepCase: false,
  longs: String,
  enums: String,
  defaults: true,
};

export interface GrpcJsClients {
  image: grpc.Client;
  task: grpc.Client;
  admin: grpc.Client;
  transfer: grpc.Client;
  health: grpc.Client;
  close(): void;
}

function lookup(root: grpc.GrpcObject, path: string): grpc.ServiceClientConstructor {
  let node: unknown = root;
  for (const part of path.split(".")) node = (node as Record<string, unknown>)[part];
  if (typeof node !== "function") throw new Error(`${path} is not a service in the loaded protos`);
  return node as grpc.ServiceClientConstructor;
}

/** `target` is host:port, without a scheme. */
export function createGrpcJsClients(
  target: string,
  credentials: grpc.ChannelCredentials = grpc.credentials.createInsecure(),
  options: grpc.ChannelOptions = {},
): GrpcJsClients {
  const api = grpc.loadPackageDefinition(
    protoLoader.loadSync(
      ["imagetransfer/v1/image.proto", "imagetransfer/v1/task.proto", "imagetransfer/v1/admin.proto", "imagetransfer/v1/transfer.proto"],
      loaderOptions,
    ),
  );
  const health = grpc.loadPackageDefinition(protoLoader.loadSync("grpc/health/v1/health.proto", loaderOptions));
  const clients = {
    image: new (lookup(api, "imagetransfer.v1.ImageService"))(target, credentials, options),
    task: new (lookup(api, "imagetransfer.v1.TaskService"))(target, credentials, options),
    admin: new (lookup(api, "imagetransfer.v1.AdminService"))(target, credentials, options),
    transfer: new (lookup(api, "imagetransfer.v1.TransferService"))(target, credentials, options),
    health: new (lookup(health, "grpc.health.v1.Health"))(target, credentials, options),
  };
  return { ...clients, close: () => Object.values(clients).forEach((c) => c.close()) };
}

type UnaryMethod = (
  request: object,
  metadata: grpc.Metadata,
  options: grpc.CallOptions,
  callback: (err: grpc.ServiceError | null, response?: unknown) => void,
) => grpc.ClientUnaryCall;

/** Calls a unary method by its lowerCamelCase name (e.g. "createImage"); rejects with the grpc.ServiceError. */
export function unary<T = Record<string, unknown>>(
  client: grpc.Client,
  method: string,
  request: object,
  options: grpc.CallOptions = { deadline: Date.now() + 20_000 },
): Promise<T> {
  const fn = (client as unknown as Record<string, UnaryMethod | undefined>)[method];
  if (typeof fn !== "function") throw new Error(`no method ${method} on this client`);
  return new Promise<T>((resolve, reject) => {
    fn.call(client, request, new grpc.Metadata(), options, (err, response) => (err ? reject(err) : resolve(response as T)));
  });
}

/** The status a call failed with; fails the test if the call succeeded. */
export async function statusOf(call: Promise<unknown>): Promise<grpc.ServiceError> {
  try {
    await call;
  } catch (err) {
    if (err instanceof Error && typeof (err as Partial<grpc.ServiceError>).code === "number") return err as grpc.ServiceError;
    throw err;
  }
  throw new Error("expected the call to fail, but it succeeded");
}

export interface StreamOutcome<T> {
  messages: T[];
  /** The final status: code OK when the stream ended cleanly. */
  status: grpc.StatusObject;
  error?: grpc.ServiceError;
}

/** Calls a server-streaming method and waits for its final status. */
export function serverStream<T = Record<string, unknown>>(client: grpc.Client, method: string, request: object): Promise<StreamOutcome<T>> {
  const fn = (client as unknown as Record<string, ((req: object, options: grpc.CallOptions) => grpc.ClientReadableStream<T>) | undefined>)[
    method
  ];
  if (typeof fn !== "function") throw new Error(`no method ${method} on this client`);
  return new Promise((resolve) => {
    const call = fn.call(client, request, { deadline: Date.now() + 20_000 });
    const messages: T[] = [];
    let error: grpc.ServiceError | undefined;
    call.on("data", (message: T) => messages.push(message));
    call.on("error", (err: grpc.ServiceError) => (error = err));
    call.on("status", (status: grpc.StatusObject) => {
      // "status" follows "error" for a failed call; give the error event its turn first.
      setImmediate(() => resolve({ messages, status, error }));
    });
  });
}
