import { readdir, rm } from "node:fs/promises";
import { join, resolve } from "node:path";
import type { Logger } from "pino";
import type { Config } from "../config/config.js";
import type { Repository } from "../persistence/repository.js";
import type { ObjectInfo, StoreInstance } from "../plugins/plugin-api.js";
import type { Cursor } from "./paging.js";
import type { ConfiguredStore } from "./stores.js";

/** What one sweep removed, for the log and for `itx admin gc`. */
export interface SweepReport {
  /** Store URIs of removed objects. */
  objects: string[];
  /** Leftovers of writes that never finished, across stores. */
  partialWrites: number;
  /** Local temporary folders removed. */
  workDirs: string[];
  /** Finished tasks removed after their retention time. */
  tasks: number;
}

/** Staged uploads get this long beyond their URL's lifetime before they count as abandoned. */
const UPLOAD_MARGIN_MS = 3600_000;
/** An unfinished write untouched this long has no writer left. */
const PARTIAL_WRITE_AGE_MS = 3600_000;

/**
 * Removes what nothing uses any more: staged uploads whose URL expired unused, data and
 * exports of killed, deleted or unknown images in every store, temporary folders of
 * tasks no longer running here, and finished tasks past their retention. Anything an
 * active image or an unfinished task still uses is kept.
 */
export class GarbageCollector {
  constructor(
    private readonly config: Config,
    private readonly repository: Repository,
    private readonly stores: ConfiguredStore[],
    private readonly logger: Logger,
    /** The tasks running in this process, whose temporary folders are in use. */
    private readonly runningHere: () => Set<string>,
  ) {}

  async sweep(now = Date.now()): Promise<SweepReport> {
    const report: SweepReport = { objects: [], partialWrites: 0, workDirs: [], tasks: 0 };
    const inUse = await this.seedsInUse();
    for (const store of this.stores) {
      if (!store.instance || store.region !== this.config.region) continue;
      await this.sweepStore(store as ConfiguredStore & { instance: StoreInstance }, inUse, now, report);
    }
    await this.sweepWorkDirs(report);
    report.tasks = await this.repository.deleteFinishedTasks(now - this.config.taskRetentionDays * 86_400_000);
    if (report.objects.length + report.partialWrites + report.workDirs.length + report.tasks > 0) this.logger.info(report, "garbage collected");
    return report;
  }

  /** Seed URIs of imports that have not finished: their uploads are still needed. */
  private async seedsInUse(): Promise<Set<string>> {
    const seeds = new Set<string>();
    for (const state of ["pending", "running"] as const) {
      let after: Cursor | undefined;
      do {
        const page = await this.repository.listTasks({ filter: { state }, limit: 1000, after });
        for (const task of page.items) if (typeof task.input.seedUri === "string") seeds.add(task.input.seedUri);
        after = page.next;
      } while (after);
    }
    return seeds;
  }

  private async sweepStore(store: ConfiguredStore & { instance: StoreInstance }, seeds: Set<string>, now: number, report: SweepReport) {
    const uri = (key: string) => `${store.schemes[0]}://${store.name}/${key}`;
    report.partialWrites += (await store.instance.removePartialWrites?.(new Date(now - PARTIAL_WRITE_AGE_MS))) ?? 0;
    const remove = async (object: ObjectInfo) => {
      await store.instance.delete(object.key);
      report.objects.push(uri(object.key));
    };
    if (store.isStaging) {
      const abandonedBefore = now - this.config.urlTtlSeconds * 1000 - UPLOAD_MARGIN_MS;
      for await (const object of listAll(store.instance, "uploads/")) {
        const modified = object.modifiedTime?.getTime() ?? now;
        if (modified < abandonedBefore && !seeds.has(uri(object.key))) await remove(object);
      }
    }
    for (const prefix of ["images/", "exports/"]) {
      for await (const object of listAll(store.instance, prefix)) {
        const imageId = /^(?:images\/|exports\/)([0-9a-f-]{36})/.exec(object.key)?.[1];
        if (!imageId) continue;
        const image = await this.repository.findImage(imageId);
        // Importing and queued images may be mid-write; only images that can never use the data lose it.
        if (!image || image.status === "killed" || image.status === "deleted") await remove(object);
      }
    }
  }

  private async sweepWorkDirs(report: SweepReport) {
    const root = resolve(this.config.dataDir, "work");
    const running = this.runningHere();
    for (const name of await readdir(root).catch(() => [] as string[])) {
      if (running.has(name)) continue;
      const task = await this.repository.findTask(name);
      // A folder of a task running elsewhere on this data dir (another process) stays.
      if (task?.state === "running" && task.lease && task.lease.expireTime > Date.now()) continue;
      await rm(join(root, name), { recursive: true, force: true });
      report.workDirs.push(name);
    }
  }
}

async function* listAll(store: StoreInstance, prefix: string): AsyncGenerator<ObjectInfo> {
  let pageToken: string | undefined;
  do {
    const page = await store.list({ prefix, pageToken });
    yield* page.objects;
    pageToken = page.nextPageToken;
  } while (pageToken);
}
