import {
  MongoClient,
  MongoNetworkError,
  MongoServerSelectionError,
  MongoNotConnectedError,
  MongoTopologyClosedError,
  type Collection,
  type Db,
  type Filter,
} from "mongodb";
import { unavailable } from "../../core/errors.js";
import type { ImageFilter, ImageRecord } from "../../core/image.js";
import type { Cursor, Page, PageRequest } from "../../core/paging.js";
import type { TaskFilter, TaskRecord } from "../../core/task.js";
import {
  imageChangeSources,
  refusal,
  taskChangeFields,
  taskChangeSources,
  type ImageChange,
  type Repository,
  type TaskChange,
} from "../repository.js";

type ImageDoc = ImageRecord & { _id: string };
type TaskDoc = TaskRecord & { _id: string };
type TaskChangeDoc = { _id: string; taskId: string; version: number; task: TaskRecord };

export interface MongoRepositoryOptions {
  uri: string;
  /** How long an operation waits for a reachable server before answering UNAVAILABLE. */
  serverSelectionTimeoutMS?: number;
}

/**
 * The MongoDB repository, for deployments where several service processes share one
 * database. Every change is one findOneAndUpdate on id plus expected state.
 */
export class MongoRepository implements Repository {
  private readonly client: MongoClient;
  private readonly db: Db;
  private readonly images: Collection<ImageDoc>;
  private readonly tasks: Collection<TaskDoc>;
  private readonly taskChanges: Collection<TaskChangeDoc>;

  constructor(options: MongoRepositoryOptions) {
    this.client = new MongoClient(options.uri, {
      serverSelectionTimeoutMS: options.serverSelectionTimeoutMS ?? 5000,
      ignoreUndefined: true,
    });
    // The URI's database, or "imagetransfer" when it names none.
    this.db = this.client.db(new URL(options.uri.replace(/^mongodb(\+srv)?:/, "http:")).pathname.slice(1) || "imagetransfer");
    this.images = this.db.collection("images");
    this.tasks = this.db.collection("tasks");
    this.taskChanges = this.db.collection("task_changes");
  }

  async init(): Promise<void> {
    await guard(async () => {
      await this.images.createIndex({ createTime: 1, _id: 1 });
      await this.images.createIndex({ owner: 1, createTime: 1 });
      await this.tasks.createIndex({ createTime: 1, _id: 1 });
      await this.tasks.createIndex({ state: 1, createTime: 1 });
      await this.tasks.createIndex({ imageId: 1 });
      await this.taskChanges.createIndex({ taskId: 1, version: 1 }, { unique: true });
    });
  }

  async close(): Promise<void> {
    await this.client.close();
  }

  async ping(): Promise<void> {
    await guard(() => this.db.command({ ping: 1 }));
  }

  async insertImage(image: ImageRecord): Promise<void> {
    await guard(() => this.images.insertOne({ _id: image.id, ...image }));
  }

  async findImage(id: string): Promise<ImageRecord | undefined> {
    return guard(async () => strip(await this.images.findOne({ _id: id })));
  }

  async listImages({ filter, limit, after }: PageRequest<ImageFilter>): Promise<Page<ImageRecord>> {
    const query: Filter<ImageDoc> = {};
    if (filter.owner !== undefined) query.owner = filter.owner;
    query.status = filter.status ?? { $ne: "deleted" };
    if (filter.name !== undefined) query.name = filter.name;
    return guard(() => page(this.images, query, limit, after));
  }

  async updateImage(id: string, change: ImageChange): Promise<ImageRecord> {
    const sources = imageChangeSources(change);
    return guard(async () => {
      const set: Partial<ImageRecord> = { ...change.patch, updateTime: Date.now() };
      if (change.status !== undefined) set.status = change.status;
      const updated = await this.images.findOneAndUpdate(
        { _id: id, status: { $in: sources } },
        { $set: set },
        { returnDocument: "after" },
      );
      if (updated) return strip(updated)!;
      throw refusal("image", id, (await this.images.findOne({ _id: id }))?.status, change.status);
    });
  }

  async insertTask(task: TaskRecord): Promise<void> {
    await guard(async () => {
      await this.tasks.insertOne({ _id: task.id, ...task });
      await this.recordChange(task);
    });
  }

  async findTask(id: string): Promise<TaskRecord | undefined> {
    return guard(async () => strip(await this.tasks.findOne({ _id: id })));
  }

  async listTasks({ filter, limit, after }: PageRequest<TaskFilter>): Promise<Page<TaskRecord>> {
    const query: Filter<TaskDoc> = {};
    if (filter.owner !== undefined) query.owner = filter.owner;
    if (filter.state !== undefined) query.state = filter.state;
    if (filter.type !== undefined) query.type = filter.type;
    if (filter.imageId !== undefined) query.imageId = filter.imageId;
    return guard(() => page(this.tasks, query, limit, after));
  }

  async updateTask(id: string, change: TaskChange): Promise<TaskRecord> {
    const sources = taskChangeSources(change);
    return guard(async () => {
      const updated = await this.tasks.findOneAndUpdate(
        { _id: id, state: { $in: sources } },
        { $set: taskChangeFields(change, Date.now()), $inc: { version: 1 } },
        { returnDocument: "after" },
      );
      if (!updated) throw refusal("task", id, (await this.tasks.findOne({ _id: id }))?.state, change.state);
      const task = strip(updated)!;
      await this.recordChange(task);
      return task;
    });
  }

  async listTaskChanges(id: string, afterVersion: number, limit = 1000): Promise<TaskRecord[]> {
    return guard(async () => {
      const docs = await this.taskChanges
        .find({ taskId: id, version: { $gt: afterVersion } })
        .sort({ version: 1 })
        .limit(limit)
        .toArray();
      return docs.map((d) => d.task);
    });
  }

  /**
   * Kept after the task update, not in one transaction (FerretDB 1.x has none): if this
   * write is lost, watchers fall back to the task document itself.
   */
  private async recordChange(task: TaskRecord): Promise<void> {
    await this.taskChanges.insertOne({ _id: `${task.id}/${task.version}`, taskId: task.id, version: task.version, task });
  }
}

function strip<T extends { _id: string }>(doc: T | null): Omit<T, "_id"> | undefined {
  if (!doc) return undefined;
  const { _id, ...rest } = doc;
  return rest;
}

async function page<T extends { _id: string; createTime: number; id: string }>(
  collection: Collection<T>,
  query: Filter<T>,
  limit: number,
  after: Cursor | undefined,
): Promise<Page<Omit<T, "_id">>> {
  const filter = after
    ? ({ $and: [query, { $or: [{ createTime: { $gt: after.createTime } }, { createTime: after.createTime, _id: { $gt: after.id } }] }] } as Filter<T>)
    : query;
  const docs = await collection.find(filter).sort({ createTime: 1, _id: 1 }).limit(limit + 1).toArray();
  const items = docs.slice(0, limit).map((d) => strip(d as T)!);
  const last = items.at(-1);
  return docs.length > limit && last ? { items, next: { createTime: last.createTime, id: last.id } } : { items };
}

/** Connection failures become UNAVAILABLE; the driver reconnects by itself when the server returns. */
async function guard<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    if (
      err instanceof MongoServerSelectionError ||
      err instanceof MongoNetworkError ||
      err instanceof MongoNotConnectedError ||
      err instanceof MongoTopologyClosedError
    ) {
      throw unavailable("the database is unreachable; try again shortly", err);
    }
    throw err;
  }
}
