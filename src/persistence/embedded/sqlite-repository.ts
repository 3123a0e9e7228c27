import { mkdirSync } from "node:fs";
import { join } from "node:path";
import Database from "better-sqlite3";
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
  type TaskCount,
  type TaskChange,
  type Usage,
} from "../repository.js";

const schema = `
  CREATE TABLE IF NOT EXISTS images (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, status TEXT NOT NULL, name TEXT NOT NULL,
    create_time INTEGER NOT NULL, doc TEXT NOT NULL);
  CREATE INDEX IF NOT EXISTS images_by_time ON images (create_time, id);
  CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, state TEXT NOT NULL, type TEXT NOT NULL,
    image_id TEXT NOT NULL, create_time INTEGER NOT NULL, doc TEXT NOT NULL);
  CREATE INDEX IF NOT EXISTS tasks_by_time ON tasks (create_time, id);
  CREATE INDEX IF NOT EXISTS tasks_open_by_time ON tasks (create_time, id) WHERE state IN ('pending', 'running');
  CREATE TABLE IF NOT EXISTS idempotency_keys (
    owner TEXT NOT NULL, key TEXT NOT NULL, task_id TEXT NOT NULL, create_time INTEGER NOT NULL,
    PRIMARY KEY (owner, key));
  CREATE TABLE IF NOT EXISTS task_changes (
    task_id TEXT NOT NULL, version INTEGER NOT NULL, doc TEXT NOT NULL,
    PRIMARY KEY (task_id, version));
  CREATE TABLE IF NOT EXISTS usage (
    owner TEXT PRIMARY KEY, images INTEGER NOT NULL, imports INTEGER NOT NULL, stored_bytes INTEGER NOT NULL);
`;

type Row = { doc: string };

/**
 * The embedded repository: one SQLite file under the data dir, for a one-command start
 * with no database server. Each change runs in a transaction, which gives the same
 * conditional-update guarantee as the MongoDB adapter.
 */
export class SqliteRepository implements Repository {
  private readonly db: Database.Database;
  /** Compiled statements by SQL text: compiling costs more than running most of these. */
  private readonly statements = new Map<string, Database.Statement>();

  constructor(dataDir: string) {
    mkdirSync(dataDir, { recursive: true });
    this.db = new Database(join(dataDir, "imagetransfer.sqlite"));
    // WAL keeps readers (watchers, listings) from blocking the writer.
    this.db.pragma("journal_mode = WAL");
    // Under WAL, NORMAL syncs the log at checkpoints, not at each commit: a commit costs about
    // 25 us here, one with an fsync 0.2 to 1.5 ms, and ImportImage makes two. better-sqlite3's
    // SQLite already defaults to it under WAL (DEFAULT_WAL_SYNCHRONOUS=1); it is set here as a
    // decision. A process crash loses nothing; a power loss or OS crash may roll back the last
    // commits, never corrupt the file, leaving an earlier consistent state: a task or image created
    // just before is gone (its client sees NOT_FOUND and imports again), a finished task runs
    // again. The one commit whose loss would do harm, an image deletion after which its data is
    // deleted, is synced (see updateImage).
    this.db.pragma("synchronous = NORMAL");
    this.db.pragma("busy_timeout = 5000");
  }

  async init(): Promise<void> {
    this.db.exec(schema);
  }

  async close(): Promise<void> {
    if (this.db.open) this.db.close();
  }

  async ping(): Promise<void> {
    this.statement("SELECT 1").get();
  }

  async insertImage(image: ImageRecord): Promise<void> {
    this.statement("INSERT INTO images (id, owner, status, name, create_time, doc) VALUES (?, ?, ?, ?, ?, ?)")
      .run(image.id, image.owner, image.status, image.name, image.createTime, JSON.stringify(image));
  }

  async findImage(id: string): Promise<ImageRecord | undefined> {
    return this.findImageSync(id);
  }

  async listImages({ filter, limit, after }: PageRequest<ImageFilter>): Promise<Page<ImageRecord>> {
    const where: string[] = [];
    const args: unknown[] = [];
    if (filter.owner !== undefined) where.push("owner = ?"), args.push(filter.owner);
    if (filter.status !== undefined) where.push("status = ?"), args.push(filter.status);
    else where.push("status <> 'deleted'");
    if (filter.name !== undefined) where.push("name = ?"), args.push(filter.name);
    return this.page<ImageRecord>("images", where, args, limit, after);
  }

  async updateImage(id: string, change: ImageChange): Promise<ImageRecord> {
    // A deleted image's data is removed next, which no rollback can undo: that commit is synced.
    return change.status === "deleted" ? this.synced(() => this.changeImage(id, change)) : this.changeImage(id, change);
  }

  private changeImage(id: string, change: ImageChange): ImageRecord {
    const sources = imageChangeSources(change);
    return this.db.transaction(() => {
      const current = this.findImageSync(id);
      if (!current || !sources.includes(current.status)) throw refusal("image", id, current?.status, change.status);
      const next: ImageRecord = {
        ...current,
        ...change.patch,
        status: change.status ?? current.status,
        updateTime: Math.max(Date.now(), current.updateTime),
        version: current.version + 1,
      };
      this.statement("UPDATE images SET status = ?, name = ?, doc = ? WHERE id = ?")
        .run(next.status, next.name, JSON.stringify(next), id);
      const delta = imageUsageDelta(current, next);
      if (delta) this.changeUsageSync(next.owner, delta);
      return next;
    }).immediate();
  }

  async insertTask(task: TaskRecord): Promise<void> {
    this.db.transaction(() => {
      this.statement("INSERT INTO tasks (id, owner, state, type, image_id, create_time, doc) VALUES (?, ?, ?, ?, ?, ?, ?)")
        .run(task.id, task.owner, task.state, task.type, task.imageId, task.createTime, JSON.stringify(task));
      this.recordChange(task);
    }).immediate();
  }

  async findTask(id: string): Promise<TaskRecord | undefined> {
    return this.findTaskSync(id);
  }

  async listTasks({ filter, limit, after }: PageRequest<TaskFilter>): Promise<Page<TaskRecord>> {
    const { where, args } = taskWhere(filter);
    return this.page<TaskRecord>("tasks", where, args, limit, after);
  }

  async updateTask(id: string, change: TaskChange): Promise<TaskRecord> {
    const sources = taskChangeSources(change);
    return this.db.transaction(() => {
      const current = this.findTaskSync(id);
      if (!current || !taskChangeApplies(current, change, sources)) throw taskRefusal(id, current, change);
      const next: TaskRecord = {
        ...current,
        ...taskChangeFields(change, Math.max(Date.now(), current.updateTime)),
        version: current.version + 1,
      };
      this.statement("UPDATE tasks SET state = ?, doc = ? WHERE id = ?").run(next.state, JSON.stringify(next), id);
      this.recordChange(next);
      const delta = taskUsageDelta(current, next);
      if (delta) this.changeUsageSync(next.owner, delta);
      return next;
    }).immediate();
  }

  async reserveIdempotencyKey(owner: string, key: string, taskId: string, now: number, since: number): Promise<string> {
    return this.db.transaction(() => {
      const row = this.statement("SELECT task_id, create_time FROM idempotency_keys WHERE owner = ? AND key = ?").get(owner, key) as
        | { task_id: string; create_time: number }
        | undefined;
      if (row && row.create_time >= since) return row.task_id;
      this.statement("INSERT OR REPLACE INTO idempotency_keys (owner, key, task_id, create_time) VALUES (?, ?, ?, ?)")
        .run(owner, key, taskId, now);
      return taskId;
    }).immediate();
  }

  async releaseIdempotencyKey(owner: string, key: string, taskId: string): Promise<void> {
    this.statement("DELETE FROM idempotency_keys WHERE owner = ? AND key = ? AND task_id = ?").run(owner, key, taskId);
  }

  async countTasks(filter: TaskFilter): Promise<number> {
    const { where, args } = taskWhere(filter);
    const clause = where.length > 0 ? `WHERE ${where.join(" AND ")}` : "";
    return (this.statement(`SELECT COUNT(*) AS n FROM tasks ${clause}`).get(...args) as { n: number }).n;
  }

  async countTasksByTypeAndState(): Promise<TaskCount[]> {
    return this.statement("SELECT type, state, COUNT(*) AS count FROM tasks GROUP BY type, state").all() as TaskCount[];
  }

  async deleteFinishedTasks(finishedBefore: number): Promise<number> {
    return this.db.transaction(() => {
      const ids = (
        this.statement(
          `SELECT id FROM tasks WHERE state IN ('succeeded', 'failed', 'canceled')
             AND json_extract(doc, '$.finishTime') < ?`,
        ).all(finishedBefore) as Array<{ id: string }>
      ).map((r) => r.id);
      for (const id of ids) {
        this.statement("DELETE FROM task_changes WHERE task_id = ?").run(id);
        this.statement("DELETE FROM tasks WHERE id = ?").run(id);
      }
      return ids.length;
    }).immediate();
  }

  async listClaimableTasks(now: number, limit: number): Promise<TaskRecord[]> {
    // The state IN term lets SQLite use the partial index of open tasks instead of reading every finished one.
    const rows = this.statement(
      `SELECT doc FROM tasks WHERE state IN ('pending', 'running')
         AND (state = 'pending' OR COALESCE(json_extract(doc, '$.lease.expireTime'), 0) < ?)
       ORDER BY create_time, id LIMIT ?`,
    ).all(now, limit) as Row[];
    return rows.map((r) => JSON.parse(r.doc));
  }

  async listTaskChanges(id: string, afterVersion: number, limit = 1000): Promise<TaskRecord[]> {
    const rows = this.statement("SELECT doc FROM task_changes WHERE task_id = ? AND version > ? ORDER BY version LIMIT ?")
      .all(id, afterVersion, limit) as Row[];
    return rows.map((r) => JSON.parse(r.doc));
  }

  async changeUsage(owner: string, delta: Partial<Usage>, limits?: QuotaLimits): Promise<Usage> {
    return this.db.transaction(() => this.changeUsageSync(owner, delta, limits)).immediate();
  }

  async getUsage(owner: string): Promise<Usage> {
    return this.usageSync(owner);
  }

  private changeUsageSync(owner: string, delta: Partial<Usage>, limits?: QuotaLimits): Usage {
    const current = this.usageSync(owner);
    const next = applyUsage(owner, current, delta, limits);
    // Without quotas imports are not counted, so most task ends would lower a zero count: nothing to write.
    if (sameUsage(current, next)) return next;
    this.statement("INSERT OR REPLACE INTO usage (owner, images, imports, stored_bytes) VALUES (?, ?, ?, ?)")
      .run(owner, next.images, next.imports, next.storedBytes);
    return next;
  }

  private usageSync(owner: string): Usage {
    const row = this.statement("SELECT images, imports, stored_bytes FROM usage WHERE owner = ?").get(owner) as
      | { images: number; imports: number; stored_bytes: number }
      | undefined;
    return row ? { images: row.images, imports: row.imports, storedBytes: row.stored_bytes } : { ...noUsage };
  }

  /** Runs `commit` with the log synced at commit, which also makes every commit before it durable. */
  private synced<T>(commit: () => T): T {
    this.db.pragma("synchronous = FULL");
    try {
      return commit();
    } finally {
      this.db.pragma("synchronous = NORMAL");
    }
  }

  private statement(sql: string): Database.Statement {
    let statement = this.statements.get(sql);
    if (!statement) {
      statement = this.db.prepare(sql);
      this.statements.set(sql, statement);
    }
    return statement;
  }

  /** Synchronous reads, so a transaction can read and write without yielding. */
  private findTaskSync(id: string): TaskRecord | undefined {
    const row = this.statement("SELECT doc FROM tasks WHERE id = ?").get(id) as Row | undefined;
    return row && JSON.parse(row.doc);
  }

  private findImageSync(id: string): ImageRecord | undefined {
    const row = this.statement("SELECT doc FROM images WHERE id = ?").get(id) as Row | undefined;
    return row && JSON.parse(row.doc);
  }

  private recordChange(task: TaskRecord): void {
    this.statement("INSERT INTO task_changes (task_id, version, doc) VALUES (?, ?, ?)")
      .run(task.id, task.version, JSON.stringify(task));
  }

  private page<T extends { createTime: number; id: string }>(
    table: "images" | "tasks",
    where: string[],
    args: unknown[],
    limit: number,
    after: Cursor | undefined,
  ): Page<T> {
    if (after) {
      where.push("(create_time > ? OR (create_time = ? AND id > ?))");
      args.push(after.createTime, after.createTime, after.id);
    }
    const clause = where.length > 0 ? `WHERE ${where.join(" AND ")}` : "";
    const rows = this.statement(`SELECT doc FROM ${table} ${clause} ORDER BY create_time, id LIMIT ?`)
      .all(...args, limit + 1) as Row[];
    const items = rows.slice(0, limit).map((r) => JSON.parse(r.doc) as T);
    const last = items.at(-1);
    return rows.length > limit && last ? { items, next: { createTime: last.createTime, id: last.id } } : { items };
  }
}

function taskWhere(filter: TaskFilter): { where: string[]; args: unknown[] } {
  const where: string[] = [];
  const args: unknown[] = [];
  if (filter.owner !== undefined) where.push("owner = ?"), args.push(filter.owner);
  if (filter.state !== undefined) where.push("state = ?"), args.push(filter.state);
  if (filter.type !== undefined) where.push("type = ?"), args.push(filter.type);
  if (filter.imageId !== undefined) where.push("image_id = ?"), args.push(filter.imageId);
  return { where, args };
}
