import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import { inject, injectable } from "tsyringe";
import { invalidArgument } from "../core/errors.js";
import { newId } from "../core/ids.js";
import { newImageRecord, type ImageFilter, type ImagePatch } from "../core/image.js";
import { decodePageToken, encodePageToken, parsePageSize } from "../core/paging.js";
import type { ImageService } from "../gen/imagetransfer/v1/image_pb.js";
import type * as pb from "../gen/imagetransfer/v1/image_pb.js";
import type { Repository } from "../persistence/repository.js";
import type { ConfiguredStore } from "../core/stores.js";
import { exportFormats, exportKey, imageKey } from "../core/transfer/environment.js";
import { Tokens } from "../tokens.js";
import { containerFormat, diskFormat, imageStatus, imageToProto } from "./convert.js";
import type { Config } from "../config/config.js";
import { listScope, principalOf } from "./principal.js";
import { withinQuota } from "./quotas.js";
import { visibleImage } from "./visibility.js";
import type { PolicyAction } from "../auth/policy.js";

const MAX_NAME_LENGTH = 255;
const MAX_PROPERTIES = 128;
const MAX_PROPERTY_LENGTH = 4096;

/** The image catalogue: records only; data moves through TransferService. */
@injectable()
export class ImageServiceImpl implements ServiceImpl<typeof ImageService> {
  constructor(
    @inject(Tokens.Repository) private readonly repository: Repository,
    @inject(Tokens.Stores) private readonly stores: ConfiguredStore[],
    @inject(Tokens.Config) private readonly config: Config,
  ) {}

  async createImage(req: pb.CreateImageRequest, ctx: HandlerContext) {
    const image = newImageRecord(
      {
        id: newId(),
        owner: principalOf(ctx).project,
        name: checkName(req.name),
        diskFormat: diskFormat.fromProto(req.diskFormat, "disk_format"),
        containerFormat: containerFormat.fromProto(req.containerFormat, "container_format"),
        properties: checkProperties(req.properties),
      },
      Date.now(),
    );
    await withinQuota(this.repository, this.config, image.owner, { images: 1 }, () => this.repository.insertImage(image));
    return { image: imageToProto(image) };
  }

  async getImage(req: pb.GetImageRequest, ctx: HandlerContext) {
    return { image: imageToProto(await this.visibleImage(req.id, ctx, "get_image")) };
  }

  async listImages(req: pb.ListImagesRequest, ctx: HandlerContext) {
    const filter: ImageFilter = {
      owner: listScope(ctx, "list_images"),
      status: imageStatus.fromProto(req.status, "status"),
      name: req.name === "" ? undefined : req.name,
    };
    const limit = parsePageSize(req.pageSize);
    const page = await this.repository.listImages({ filter, limit, after: decodePageToken(req.pageToken, filter) });
    return {
      images: page.items.map(imageToProto),
      nextPageToken: page.next ? encodePageToken(page.next, filter) : "",
    };
  }

  async updateImage(req: pb.UpdateImageRequest, ctx: HandlerContext) {
    if (!req.image) throw invalidArgument("image is required");
    const paths = req.updateMask?.paths ?? [];
    if (paths.length === 0) throw invalidArgument("update_mask must name at least one field");
    const current = await this.visibleImage(req.image.id, ctx, "update_image");
    const patch: ImagePatch = {};
    let queuedOnly = false;
    for (const path of paths) {
      switch (path) {
        case "name":
          patch.name = checkName(req.image.name);
          break;
        case "properties":
          patch.properties = checkProperties(req.image.properties);
          break;
        case "disk_format":
          patch.diskFormat = diskFormat.fromProto(req.image.diskFormat, "image.disk_format");
          queuedOnly = true;
          break;
        case "container_format":
          patch.containerFormat = containerFormat.fromProto(req.image.containerFormat, "image.container_format");
          queuedOnly = true;
          break;
        default:
          throw invalidArgument(
            `update_mask names "${path}", which cannot be updated; updatable: name, properties, disk_format, container_format`,
          );
      }
    }
    const image = await this.repository.updateImage(current.id, { expect: queuedOnly ? ["queued"] : undefined, patch });
    return { image: imageToProto(image) };
  }

  async deleteImage(req: pb.DeleteImageRequest, ctx: HandlerContext) {
    const current = await this.visibleImage(req.id, ctx, "delete_image");
    const image = await this.repository.updateImage(current.id, { status: "deleted" });
    await this.removeData(image.id);
    return { image: imageToProto(image) };
  }

  /** Frees a deleted image's space at once; whatever fails here the garbage collector removes later. */
  private async removeData(imageId: string): Promise<void> {
    const keys = [imageKey(imageId), ...exportFormats.map((format) => exportKey(imageId, format))];
    await Promise.allSettled(this.stores.flatMap((store) => keys.map((key) => store.instance?.delete(key))));
  }

  private visibleImage(rawId: string, ctx: HandlerContext, action: PolicyAction) {
    return visibleImage(this.repository, rawId, ctx, action);
  }
}

function checkName(name: string): string {
  if (name.length > MAX_NAME_LENGTH) throw invalidArgument(`name is longer than ${MAX_NAME_LENGTH} characters`);
  return name;
}

function checkProperties(properties: Record<string, string>): Record<string, string> {
  const entries = Object.entries(properties);
  if (entries.length > MAX_PROPERTIES) throw invalidArgument(`at most ${MAX_PROPERTIES} properties are allowed`);
  for (const [key, value] of entries) {
    if (key === "" || key.length > 255) throw invalidArgument("property keys must be 1 to 255 characters");
    if (value.length > MAX_PROPERTY_LENGTH) throw invalidArgument(`property "${key}" is longer than ${MAX_PROPERTY_LENGTH} characters`);
  }
  return { ...properties };
}
