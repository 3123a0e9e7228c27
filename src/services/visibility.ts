import type { HandlerContext } from "@connectrpc/connect";
import { notFound } from "../core/errors.js";
import { parseId } from "../core/ids.js";
import type { ImageRecord } from "../core/image.js";
import type { TaskRecord } from "../core/task.js";
import type { PolicyAction } from "../auth/policy.js";
import type { Repository } from "../persistence/repository.js";
import { accessOf, permissionDenied } from "./principal.js";

/**
 * Whether the caller may take `action` on a record `owner` owns. A caller who may not even
 * read it gets NOT_FOUND, never a hint that it exists; one who may read it but not do
 * this gets PERMISSION_DENIED.
 */
function check(ctx: HandlerContext, action: PolicyAction, readAction: PolicyAction, owner: string, missing: () => Error): void {
  const access = accessOf(ctx);
  const allows = (a: PolicyAction) => access.policy.allows(a, access.principal, { owner });
  if (allows(action)) return;
  throw allows(readAction) ? permissionDenied(access, action) : missing();
}

/** The image, if the caller may take `action` on it; deleted and hidden images are NOT_FOUND. */
export async function visibleImage(repository: Repository, rawId: string, ctx: HandlerContext, action: PolicyAction, field = "id"): Promise<ImageRecord> {
  const id = parseId(field, rawId);
  const image = await repository.findImage(id);
  if (!image || image.status === "deleted") throw notFound("image", id);
  check(ctx, action, "get_image", image.owner, () => notFound("image", id));
  return image;
}

/** The task, if the caller may take `action` on it; hidden tasks are NOT_FOUND. */
export async function visibleTask(repository: Repository, rawId: string, ctx: HandlerContext, action: PolicyAction): Promise<TaskRecord> {
  const id = parseId("id", rawId);
  const task = await repository.findTask(id);
  if (!task) throw notFound("task", id);
  check(ctx, action, "get_task", task.owner, () => notFound("task", id));
  return task;
}
