import type { HandlerContext } from "@connectrpc/connect";
import { notFound } from "../core/errors.js";
import { parseId } from "../core/ids.js";
import type { ImageRecord } from "../core/image.js";
import type { TaskRecord } from "../core/task.js";
import type { Repository } from "../persistence/repository.js";
import { principalOf } from "./principal.js";

/** Another project's image, or a deleted one, is NOT_FOUND: never a hint that it exists. */
export async function visibleImage(repository: Repository, rawId: string, ctx: HandlerContext, field = "id"): Promise<ImageRecord> {
  const id = parseId(field, rawId);
  const image = await repository.findImage(id);
  if (!image || image.status === "deleted" || image.owner !== principalOf(ctx).project) throw notFound("image", id);
  return image;
}

/** Another project's task is NOT_FOUND. */
export async function visibleTask(repository: Repository, rawId: string, ctx: HandlerContext): Promise<TaskRecord> {
  const id = parseId("id", rawId);
  const task = await repository.findTask(id);
  if (!task || task.owner !== principalOf(ctx).project) throw notFound("task", id);
  return task;
}
