import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import { inject, injectable } from "tsyringe";
import { parseId } from "../core/ids.js";
import { decodePageToken, encodePageToken, parsePageSize } from "../core/paging.js";
import { TaskHub } from "../core/task-hub.js";
import type { TaskFilter, TaskRecord } from "../core/task.js";
import type { TaskService } from "../gen/imagetransfer/v1/task_pb.js";
import type * as pb from "../gen/imagetransfer/v1/task_pb.js";
import type { Repository } from "../persistence/repository.js";
import { Tokens } from "../tokens.js";
import { taskState, taskToProto, taskType } from "./convert.js";
import type { PolicyAction } from "../auth/policy.js";
import { listScope, principalOf } from "./principal.js";
import { visibleTask } from "./visibility.js";

/** Reports and controls tasks; the work itself is done by the task runner. */
@injectable()
export class TaskServiceImpl implements ServiceImpl<typeof TaskService> {
  constructor(
    @inject(Tokens.Repository) private readonly repository: Repository,
    @inject(TaskHub) private readonly hub: TaskHub,
  ) {}

  async getTask(req: pb.GetTaskRequest, ctx: HandlerContext) {
    return { task: taskToProto(await this.visibleTask(req.id, ctx, "get_task")) };
  }

  async listTasks(req: pb.ListTasksRequest, ctx: HandlerContext) {
    const filter: TaskFilter = {
      owner: listScope(ctx, "list_tasks"),
      state: taskState.fromProto(req.state, "state"),
      type: taskType.fromProto(req.type, "type"),
      imageId: req.imageId === "" ? undefined : parseId("image_id", req.imageId),
    };
    const limit = parsePageSize(req.pageSize);
    const page = await this.repository.listTasks({ filter, limit, after: decodePageToken(req.pageToken, filter) });
    return {
      tasks: page.items.map(taskToProto),
      nextPageToken: page.next ? encodePageToken(page.next, filter) : "",
    };
  }

  async *watchTask(req: pb.WatchTaskRequest, ctx: HandlerContext) {
    const task = await this.visibleTask(req.id, ctx, "watch_task");
    // The hub ends the stream at a terminal state; ctx.signal ends it when the client hangs up.
    for await (const snapshot of this.hub.watch(task.id, ctx.signal)) {
      yield { task: watchedProto(snapshot) };
    }
  }

  /** A pending task is canceled at once; a running one is canceled and its worker stops on its next write. */
  async cancelTask(req: pb.CancelTaskRequest, ctx: HandlerContext) {
    const task = await this.visibleTask(req.id, ctx, "cancel_task");
    const canceled = await this.hub.change(task.id, {
      state: "canceled",
      patch: { error: { reason: "CANCELED", message: `canceled by ${principalOf(ctx).subject}` } },
    });
    return { task: taskToProto(canceled) };
  }

  private visibleTask(rawId: string, ctx: HandlerContext, action: PolicyAction): Promise<TaskRecord> {
    return visibleTask(this.repository, rawId, ctx, action);
  }
}

/**
 * The watchers of a task are handed the same snapshot objects: each is converted once, not
 * once per watcher (with 1,000 watchers over 100 tasks, ten times).
 */
const watchedProtos = new WeakMap<TaskRecord, pb.Task>();

function watchedProto(snapshot: TaskRecord): pb.Task {
  let proto = watchedProtos.get(snapshot);
  if (!proto) watchedProtos.set(snapshot, (proto = taskToProto(snapshot)));
  return proto;
}
