// Calls the gRPC server reflection implementation directly, the way grpcurl and buf curl
// drive it over the wire: a stream of requests in, one response per request out.
import { create, fromBinary, type MessageInitShape } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema, type FileDescriptorProto } from "@bufbuild/protobuf/wkt";
import { createHandlerContext } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import {
  ServerReflection,
  ServerReflectionRequestSchema,
  type ServerReflectionResponse,
} from "../../src/gen/grpc/reflection/v1/reflection_pb.js";
import { servedProtoFiles as files, servedServiceNames as serviceNames } from "../../src/server/api.js";
import { createReflectionService } from "../../src/server/reflection.js";

type RequestInit = MessageInitShape<typeof ServerReflectionRequestSchema>;

/** Sends the requests as one stream and collects every response. */
async function reflect(...requests: RequestInit[]): Promise<ServerReflectionResponse[]> {
  const service = createReflectionService(files, serviceNames);
  const ctx = createHandlerContext({
    service: ServerReflection,
    method: ServerReflection.method.serverReflectionInfo,
    protocolName: "grpc",
    requestMethod: "POST",
    url: "http://127.0.0.1/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
  });
  async function* stream() {
    for (const init of requests) yield create(ServerReflectionRequestSchema, init);
  }
  const responses: ServerReflectionResponse[] = [];
  for await (const response of service.serverReflectionInfo(stream(), ctx)) {
    responses.push(create(ServerReflection.method.serverReflectionInfo.output, response));
  }
  return responses;
}

async function reflectOne(init: RequestInit): Promise<ServerReflectionResponse> {
  const responses = await reflect(init);
  expect(responses).toHaveLength(1);
  return responses[0]!;
}

/** The FileDescriptorProtos of a file_descriptor_response, decoded; fails on any other answer. */
function descriptors(response: ServerReflectionResponse): FileDescriptorProto[] {
  const answer = response.messageResponse;
  if (answer.case !== "fileDescriptorResponse") {
    throw new Error(`expected a file_descriptor_response, got ${answer.case}: ${JSON.stringify(answer.value)}`);
  }
  return answer.value.fileDescriptorProto.map((bytes) => fromBinary(FileDescriptorProtoSchema, bytes));
}

function expectNotFound(response: ServerReflectionResponse, mentioning: string): void {
  const answer = response.messageResponse;
  expect(answer.case).toBe("errorResponse");
  if (answer.case !== "errorResponse") return;
  expect(answer.value.errorCode).toBe(5);
  expect(answer.value.errorMessage).toContain(mentioning);
}

describe("server reflection", () => {
  it("list_services names every service the server exposes", async () => {
    const response = await reflectOne({ host: "localhost", messageRequest: { case: "listServices", value: "*" } });
    expect(response.validHost).toBe("localhost");
    expect(response.originalRequest?.messageRequest).toEqual({ case: "listServices", value: "*" });
    const answer = response.messageResponse;
    expect(answer.case).toBe("listServicesResponse");
    if (answer.case !== "listServicesResponse") return;
    expect(answer.value.service.map((s) => s.name).sort()).toEqual(
      [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "imagetransfer.v1.AdminService",
        "imagetransfer.v1.ImageService",
        "imagetransfer.v1.TaskService",
        "imagetransfer.v1.TransferService",
      ].sort(),
    );
  });

  it("file_containing_symbol for a service returns its file first, with its imports", async () => {
    const protos = descriptors(
      await reflectOne({ messageRequest: { case: "fileContainingSymbol", value: "imagetransfer.v1.TaskService" } }),
    );
    const [first] = protos;
    expect(first?.name).toBe("imagetransfer/v1/task.proto");
    expect(first?.package).toBe("imagetransfer.v1");
    expect(first?.service.map((s) => s.name)).toEqual(["TaskService"]);
    expect(first?.service[0]?.method.map((m) => m.name)).toEqual(["GetTask", "ListTasks", "WatchTask", "CancelTask"]);
    expect(first?.dependency).toContain("google/protobuf/timestamp.proto");
    // A client cannot build the descriptor unless every import is sent along.
    expect(protos.map((p) => p.name)).toContain("google/protobuf/timestamp.proto");
  });

  it("file_containing_symbol for a message returns the file that declares it", async () => {
    const protos = descriptors(
      await reflectOne({ messageRequest: { case: "fileContainingSymbol", value: "imagetransfer.v1.CreateImageRequest" } }),
    );
    expect(protos[0]?.name).toBe("imagetransfer/v1/image.proto");
    expect(protos[0]?.messageType.map((m) => m.name)).toContain("CreateImageRequest");
    expect(protos.map((p) => p.name).sort()).toEqual(
      ["google/protobuf/field_mask.proto", "google/protobuf/timestamp.proto", "imagetransfer/v1/image.proto"].sort(),
    );
  });

  it("file_containing_symbol accepts a leading dot", async () => {
    const protos = descriptors(await reflectOne({ messageRequest: { case: "fileContainingSymbol", value: ".imagetransfer.v1.Store" } }));
    expect(protos[0]?.name).toBe("imagetransfer/v1/admin.proto");
  });

  it("file_containing_symbol for a method returns its service's file", async () => {
    const protos = descriptors(
      await reflectOne({ messageRequest: { case: "fileContainingSymbol", value: "imagetransfer.v1.TaskService.WatchTask" } }),
    );
    expect(protos[0]?.name).toBe("imagetransfer/v1/task.proto");
    const watch = protos[0]?.service[0]?.method.find((m) => m.name === "WatchTask");
    expect(watch?.serverStreaming).toBe(true);
    expect(watch?.outputType).toBe(".imagetransfer.v1.WatchTaskResponse");
  });

  it("file_by_filename returns the file and its dependencies, each exactly once", async () => {
    const protos = descriptors(
      await reflectOne({ messageRequest: { case: "fileByFilename", value: "imagetransfer/v1/task.proto" } }),
    );
    const names = protos.map((p) => p.name);
    expect(names[0]).toBe("imagetransfer/v1/task.proto");
    expect(names).toContain("google/protobuf/timestamp.proto");
    expect(new Set(names).size).toBe(names.length);
    expect(protos[0]?.dependency).toEqual(["google/protobuf/timestamp.proto"]);
    expect(protos[0]?.messageType.map((m) => m.name)).toContain("Task");
    const timestamp = protos.find((p) => p.name === "google/protobuf/timestamp.proto");
    expect(timestamp?.messageType.map((m) => m.name)).toEqual(["Timestamp"]);
  });

  it("file_by_filename of a file that imports other project files sends them all", async () => {
    const protos = descriptors(
      await reflectOne({ messageRequest: { case: "fileByFilename", value: "imagetransfer/v1/transfer.proto" } }),
    );
    expect(protos.map((p) => p.name).sort()).toEqual(
      [
        "google/protobuf/field_mask.proto",
        "google/protobuf/timestamp.proto",
        "imagetransfer/v1/image.proto",
        "imagetransfer/v1/task.proto",
        "imagetransfer/v1/transfer.proto",
      ].sort(),
    );
  });

  it("answers every request of one stream, in order", async () => {
    const responses = await reflect(
      { messageRequest: { case: "listServices", value: "" } },
      { messageRequest: { case: "fileByFilename", value: "imagetransfer/v1/admin.proto" } },
      { messageRequest: { case: "fileContainingSymbol", value: "no.such.Symbol" } },
      { messageRequest: { case: "fileContainingSymbol", value: "grpc.health.v1.Health" } },
    );
    expect(responses.map((r) => r.messageResponse.case)).toEqual([
      "listServicesResponse",
      "fileDescriptorResponse",
      "errorResponse",
      "fileDescriptorResponse",
    ]);
    expect(descriptors(responses[1]!)[0]?.name).toBe("imagetransfer/v1/admin.proto");
    expect(descriptors(responses[3]!)[0]?.name).toBe("grpc/health/v1/health.proto");
  });

  describe("not found (error_code 5)", () => {
    it("an unknown file name", async () => {
      expectNotFound(
        await reflectOne({ messageRequest: { case: "fileByFilename", value: "imagetransfer/v1/nope.proto" } }),
        "imagetransfer/v1/nope.proto",
      );
    });

    it("a file name without its .proto suffix", async () => {
      expectNotFound(await reflectOne({ messageRequest: { case: "fileByFilename", value: "imagetransfer/v1/task" } }), "task");
    });

    it("an unknown symbol", async () => {
      expectNotFound(
        await reflectOne({ messageRequest: { case: "fileContainingSymbol", value: "imagetransfer.v1.NoSuchMessage" } }),
        "imagetransfer.v1.NoSuchMessage",
      );
    });

    it("an unknown method of a known service", async () => {
      expectNotFound(
        await reflectOne({ messageRequest: { case: "fileContainingSymbol", value: "imagetransfer.v1.TaskService.Teleport" } }),
        "imagetransfer.v1.TaskService.Teleport",
      );
    });

    it("an extension (the API declares none)", async () => {
      expectNotFound(
        await reflectOne({
          messageRequest: {
            case: "fileContainingExtension",
            value: { containingType: "imagetransfer.v1.Image", extensionNumber: 1000 },
          },
        }),
        "imagetransfer.v1.Image",
      );
    });

    it("extension numbers of an unknown type", async () => {
      expectNotFound(
        await reflectOne({ messageRequest: { case: "allExtensionNumbersOfType", value: "imagetransfer.v1.Nope" } }),
        "imagetransfer.v1.Nope",
      );
    });
  });

  it("all_extension_numbers_of_type of a known message is an empty list", async () => {
    const answer = (await reflectOne({ messageRequest: { case: "allExtensionNumbersOfType", value: "imagetransfer.v1.Image" } }))
      .messageResponse;
    expect(answer.case).toBe("allExtensionNumbersResponse");
    if (answer.case !== "allExtensionNumbersResponse") return;
    expect(answer.value.baseTypeName).toBe("imagetransfer.v1.Image");
    expect(answer.value.extensionNumber).toEqual([]);
  });

  it("a request without a message_request is INVALID_ARGUMENT (error_code 3)", async () => {
    const answer = (await reflectOne({})).messageResponse;
    expect(answer.case).toBe("errorResponse");
    if (answer.case !== "errorResponse") return;
    expect(answer.value.errorCode).toBe(3);
  });
});
