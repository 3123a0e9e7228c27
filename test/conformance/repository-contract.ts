import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { newId } from "../../src/core/ids.js";
import { newImageRecord, type ImageRecord } from "../../src/core/image.js";
import { newTaskRecord, type TaskRecord } from "../../src/core/task.js";
import type { Repository } from "../../src/persistence/repository.js";

export interface RepositoryHarness {
  /** A repository on an empty database. */
  create(): Promise<Repository>;
  /** A second repository on the same database, as another process or a restart would open. */
  reopen(): Promise<Repository>;
  cleanup(): Promise<void>;
}

let clock = Date.now();
/** Distinct, increasing creation times, with a repeat now and then to exercise the id tie-break. */
const tick = () => (clock += Math.random() < 0.2 ? 0 : 1);

const image = (fields: Partial<ImageRecord> = {}) => newImageRecord({ id: newId(), owner: "p1", ...fields }, tick());
const task = (fields: Partial<TaskRecord> = {}) =>
  newTaskRecord({ id: newId(), type: "import", imageId: newId(), owner: "p1", ...fields }, tick());

/** The order lists promise: creation time, then id for items created in the same millisecond. */
const ids = <T extends { createTime: number; id: string }>(items: T[]) =>
  [...items].sort((a, b) => a.createTime - b.createTime || (a.id < b.id ? -1 : 1)).map((i) => i.id);

/** The whole repository contract; every adapter runs it. */
export function repositoryContract(name: string, harness: RepositoryHarness): void {
  describe(`repository contract: ${name}`, () => {
    let repo: Repository;

    beforeAll(async () => {
      repo = await harness.create();
      await repo.init();
    });
    afterAll(async () => {
      await repo?.close();
      await harness.cleanup();
    });

    it("stores and finds images; missing ids find nothing", async () => {
      const img = image({ name: "cirros", properties: { os: "linux" }, diskFormat: "qcow2" });
      await repo.insertImage(img);
      expect(await repo.findImage(img.id)).toEqual(img);
      expect(await repo.findImage(newId())).toBeUndefined();
    });

    it("refuses a second image with the same id", async () => {
      const img = image();
      await repo.insertImage(img);
      await expect(repo.insertImage(img)).rejects.toThrow();
    });

    it("lists images in creation order, a page at a time, with filters", async () => {
      const owner = `owner-${newId()}`;
      const made: ImageRecord[] = [];
      for (let i = 0; i < 7; i++) made.push(image({ owner, name: i % 2 ? "odd" : "even" }));
      for (const img of [...made].reverse()) await repo.insertImage(img);
      await repo.updateImage(made[6]!.id, { status: "deleted" });

      const seen: string[] = [];
      let after;
      do {
        const page = await repo.listImages({ filter: { owner }, limit: 2, after });
        expect(page.items.length).toBeLessThanOrEqual(2);
        seen.push(...page.items.map((i) => i.id));
        after = page.next;
      } while (after);
      // Deleted images are left out unless asked for; order is creation order.
      expect(seen).toEqual(ids(made.slice(0, 6)));

      const odd = await repo.listImages({ filter: { owner, name: "odd" }, limit: 10 });
      expect(odd.items.map((i) => i.id)).toEqual(ids([made[1]!, made[3]!, made[5]!]));
      const deleted = await repo.listImages({ filter: { owner, status: "deleted" }, limit: 10 });
      expect(deleted.items.map((i) => i.id)).toEqual([made[6]!.id]);
      expect(deleted.next).toBeUndefined();
    });

    it("applies image changes only from allowed and expected statuses", async () => {
      const img = image();
      await repo.insertImage(img);
      const renamed = await repo.updateImage(img.id, { patch: { name: "renamed" } });
      expect(renamed.name).toBe("renamed");
      expect(renamed.updateTime).toBeGreaterThanOrEqual(img.updateTime);

      await expect(repo.updateImage(img.id, { status: "active", expect: ["importing"] })).rejects.toMatchObject({
        kind: "failed-precondition",
      });
      await repo.updateImage(img.id, { status: "importing" });
      const active = await repo.updateImage(img.id, { status: "active", expect: ["importing"], patch: { size: 42 } });
      expect(active).toMatchObject({ status: "active", size: 42 });
      // ACTIVE can only become DELETED.
      await expect(repo.updateImage(img.id, { status: "queued" })).rejects.toMatchObject({
        kind: "failed-precondition",
        message: expect.stringContaining("ACTIVE"),
      });
      await repo.updateImage(img.id, { status: "deleted" });
      await expect(repo.updateImage(img.id, { patch: { name: "x" } })).rejects.toMatchObject({ kind: "failed-precondition" });
      await expect(repo.updateImage(newId(), { patch: { name: "x" } })).rejects.toMatchObject({ kind: "not-found" });
      expect((await repo.findImage(img.id))?.status).toBe("deleted");
    });

    it("lets exactly one of many racing image changes win", async () => {
      const other = await harness.reopen();
      try {
        for (let round = 0; round < 5; round++) {
          const img = image();
          await repo.insertImage(img);
          const results = await Promise.allSettled(
            Array.from({ length: 10 }, (_, i) =>
              (i % 2 ? other : repo).updateImage(img.id, { status: "importing", expect: ["queued"] }),
            ),
          );
          expect(results.filter((r) => r.status === "fulfilled")).toHaveLength(1);
          expect(await repo.findImage(img.id)).toMatchObject({ status: "importing", version: 2 });
        }
      } finally {
        await other.close();
      }
    });

    it("moves tasks through their state machine, counting versions and keeping each change", async () => {
      const t = task();
      await repo.insertTask(t);
      expect(await repo.findTask(t.id)).toEqual(t);
      const running = await repo.updateTask(t.id, { state: "running", patch: { attempts: 1 } });
      expect(running).toMatchObject({ state: "running", attempts: 1, version: 2 });
      const progressed = await repo.updateTask(t.id, {
        expect: ["running"],
        patch: { progress: { stage: "fetch", bytesDone: 10, bytesTotal: 100 } },
      });
      expect(progressed.version).toBe(3);
      const done = await repo.updateTask(t.id, {
        state: "succeeded",
        patch: { result: { imageId: t.imageId, storeUris: ["file://local/x"] } },
      });
      expect(done).toMatchObject({ state: "succeeded", version: 4, result: { storeUris: ["file://local/x"] } });
      expect(done.finishTime).toBeGreaterThanOrEqual(done.createTime);

      const changes = await repo.listTaskChanges(t.id, 0);
      expect(changes.map((c) => [c.version, c.state])).toEqual([
        [1, "pending"],
        [2, "running"],
        [3, "running"],
        [4, "succeeded"],
      ]);
      expect(changes[2]!.progress.bytesDone).toBe(10);
      expect((await repo.listTaskChanges(t.id, 2)).map((c) => c.version)).toEqual([3, 4]);
      expect(await repo.findTask(t.id)).toEqual(done);
    });

    it("refuses every transition the state machine does not allow", async () => {
      const t = task();
      await repo.insertTask(t);
      await expect(repo.updateTask(t.id, { state: "succeeded" })).rejects.toMatchObject({ kind: "failed-precondition" });
      await expect(repo.updateTask(t.id, { state: "pending" })).rejects.toMatchObject({ kind: "failed-precondition" });
      await repo.updateTask(t.id, { state: "running" });
      await expect(repo.updateTask(t.id, { state: "pending" })).rejects.toMatchObject({ kind: "failed-precondition" });
      await repo.updateTask(t.id, { state: "failed", patch: { error: { reason: "SOURCE_NOT_FOUND", message: "gone" } } });
      for (const state of ["pending", "running", "succeeded", "canceled", "failed"] as const) {
        await expect(repo.updateTask(t.id, { state })).rejects.toMatchObject({
          kind: "failed-precondition",
          message: expect.stringContaining("FAILED"),
        });
      }
      // A terminal task takes no more progress either.
      await expect(repo.updateTask(t.id, { patch: { attempts: 9 } })).rejects.toMatchObject({ kind: "failed-precondition" });
      await expect(repo.updateTask(newId(), { state: "running" })).rejects.toMatchObject({ kind: "not-found" });

      const direct = task();
      await repo.insertTask(direct);
      expect((await repo.updateTask(direct.id, { state: "canceled" })).state).toBe("canceled");
    });

    it("lets exactly one of many racing claims of a task win, across connections", async () => {
      const other = await harness.reopen();
      try {
        for (let round = 0; round < 5; round++) {
          const t = task();
          await repo.insertTask(t);
          const results = await Promise.allSettled(
            Array.from({ length: 10 }, (_, i) =>
              (i % 2 ? other : repo).updateTask(t.id, { state: "running", expect: ["pending"], patch: { attempts: i } }),
            ),
          );
          const won = results.filter((r) => r.status === "fulfilled");
          expect(won).toHaveLength(1);
          // The stored task is the winner's, and its change log holds no second claim.
          expect(await repo.findTask(t.id)).toEqual((won[0] as PromiseFulfilledResult<TaskRecord>).value);
          expect((await repo.listTaskChanges(t.id, 0)).map((c) => c.state)).toEqual(["pending", "running"]);
        }
      } finally {
        await other.close();
      }
    });

    it("lists tasks by state, type and image, a page at a time", async () => {
      const owner = `owner-${newId()}`;
      const imageId = newId();
      const made = [
        task({ owner, imageId, type: "import" }),
        task({ owner, type: "export" }),
        task({ owner, imageId, type: "copy" }),
        task({ owner, type: "import" }),
      ];
      for (const t of made) await repo.insertTask(t);
      await repo.updateTask(made[3]!.id, { state: "running" });

      const byImage = await repo.listTasks({ filter: { owner, imageId }, limit: 10 });
      expect(byImage.items.map((t) => t.id)).toEqual(ids([made[0]!, made[2]!]));
      const imports = await repo.listTasks({ filter: { owner, type: "import" }, limit: 10 });
      expect(imports.items.map((t) => t.id)).toEqual(ids([made[0]!, made[3]!]));
      const running = await repo.listTasks({ filter: { owner, state: "running" }, limit: 10 });
      expect(await repo.countTasks({ owner, state: "running" })).toBe(1);
      expect(await repo.countTasks({ owner })).toBe(4);
      expect(running.items.map((t) => t.id)).toEqual([made[3]!.id]);

      const first = await repo.listTasks({ filter: { owner }, limit: 3 });
      expect(first.items.map((t) => t.id)).toEqual(ids(made).slice(0, 3));
      const second = await repo.listTasks({ filter: { owner }, limit: 3, after: first.next });
      expect(second.items.map((t) => t.id)).toEqual(ids(made).slice(3));
      expect(second.next).toBeUndefined();
    });

    it("counts tasks by type and state, leaving out combinations without tasks", async () => {
      const counts = async () => new Map((await repo.countTasksByTypeAndState()).map((c) => [`${c.type}/${c.state}`, c.count]));
      const before = await counts();
      const made = [task({ type: "import" }), task({ type: "import" }), task({ type: "export" }), task({ type: "copy" })];
      for (const t of made) await repo.insertTask(t);
      await repo.updateTask(made[1]!.id, { state: "running" });
      await repo.updateTask(made[3]!.id, { state: "canceled" });
      const after = await counts();
      const added = (key: string) => (after.get(key) ?? 0) - (before.get(key) ?? 0);
      expect(["import/pending", "import/running", "export/pending", "copy/canceled", "copy/pending"].map(added)).toEqual([1, 1, 1, 1, 0]);
      expect([...after.values()].every((n) => n > 0)).toBe(true);
    });

    it("leases running tasks: only the holder writes, and an expired lease can be taken over once", async () => {
      const t = task();
      await repo.insertTask(t);
      const now = Date.now();
      const a = { owner: "worker-a", expireTime: now + 30_000 };
      await repo.updateTask(t.id, { expect: ["pending"], state: "running", patch: { attempts: 1, lease: a } });
      // While the lease is live, nobody else may take the task or write to it.
      await expect(repo.updateTask(t.id, { expect: ["running"], leaseExpiredBefore: now, patch: { lease: { owner: "worker-b", expireTime: now + 60_000 } } })).rejects.toMatchObject({
        kind: "failed-precondition",
        reason: "LEASE_LOST",
      });
      await expect(repo.updateTask(t.id, { leaseOwner: "worker-b", patch: { attempts: 9 } })).rejects.toMatchObject({ reason: "LEASE_LOST" });
      expect(await repo.updateTask(t.id, { leaseOwner: "worker-a", patch: { progress: { stage: "fetching", bytesDone: 1, bytesTotal: 2 } } })).toMatchObject({
        lease: a,
      });

      // After it expires, exactly one of two racing workers takes it over.
      const later = a.expireTime + 1;
      const takeovers = await Promise.allSettled(
        ["worker-b", "worker-c"].map((owner) =>
          repo.updateTask(t.id, { expect: ["running"], leaseExpiredBefore: later, patch: { attempts: 2, lease: { owner, expireTime: later + 30_000 } } }),
        ),
      );
      expect(takeovers.filter((r) => r.status === "fulfilled")).toHaveLength(1);
      const holder = ((await repo.findTask(t.id))!.lease!).owner;
      // The old holder has lost it: its writes are refused, so it stops.
      await expect(repo.updateTask(t.id, { leaseOwner: "worker-a", state: "succeeded" })).rejects.toMatchObject({ reason: "LEASE_LOST" });
      expect(await repo.updateTask(t.id, { leaseOwner: holder, state: "succeeded" })).toMatchObject({ state: "succeeded", attempts: 2 });
    });

    it("lists the tasks a worker may claim: pending ones and running ones whose lease expired", async () => {
      const now = Date.now() + 3_600_000; // later than any live lease made elsewhere in this suite
      const pending = task();
      const expired = task();
      const live = task();
      const done = task();
      for (const t of [pending, expired, live, done]) await repo.insertTask(t);
      await repo.updateTask(expired.id, { state: "running", patch: { lease: { owner: "gone", expireTime: now - 1 } } });
      await repo.updateTask(live.id, { state: "running", patch: { lease: { owner: "alive", expireTime: now + 30_000 } } });
      await repo.updateTask(done.id, { state: "canceled" });
      const claimable = (await repo.listClaimableTasks(now, 1000)).map((t) => t.id);
      expect(claimable).toContain(pending.id);
      expect(claimable).toContain(expired.id);
      expect(claimable).not.toContain(live.id);
      expect(claimable).not.toContain(done.id);
      // Oldest first (creation time, then id).
      expect(claimable.filter((id) => id === pending.id || id === expired.id)).toEqual(ids([pending, expired]));
    });

    it("lets one idempotency key name one task per project within the window, even under races", async () => {
      const now = Date.now();
      const key = `key-${newId()}`;
      const ids = Array.from({ length: 6 }, () => newId());
      const other = await harness.reopen();
      try {
        const named = await Promise.all(ids.map((id, i) => (i % 2 ? other : repo).reserveIdempotencyKey("p1", key, id, now, now - 1000)));
        // Every racer learns the same winner, and the winner is one of them.
        expect(new Set(named).size).toBe(1);
        expect(ids).toContain(named[0]);
      } finally {
        await other.close();
      }
      const winner = await repo.reserveIdempotencyKey("p1", key, newId(), now, now - 1000);
      // Another project's key is its own.
      const theirs = newId();
      expect(await repo.reserveIdempotencyKey("p2", key, theirs, now, now - 1000)).toBe(theirs);
      // Releasing for another task leaves the key; releasing for its own task frees it.
      await repo.releaseIdempotencyKey("p1", key, theirs);
      expect(await repo.reserveIdempotencyKey("p1", key, newId(), now, now - 1000)).toBe(winner);
      await repo.releaseIdempotencyKey("p1", key, winner);
      const fresh = newId();
      expect(await repo.reserveIdempotencyKey("p1", key, fresh, now, now - 1000)).toBe(fresh);
      // Once the window has passed, the key is free again.
      const later = newId();
      expect(await repo.reserveIdempotencyKey("p1", key, later, now + 5000, now + 1)).toBe(later);
    });

    it("keeps everything across a reopen", async () => {
      const img = image({ name: "kept" });
      const t = task({ imageId: img.id });
      await repo.insertImage(img);
      await repo.insertTask(t);
      await repo.updateTask(t.id, { state: "running" });
      const again = await harness.reopen();
      try {
        expect(await again.findImage(img.id)).toEqual(img);
        expect(await again.findTask(t.id)).toMatchObject({ state: "running", version: 2 });
        expect(await again.listTaskChanges(t.id, 0)).toHaveLength(2);
      } finally {
        await again.close();
      }
    });
  });
}
