import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import type { ContainerFormat, DiskFormat, ImageRecord, ImageStatus, LocationStatus } from "../core/image.js";
import { invalidArgument } from "../core/errors.js";
import type { TaskRecord, TaskState, TaskType } from "../core/task.js";
import type { ConfiguredStore } from "../core/stores.js";
import type { PluginReport } from "../plugins/registry.js";
import * as admin from "../gen/imagetransfer/v1/admin_pb.js";
import * as img from "../gen/imagetransfer/v1/image_pb.js";
import * as tsk from "../gen/imagetransfer/v1/task_pb.js";

/**
 * A two-way map between a domain string union and a proto enum. Zero (UNSPECIFIED)
 * maps to undefined; a number the proto does not define is INVALID_ARGUMENT.
 */
function enumCodec<D extends string, P extends number>(pairs: ReadonlyArray<readonly [D, P]>) {
  const toProto = new Map<D, P>(pairs);
  const fromProto = new Map<number, D>(pairs.map(([d, p]) => [p, d]));
  return {
    toProto: (value: D | undefined): P => (value === undefined ? 0 : toProto.get(value)!) as P,
    fromProto(value: number, field: string): D | undefined {
      if (value === 0) return undefined;
      const domain = fromProto.get(value);
      if (domain === undefined) throw invalidArgument(`${field} has unknown value ${value}`);
      return domain;
    },
  };
}

export const imageStatus = enumCodec<ImageStatus, img.ImageStatus>([
  ["queued", img.ImageStatus.QUEUED],
  ["uploading", img.ImageStatus.UPLOADING],
  ["importing", img.ImageStatus.IMPORTING],
  ["active", img.ImageStatus.ACTIVE],
  ["killed", img.ImageStatus.KILLED],
  ["deleted", img.ImageStatus.DELETED],
]);

export const diskFormat = enumCodec<DiskFormat, img.DiskFormat>([
  ["raw", img.DiskFormat.RAW],
  ["qcow2", img.DiskFormat.QCOW2],
  ["vmdk", img.DiskFormat.VMDK],
  ["vhd", img.DiskFormat.VHD],
  ["vhdx", img.DiskFormat.VHDX],
  ["vdi", img.DiskFormat.VDI],
  ["iso", img.DiskFormat.ISO],
]);

export const containerFormat = enumCodec<ContainerFormat, img.ContainerFormat>([
  ["bare", img.ContainerFormat.BARE],
  ["ova", img.ContainerFormat.OVA],
]);

const locationStatus = enumCodec<LocationStatus, img.LocationStatus>([
  ["pending", img.LocationStatus.PENDING],
  ["active", img.LocationStatus.ACTIVE],
  ["error", img.LocationStatus.ERROR],
]);

export const taskState = enumCodec<TaskState, tsk.TaskState>([
  ["pending", tsk.TaskState.PENDING],
  ["running", tsk.TaskState.RUNNING],
  ["succeeded", tsk.TaskState.SUCCEEDED],
  ["failed", tsk.TaskState.FAILED],
  ["canceled", tsk.TaskState.CANCELED],
]);

export const taskType = enumCodec<TaskType, tsk.TaskType>([
  ["import", tsk.TaskType.IMPORT],
  ["export", tsk.TaskType.EXPORT],
  ["copy", tsk.TaskType.COPY],
]);

export function imageToProto(image: ImageRecord): img.Image {
  return create(img.ImageSchema, {
    id: image.id,
    name: image.name,
    owner: image.owner,
    status: imageStatus.toProto(image.status),
    diskFormat: diskFormat.toProto(image.diskFormat),
    containerFormat: containerFormat.toProto(image.containerFormat),
    size: BigInt(image.size),
    virtualSize: BigInt(image.virtualSize),
    checksum: image.checksum,
    osHashAlgo: image.osHashAlgo,
    osHashValue: image.osHashValue,
    locations: image.locations.map((l) => ({ store: l.store, uri: l.uri, status: locationStatus.toProto(l.status) })),
    properties: image.properties,
    createTime: timestampFromMs(image.createTime),
    updateTime: timestampFromMs(image.updateTime),
  });
}

export function taskToProto(task: TaskRecord): tsk.Task {
  return create(tsk.TaskSchema, {
    id: task.id,
    type: taskType.toProto(task.type),
    state: taskState.toProto(task.state),
    imageId: task.imageId,
    progress: {
      stage: task.progress.stage,
      bytesDone: toUint64(task.progress.bytesDone),
      bytesTotal: toUint64(task.progress.bytesTotal),
    },
    result: task.result,
    error: task.error,
    owner: task.owner,
    attempts: task.attempts,
    createTime: timestampFromMs(task.createTime),
    updateTime: timestampFromMs(task.updateTime),
    finishTime: task.finishTime === undefined ? undefined : timestampFromMs(task.finishTime),
    version: BigInt(task.version),
    ...(task.state === "running" && task.lease
      ? { leaseOwner: task.lease.owner, leaseExpireTime: timestampFromMs(task.lease.expireTime) }
      : {}),
  });
}

/** Counts a plugin reported; never let a fraction or a negative number break a response. */
function toUint64(n: number): bigint {
  return Number.isFinite(n) && n > 0 ? BigInt(Math.floor(n)) : 0n;
}

export function storeToProto(store: ConfiguredStore): admin.Store {
  const caps = store.capabilities;
  return create(admin.StoreSchema, {
    name: store.name,
    plugin: store.plugin,
    region: store.region,
    schemes: store.schemes,
    isDefault: store.isDefault,
    isStaging: store.isStaging,
    capabilities: caps && { ...caps, maxObjectSize: BigInt(caps.maxObjectSize) },
    available: store.instance !== undefined,
    error: store.error ?? "",
  });
}

export function pluginToProto(plugin: PluginReport): admin.Plugin {
  return create(admin.PluginSchema, {
    id: plugin.id,
    kind: plugin.kind === "store" ? admin.PluginKind.STORE : plugin.kind === "converter" ? admin.PluginKind.CONVERTER : 0,
    version: plugin.version,
    apiVersion: plugin.apiVersion,
    state: plugin.state === "loaded" ? admin.PluginState.LOADED : admin.PluginState.FAILED,
    error: plugin.error ?? "",
    path: plugin.path,
  });
}
