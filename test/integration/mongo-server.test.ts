// Checks the test MongoDB server (FerretDB unless MONGODB_URI/mongod is available) supports
// the operations our persistence layer relies on.
import { connect } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { MongoClient, MongoServerError, type Collection, type Db } from "mongodb";
import { startMongoServer, type MongoServer } from "../helpers/mongo-server.js";

interface TransferDoc {
  _id: string;
  owner: string;
  state: string;
  priority: number;
  createdAt: number;
  attempts?: number;
  progress?: { bytes: number; total: number };
}

// A first run may have to build FerretDB from source.
const startTimeoutMs = 300_000;

let server: MongoServer;
let client: MongoClient;
let db: Db;

beforeAll(async () => {
  server = await startMongoServer();
  client = new MongoClient(server.uri);
  await client.connect();
  db = client.db("itx_test");
}, startTimeoutMs);

afterAll(async () => {
  await client?.close();
  await server?.stop();
});

function transfers(name: string): Collection<TransferDoc> {
  return db.collection<TransferDoc>(name);
}

function seed(): TransferDoc[] {
  return [
    { _id: "a", owner: "alice", state: "queued", priority: 1, createdAt: 30 },
    { _id: "b", owner: "alice", state: "queued", priority: 5, createdAt: 20 },
    { _id: "c", owner: "bob", state: "running", priority: 5, createdAt: 10 },
    { _id: "d", owner: "bob", state: "done", priority: 9, createdAt: 5 },
    { _id: "e", owner: "carol", state: "failed", priority: 5, createdAt: 40 },
  ];
}

describe("test MongoDB server", () => {
  it("inserts and reads a document", async () => {
    const coll = transfers("basic");
    await coll.insertOne({ _id: "t1", owner: "alice", state: "queued", priority: 1, createdAt: 1 });
    expect(await coll.findOne({ _id: "t1" })).toEqual({
      _id: "t1", owner: "alice", state: "queued", priority: 1, createdAt: 1,
    });
  });

  it("findOneAndUpdate only matches the expected state", async () => {
    const coll = transfers("cas");
    await coll.insertOne({ _id: "t1", owner: "alice", state: "queued", priority: 1, createdAt: 1 });

    const wrong = await coll.findOneAndUpdate(
      { _id: "t1", state: "running" },
      { $set: { state: "done" } },
      { returnDocument: "after" },
    );
    expect(wrong).toBeNull();

    const updated = await coll.findOneAndUpdate(
      { _id: "t1", state: "queued" },
      { $set: { state: "running" } },
      { returnDocument: "after" },
    );
    expect(updated?.state).toBe("running");
    expect((await coll.findOne({ _id: "t1" }))?.state).toBe("running");
  });

  it("rejects duplicates on a unique index", async () => {
    const coll = db.collection<{ name: string }>("unique");
    await coll.createIndex({ name: 1 }, { unique: true });
    await coll.insertOne({ name: "disk.qcow2" });

    const err = await coll.insertOne({ name: "disk.qcow2" }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(MongoServerError);
    expect((err as MongoServerError).code).toBe(11000);
    expect(await coll.countDocuments({ name: "disk.qcow2" })).toBe(1);
  });

  it("supports $or with a compound sort and limit", async () => {
    const coll = transfers("or_sort");
    await coll.insertMany(seed());
    const docs = await coll
      .find({ $or: [{ state: "queued" }, { owner: "bob" }] })
      .sort({ priority: -1, createdAt: 1 })
      .limit(3)
      .toArray();
    expect(docs.map((d) => d._id)).toEqual(["d", "c", "b"]);
  });

  it("supports $in", async () => {
    const coll = transfers("in");
    await coll.insertMany(seed());
    const docs = await coll.find({ state: { $in: ["running", "failed"] } }).sort({ _id: 1 }).toArray();
    expect(docs.map((d) => d._id)).toEqual(["c", "e"]);
  });

  it("supports $inc", async () => {
    const coll = transfers("inc");
    await coll.insertOne({ _id: "t1", owner: "alice", state: "queued", priority: 1, createdAt: 1 });
    await coll.updateOne({ _id: "t1" }, { $inc: { attempts: 1 } });
    await coll.updateOne({ _id: "t1" }, { $inc: { attempts: 2, priority: -1 } });
    const doc = await coll.findOne({ _id: "t1" });
    expect(doc?.attempts).toBe(3);
    expect(doc?.priority).toBe(0);
  });

  it("supports $set of nested documents and dotted paths", async () => {
    const coll = transfers("nested");
    await coll.insertOne({ _id: "t1", owner: "alice", state: "queued", priority: 1, createdAt: 1 });
    await coll.updateOne({ _id: "t1" }, { $set: { progress: { bytes: 0, total: 100 } } });
    await coll.updateOne({ _id: "t1" }, { $set: { "progress.bytes": 40 } });
    expect((await coll.findOne({ _id: "t1" }))?.progress).toEqual({ bytes: 40, total: 100 });
    expect(await coll.countDocuments({ "progress.bytes": { $gte: 40 } })).toBe(1);
  });

  it("supports countDocuments", async () => {
    const coll = transfers("count");
    await coll.insertMany(seed());
    expect(await coll.countDocuments()).toBe(5);
    expect(await coll.countDocuments({ owner: "alice" })).toBe(2);
    expect(await coll.countDocuments({ priority: { $gte: 5 } })).toBe(4);
  });

  it("supports compound indexes", async () => {
    const coll = transfers("compound");
    await coll.insertMany(seed());
    const name = await coll.createIndex({ owner: 1, createdAt: -1 });
    await coll.createIndex({ owner: 1, state: 1, priority: 1 }, { unique: true, name: "owner_state" });

    const indexes = await coll.listIndexes().toArray();
    expect(indexes.find((i) => i.name === name)?.key).toEqual({ owner: 1, createdAt: -1 });
    expect(indexes.find((i) => i.name === "owner_state")?.unique).toBe(true);

    // Same owner/state/priority as "b": only the full key combination must be unique.
    const dup = { _id: "x", owner: "alice", state: "queued", priority: 5, createdAt: 0 };
    const err = await coll.insertOne(dup).catch((e: unknown) => e);
    expect((err as MongoServerError).code).toBe(11000);
    await coll.insertOne({ ...dup, priority: 6 });
  });

  // Runs last: stopping must free the port.
  it("stops and releases the port", async () => {
    await client.close();
    await server.stop();
    if (process.env.MONGODB_URI) return; // external server: nothing of ours to stop

    const { port } = new URL(server.uri);
    const refused = await new Promise<boolean>((resolve) => {
      const socket = connect(Number(port), "127.0.0.1");
      socket.once("connect", () => {
        socket.destroy();
        resolve(false);
      });
      socket.once("error", () => resolve(true));
    });
    expect(refused).toBe(true);
  });
});
