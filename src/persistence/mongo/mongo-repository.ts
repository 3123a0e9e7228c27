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
  applyUsage,
  imageChangeSources,
  imageUsageDelta,
  noUsage,
  taskUsageDelta,
  refusal,
  sameUsage,
  taskChangeFields,
  taskChangeApplies,
  taskChangeSources,
  taskRefusal,
  type ImageChange,
  type QuotaLimits,
  type Repository,
  type TaskChange,
  type TaskCount,
  type Usage,
} from "../repository.js";

type ImageDoc = ImageRecord & { _id: string };
type TaskDoc = TaskRecord & { _id: string };
/** A committed change: the record's snapshot at `version`, keyed "ID/VERSION". */
type ChangeDoc<T> = { _id: string; recordId: string; version: number; record: T };
/** A project's usage at one version, keyed "OWNER/VERSION": the newest version is the current usage. */
type UsageDoc = Usage & { _id: string; owner: string; version: number };

/** How often a change retries after losing a race to a change that was then refused or applied. */
const MAX_CHANGE_ATTEMPTS = 20;
/** Usage changes race whenever a project imports in parallel: they retry longer, with a short random pause. */
const MAX_USAGE_ATTEMPTS = 200;
/** Usage versions kept behind the newest one; older ones are removed now and then. */
const USAGE_HISTORY = 50;

export interface MongoRepositoryOptions {
  uri: string;
  /** How long an operation waits for a reachable server before answering UNAVAILABLE. */
  serverSelectionTimeoutMS?: number;
  /**
   * How long a call waits for the server's answer. A server that accepts connections but
   * does not answer (overloaded, stopped) must not hold a worker or an RPC forever.
   */
  socketTimeoutMS?: number;
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
  private readonly imageChanges: Collection<ChangeDoc<ImageRecord>>;
  private readonly taskChanges: Collection<ChangeDoc<TaskRecord>>;
  private readonly idempotencyKeys: Collection<{ _id: string; taskId: string; createTime: number }>;
  private readonly usage: Collection<UsageDoc>;

  constructor(options: MongoRepositoryOptions) {
    this.client = new MongoClient(options.uri, {
      serverSelectionTimeoutMS: options.serverSelectionTimeoutMS ?? 5000,
      // A new connection's handshake waits no longer than a call does.
      connectTimeoutMS: options.socketTimeoutMS ?? 20_000,
      socketTimeoutMS: options.socketTimeoutMS ?? 20_000,
      ignoreUndefined: true,
    });
    // The URI's database, or "imagetransfer" when it names none.
    this.db = this.client.db(new URL(options.uri.replace(/^mongodb(\+srv)?:/, "http:")).pathname.slice(1) || "imagetransfer");
    this.images = this.db.collection("images");
    this.tasks = this.db.collection("tasks");
    this.imageChanges = this.db.collection("image_changes");
    this.taskChanges = this.db.collection("task_changes");
    this.idempotencyKeys = this.db.collection("idempotency_keys");
    this.usage = this.db.collection("usage");
  }

  async init(): Promise<void> {
    await guard(async () => {
      await this.images.createIndex({ createTime: 1, _id: 1 });
      await this.images.createIndex({ owner: 1, createTime: 1 });
      await this.tasks.createIndex({ createTime: 1, _id: 1 });
      await this.tasks.createIndex({ state: 1, createTime: 1 });
      await this.tasks.createIndex({ imageId: 1 });
      await this.taskChanges.createIndex({ recordId: 1, version: 1 });
      await this.usage.createIndex({ owner: 1, version: -1 });
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
    let before: ImageRecord | undefined;
    const updated = await guard(() =>
      commitChange(this.images, this.imageChanges, id, (current) => {
        if (!current || !sources.includes(current.status)) throw refusal("image", id, current?.status, change.status);
        before = current;
        return {
          ...current,
          ...change.patch,
          status: change.status ?? current.status,
          updateTime: Math.max(Date.now(), current.updateTime),
          version: current.version + 1,
        };
      }),
    );
    const delta = imageUsageDelta(before!, updated);
    if (delta) await this.settleUsage(updated.owner, delta);
    return updated;
  }

  async insertTask(task: TaskRecord): Promise<void> {
    // Side by side, one round trip's wait instead of two: a change record whose task insert failed
    // names a task no one can find, so nothing reads it.
    await guard(async () => {
      await Promise.all([
        this.tasks.insertOne({ _id: task.id, ...task }),
        this.taskChanges.insertOne({ _id: `${task.id}/${task.version}`, recordId: task.id, version: task.version, record: task }),
      ]);
    });
  }

  async findTask(id: string): Promise<TaskRecord | undefined> {
    return guard(async () => strip(await this.tasks.findOne({ _id: id })));
  }

  async listTasks({ filter, limit, after }: PageRequest<TaskFilter>): Promise<Page<TaskRecord>> {
    return guard(() => page(this.tasks, taskQuery(filter), limit, after));
  }

  async countTasks(filter: TaskFilter): Promise<number> {
    return guard(() => this.tasks.countDocuments(taskQuery(filter)));
  }

  async countTasksByTypeAndState(): Promise<TaskCount[]> {
    return guard(async () => {
      const groups = await this.tasks
        .aggregate<{ _id: { type: TaskCount["type"]; state: TaskCount["state"] }; count: number }>([
          { $group: { _id: { type: "$type", state: "$state" }, count: { $sum: 1 } } },
        ])
        .toArray();
      return groups.map(({ _id, count }) => ({ type: _id.type, state: _id.state, count }));
    });
  }

  async updateTask(id: string, change: TaskChange): Promise<TaskRecord> {
    const sources = taskChangeSources(change);
    let before: TaskRecord | undefined;
    const updated = await guard(() =>
      commitChange(this.tasks, this.taskChanges, id, (current) => {
        if (!current || !taskChangeApplies(current, change, sources)) throw taskRefusal(id, current, change);
        before = current;
        return {
          ...current,
          ...taskChangeFields(change, Math.max(Date.now(), current.updateTime)),
          version: current.version + 1,
        };
      }),
    );
    const delta = taskUsageDelta(before!, updated);
    if (delta) await this.settleUsage(updated.owner, delta);
    return updated;
  }

  /**
   * Follows a committed change with its usage change. The change stands whatever happens
   * here (its caller must not retry it), so a failure (the database went away in between,
   * like a crash) is not reported: it leaves the usage high, never low.
   */
  private async settleUsage(owner: string, delta: Partial<Usage>): Promise<void> {
    await this.changeUsage(owner, delta).catch(() => undefined);
  }

  /**
   * Like every change here, committed by inserting the next version with a unique _id,
   * so of racing writers exactly one wins each version, also where findOneAndUpdate
   * is not atomic across connections.
   */
  async changeUsage(owner: string, delta: Partial<Usage>, limits?: QuotaLimits): Promise<Usage> {
    return guard(async () => {
      for (let attempt = 0; attempt < MAX_USAGE_ATTEMPTS; attempt++) {
        const current = await this.latestUsage(owner);
        const version = (current?.version ?? 0) + 1;
        const next = applyUsage(owner, current ?? noUsage, delta, limits);
        // Without quotas imports are not counted, so most task ends would lower a zero count: nothing to write.
        if (sameUsage(current ?? noUsage, next)) return next;
        try {
          await this.usage.insertOne({ _id: `${owner}/${version}`, owner, version, ...next });
        } catch (err) {
          if (!isDuplicateKey(err)) throw err;
          await new Promise((resolve) => setTimeout(resolve, Math.random() * 20));
          continue;
        }
        if (version % USAGE_HISTORY === 0) await this.usage.deleteMany({ owner, version: { $lt: version - USAGE_HISTORY } });
        return next;
      }
      throw unavailable(`too many concurrent changes to the usage of project "${owner}"; try again`);
    });
  }

  async getUsage(owner: string): Promise<Usage> {
    const latest = await guard(() => this.latestUsage(owner));
    return latest ? { images: latest.images, imports: latest.imports, storedBytes: latest.storedBytes } : { ...noUsage };
  }

  private async latestUsage(owner: string): Promise<UsageDoc | undefined> {
    return (await this.usage.find({ owner }).sort({ version: -1 }).limit(1).toArray())[0];
  }

  async reserveIdempotencyKey(owner: string, key: string, taskId: string, now: number, since: number): Promise<string> {
    const _id = `${owner}\n${key}`;
    return guard(async () => {
      for (let attempt = 0; attempt < MAX_CHANGE_ATTEMPTS; attempt++) {
        try {
          await this.idempotencyKeys.insertOne({ _id, taskId, createTime: now });
          return taskId;
        } catch (err) {
          if (!isDuplicateKey(err)) throw err;
        }
        const existing = await this.idempotencyKeys.findOne({ _id });
        if (existing && existing.createTime >= since) return existing.taskId;
        // Expired: remove exactly that record (not a newer one), then try to insert again.
        if (existing) await this.idempotencyKeys.deleteOne({ _id, createTime: existing.createTime });
      }
      throw unavailable("too many concurrent requests with one idempotency key; try again");
    });
  }

  async releaseIdempotencyKey(owner: string, key: string, taskId: string): Promise<void> {
    await guard(() => this.idempotencyKeys.deleteOne({ _id: `${owner}\n${key}`, taskId }));
  }

  async deleteFinishedTasks(finishedBefore: number): Promise<number> {
    return guard(async () => {
      const old = await this.tasks
        .find({ state: { $in: ["succeeded", "failed", "canceled"] }, finishTime: { $lt: finishedBefore } }, { projection: { _id: 1 } })
        .toArray();
      const ids = old.map((t) => t._id);
      if (ids.length === 0) return 0;
      await this.taskChanges.deleteMany({ recordId: { $in: ids } });
      await this.tasks.deleteMany({ _id: { $in: ids } });
      return ids.length;
    });
  }

  async listClaimableTasks(now: number, limit: number): Promise<TaskRecord[]> {
    return guard(async () => {
      const docs = await this.tasks
        .find({
          $or: [
            { state: "pending" },
            { state: "running", "lease.expireTime": { $lt: now } },
            { state: "running", lease: { $exists: false } },
          ],
        })
        .sort({ createTime: 1, _id: 1 })
        .limit(limit)
        .toArray();
      return docs.map((d) => strip(d)!);
    });
  }

  async listTaskChanges(id: string, afterVersion: number, limit = 1000): Promise<TaskRecord[]> {
    return guard(async () => {
      const docs = await this.taskChanges
        .find({ recordId: id, version: { $gt: afterVersion } })
        .sort({ version: 1 })
        .limit(limit)
        .toArray();
      return docs.map((d) => d.record);
    });
  }
}

/**
 * One conditional change, atomic on any MongoDB-wire server. The commit point is the
 * insert of the change record "ID/VERSION+1", whose unique _id lets exactly one of any
 * number of racing writers win; the record is then applied to the document. This holds
 * even where findOneAndUpdate does not re-check its filter atomically (FerretDB 1.x
 * with SQLite, seen in the repository contract's race tests). A change committed but
 * not applied (a crash in between) is rolled forward by the next writer.
 */
async function commitChange<T extends { id: string; version: number }>(
  records: Collection<T & { _id: string }>,
  changes: Collection<ChangeDoc<T>>,
  id: string,
  next: (current: T | undefined) => T,
): Promise<T> {
  for (let attempt = 0; attempt < MAX_CHANGE_ATTEMPTS; attempt++) {
    const current = strip(await records.findOne({ _id: id } as Filter<T & { _id: string }>)) as T | undefined;
    let updated: T;
    try {
      updated = next(current);
    } catch (refused) {
      // The refusal may rest on a stale document: apply a pending committed change first.
      const pending = current && (await changes.findOne({ _id: `${id}/${current.version + 1}` }));
      if (!pending) throw refused;
      await apply(records, pending.record);
      continue;
    }
    try {
      await changes.insertOne({ _id: `${id}/${updated.version}`, recordId: id, version: updated.version, record: updated } as never);
    } catch (err) {
      if (!isDuplicateKey(err)) throw err;
      // Another writer committed this version first: make sure it is applied, then look again.
      const winner = await changes.findOne({ _id: `${id}/${updated.version}` });
      if (winner) await apply(records, winner.record);
      continue;
    }
    await apply(records, updated);
    return updated;
  }
  throw unavailable(`too many concurrent changes to ${id}; try again`);
}

/** Writes a committed snapshot over the version before it; a no-op once applied. */
async function apply<T extends { id: string; version: number }>(records: Collection<T & { _id: string }>, record: T) {
  await records.replaceOne({ _id: record.id, version: record.version - 1 } as Filter<T & { _id: string }>, {
    _id: record.id,
    ...record,
  } as T & { _id: string });
}

function isDuplicateKey(err: unknown): boolean {
  return typeof err === "object" && err !== null && (err as { code?: unknown }).code === 11000;
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

function taskQuery(filter: TaskFilter): Filter<TaskDoc> {
  const query: Filter<TaskDoc> = {};
  if (filter.owner !== undefined) query.owner = filter.owner;
  if (filter.state !== undefined) query.state = filter.state;
  if (filter.type !== undefined) query.type = filter.type;
  if (filter.imageId !== undefined) query.imageId = filter.imageId;
  return query;
}
