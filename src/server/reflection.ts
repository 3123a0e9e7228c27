import { create, createFileRegistry, toBinary, type DescFile, type FileRegistry, type MessageInitShape } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import type { ServiceImpl } from "@connectrpc/connect";
import {
  ServerReflection,
  type ServerReflectionRequest,
  type ServerReflectionResponse,
  ServerReflectionResponseSchema,
} from "../gen/grpc/reflection/v1/reflection_pb.js";

type ResponseInit = MessageInitShape<typeof ServerReflectionResponseSchema>["messageResponse"];

/**
 * gRPC server reflection (grpc.reflection.v1), so grpcurl and buf curl can call the
 * service without our .proto files. Answers from the descriptors compiled into the
 * generated code; a file is sent with everything it imports.
 */
export function createReflectionService(files: DescFile[], serviceNames: string[]): ServiceImpl<typeof ServerReflection> {
  const byName = new Map<string, DescFile>();
  const collect = (file: DescFile) => {
    if (byName.has(file.proto.name)) return;
    byName.set(file.proto.name, file);
    file.dependencies.forEach(collect);
  };
  files.forEach(collect);
  const registry = createFileRegistry(
    ...[...byName.values()].map((file) => createFileRegistry(file.proto, (name) => byName.get(name))),
  );
  return {
    async *serverReflectionInfo(requests: AsyncIterable<ServerReflectionRequest>) {
      for await (const request of requests) yield answer(request, registry, serviceNames);
    },
  };
}

function answer(request: ServerReflectionRequest, registry: FileRegistry, serviceNames: string[]): ServerReflectionResponse {
  const response = (messageResponse: ResponseInit) =>
    create(ServerReflectionResponseSchema, { validHost: request.host, originalRequest: request, messageResponse });
  const notFound = (what: string) =>
    response({ case: "errorResponse", value: { errorCode: 5, errorMessage: `${what} not found` } });

  const { messageRequest } = request;
  switch (messageRequest.case) {
    case "listServices":
      return response({ case: "listServicesResponse", value: { service: serviceNames.map((name) => ({ name })) } });
    case "fileByFilename": {
      const file = registry.getFile(messageRequest.value);
      return file ? response(filesResponse(file)) : notFound(`file ${messageRequest.value}`);
    }
    case "fileContainingSymbol": {
      const file = fileOfSymbol(registry, messageRequest.value);
      return file ? response(filesResponse(file)) : notFound(`symbol ${messageRequest.value}`);
    }
    case "fileContainingExtension":
      return notFound(`extension ${messageRequest.value.extensionNumber} of ${messageRequest.value.containingType}`);
    case "allExtensionNumbersOfType": {
      const type = registry.getMessage(messageRequest.value);
      if (!type) return notFound(`type ${messageRequest.value}`);
      return response({ case: "allExtensionNumbersResponse", value: { baseTypeName: type.typeName, extensionNumber: [] } });
    }
    default:
      return response({ case: "errorResponse", value: { errorCode: 3, errorMessage: "unknown reflection request" } });
  }
}

/** A symbol is a type, a service, or a method ("pkg.Service.Method"). */
function fileOfSymbol(registry: FileRegistry, symbol: string): DescFile | undefined {
  const name = symbol.replace(/^\./, "");
  const desc = registry.get(name);
  if (desc) return desc.file;
  const service = registry.getService(name.slice(0, name.lastIndexOf(".")));
  return service?.methods.some((m) => `${service.typeName}.${m.name}` === name) ? service.file : undefined;
}

function filesResponse(file: DescFile): ResponseInit {
  const seen = new Set<string>();
  const files: Uint8Array[] = [];
  const visit = (f: DescFile) => {
    if (seen.has(f.name)) return;
    seen.add(f.name);
    files.push(toBinary(FileDescriptorProtoSchema, f.proto));
    f.dependencies.forEach(visit);
  };
  visit(file);
  return { case: "fileDescriptorResponse", value: { fileDescriptorProto: files } };
}
