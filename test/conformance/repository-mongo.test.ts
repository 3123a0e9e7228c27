import { randomBytes } from "node:crypto";
import { MongoClient } from "mongodb";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { newId } from "../../src/core/ids.js";
import { newTaskRecord } from "../../src/core/task.js";
import { MongoRepository } from "../../src/persistence/mongo/mongo-repository.js";
import { startMongoServer, type MongoServer } from "../helpers/mongo-server.js";
import { withDatabase } from "../helpers/mongo-uri.js";
import { repositoryContract } from "./repository-contract.js";

let server: MongoServer;
let uri = "";
beforeAll(async () => {
  server = await startMongoServer();
});
afterAll(async () => {
  await server?.stop();
});

repositoryContract("MongoDB", {
  async create() {
    uri = withDatabase(server.uri, `itx_contract_${randomBytes(4).toString("hex")}`);
    return new MongoRepository({ uri });
  },
  async reopen() {
    const repo = new MongoRepository({ uri });
    await repo.init();
    return repo;
  },
  async cleanup() {},
});

describe("MongoDB adapter: a change committed but not applied", () => {
  it("is rolled forward by the next change, so the task is never stuck", async () => {
    const dbUri = withDatabase(server.uri, `itx_rollforward_${randomBytes(4).toString("hex")}`);
    const repo = new MongoRepository({ uri: dbUri });
    const client = new MongoClient(dbUri);
    try {
      await repo.init();
      const task = newTaskRecord({ id: newId(), type: "import", imageId: newId(), owner: "p" }, Date.now());
      await repo.insertTask(task);
      // A writer that died right after its commit point: the change record exists, the task document is old.
      const running = { ...task, state: "running", version: 2 } as const;
      await client.db().collection("task_changes").insertOne({ _id: `${task.id}/2` as never, recordId: task.id, version: 2, record: running });

      const done = await repo.updateTask(task.id, { state: "succeeded" });
      expect(done).toMatchObject({ state: "succeeded", version: 3 });
      expect((await repo.listTaskChanges(task.id, 0)).map((c) => c.state)).toEqual(["pending", "running", "succeeded"]);
    } finally {
      await client.close();
      await repo.close();
    }
  });
});
