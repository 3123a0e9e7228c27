import { file_grpc_health_v1_health, Health } from "../gen/grpc/health/v1/health_pb.js";
import { file_grpc_reflection_v1_reflection, ServerReflection } from "../gen/grpc/reflection/v1/reflection_pb.js";
import { AdminService, file_imagetransfer_v1_admin } from "../gen/imagetransfer/v1/admin_pb.js";
import { file_imagetransfer_v1_image, ImageService } from "../gen/imagetransfer/v1/image_pb.js";
import { file_imagetransfer_v1_task, TaskService } from "../gen/imagetransfer/v1/task_pb.js";
import { file_imagetransfer_v1_transfer, TransferService } from "../gen/imagetransfer/v1/transfer_pb.js";

/** Every service the server answers, by full name: what health and reflection report. */
export const servedServiceNames = [ImageService, TransferService, TaskService, AdminService, Health, ServerReflection].map(
  (s) => s.typeName,
);

/** The proto files reflection describes (their imports follow from them). */
export const servedProtoFiles = [
  file_imagetransfer_v1_image,
  file_imagetransfer_v1_transfer,
  file_imagetransfer_v1_task,
  file_imagetransfer_v1_admin,
  file_grpc_health_v1_health,
  file_grpc_reflection_v1_reflection,
];
