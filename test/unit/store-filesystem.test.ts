import * as fs from "node:fs/promises";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { buffer as readAll } from "node:stream/consumers";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import definition from "../../plugins/store-filesystem/index.js";
import {
  isPluginDefinition,
  isStoreError,
  PLUGIN_API_VERSION,
  type StoreConfig,
  type StoreDriver,
  type StoreErrorKind,
  type StoreInstance,
} from "../../src/plugins/plugin-api.js";
import { registerPlugin } from "../helpers/register-plugin.js";

const pluginDir = path.resolve(import.meta.dirname, "../../plugins/store-filesystem");

async function registerDriver(): Promise<StoreDriver> {
  const { stores, converters } = await registerPlugin(definition);
  expect(converters, "a store plugin must not register converters").toHaveLength(0);
  expect(stores).toHaveLength(1);
  return stores[0]!;
}

async function* chunks(...parts: Array<string | Uint8Array>): AsyncGenerator<Uint8Array> {
  for (const part of parts) yield typeof part === "string" ? Buffer.from(part) : part;
}

/** Asserts that `promise` rejects with a StoreError of `kind` and returns it. */
async function storeErrorOf(promise: Promise<unknown>, kind: StoreErrorKind) {
  const err = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err, "expected a StoreError").toBeDefined();
  expect(isStoreError(err), `not a StoreError: ${String(err)}`).toBe(true);
  if (!isStoreError(err)) throw err;
  expect(err.kind, err.message).toBe(kind);
  return err;
}

/** Every file and directory under `dir`, as relative paths, sorted. */
async function tree(dir: string): Promise<string[]> {
  const entries = await fs.readdir(dir, { recursive: true });
  return entries.map(String).sort();
}

let base: string; // temp area: dataDir and an "outside" directory beside it
let dataDir: string;
let outside: string;
let root: string;
let driver: StoreDriver;
let store: StoreInstance;

function config(options: Record<string, unknown>): StoreConfig {
  return { name: "local", region: "test", options, dataDir };
}

beforeEach(async () => {
  base = await fs.realpath(await fs.mkdtemp(path.join(tmpdir(), "itx-store-fs-")));
  dataDir = path.join(base, "data");
  outside = path.join(base, "outside");
  await fs.mkdir(dataDir);
  await fs.mkdir(outside);
  driver = await registerDriver();
  store = await driver.open(config({ root: "objects" }));
  root = path.join(dataDir, "objects");
});

afterEach(async () => {
  await store?.close?.();
  await fs.rm(base, { recursive: true, force: true });
});

describe("plugin definition", () => {
  it("is a store plugin whose manifest matches the API version", async () => {
    expect(isPluginDefinition(definition)).toBe(true);
    expect(definition.kind).toBe("store");
    expect(definition.apiVersion).toBe(PLUGIN_API_VERSION);
    const manifest = JSON.parse(await fs.readFile(path.join(pluginDir, "package.json"), "utf8"));
    expect(manifest.imageTransfer).toEqual({ kind: "store", apiVersion: PLUGIN_API_VERSION, entry: "./index.js" });
  });

  it("serves the file scheme with the advertised capabilities", () => {
    expect(driver.schemes).toEqual(["file"]);
    expect(driver.capabilities).toEqual({
      readRanges: true,
      write: true,
      delete: true,
      list: true,
      presignGet: false,
      presignPut: false,
      maxObjectSize: 0,
      openFile: true,
    });
    expect(store.presign).toBeUndefined();
    expect(store.openFile).toBeTypeOf("function");
  });
});

describe("open", () => {
  it("creates a relative root under dataDir", async () => {
    expect((await fs.stat(root)).isDirectory()).toBe(true);
  });

  it("uses an absolute root as given, creating missing levels", async () => {
    const abs = path.join(base, "elsewhere", "deep", "store");
    const other = await driver.open(config({ root: abs }));
    await other.write("k", chunks("v"));
    expect(await fs.readFile(path.join(abs, "k"), "utf8")).toBe("v");
  });

  it.each([
    ["missing", {}],
    ["null", { root: null }],
    ["a number", { root: 42 }],
    ["an object", { root: { path: "/x" } }],
    ["empty", { root: "" }],
    ["blank", { root: "   " }],
    ["containing NUL", { root: "a\0b" }],
    ["an unknown option", { root: "x", rooot: "y" }],
  ])("refuses a root option that is %s, naming the option", async (_what, options) => {
    const err = await storeErrorOf(Promise.resolve().then(() => driver.open(config(options))), "invalid");
    expect(err.message).toContain("root");
  });

  it("refuses a root that is an existing file", async () => {
    await fs.writeFile(path.join(dataDir, "afile"), "x");
    const err = await storeErrorOf(Promise.resolve().then(() => driver.open(config({ root: "afile" }))), "invalid");
    expect(err.message).toContain("root");
  });
});

// Behaviour every store shares (overwrites, large streaming writes, ...) is proved by the
// conformance kit in test/conformance/store-filesystem.test.ts; these are the file store's own.
describe("write, stat and read", () => {
  it("round-trips an object in nested directories", async () => {
    const written = await store.write("images/2024/disk.qcow2", chunks("hello ", "world"));
    expect(written).toMatchObject({ key: "images/2024/disk.qcow2", size: 11 });
    expect(written.modifiedTime).toBeInstanceOf(Date);

    const info = await store.stat("images/2024/disk.qcow2");
    expect(info).toMatchObject({ key: "images/2024/disk.qcow2", size: 11 });
    expect(info!.modifiedTime!.getTime()).toBe(written.modifiedTime!.getTime());

    expect((await readAll(await store.read("images/2024/disk.qcow2"))).toString()).toBe("hello world");
    expect(await fs.readFile(path.join(root, "images/2024/disk.qcow2"), "utf8")).toBe("hello world");
  });

  it("stores 0-byte and 1-byte objects", async () => {
    expect(await store.write("empty", chunks())).toMatchObject({ key: "empty", size: 0 });
    expect(await store.stat("empty")).toMatchObject({ size: 0 });
    expect((await readAll(await store.read("empty"))).length).toBe(0);
    expect((await readAll(await store.read("empty", { range: { offset: 0 } }))).length).toBe(0);

    expect(await store.write("one", chunks(Uint8Array.of(0xab)))).toMatchObject({ key: "one", size: 1 });
    expect(await store.stat("one")).toMatchObject({ size: 1 });
    expect([...(await readAll(await store.read("one")))]).toEqual([0xab]);
  });

  it("leaves runs of zeros as holes, trailing ones included, and reads them back as zeros", async () => {
    const MiB = 1024 * 1024;
    const data = Buffer.alloc(MiB + 3, 0x5a);
    // Network-sized chunks of zeros, a data chunk that starts and ends with zeros, and zeros at the end.
    const parts = [data, ...Array.from({ length: 128 }, () => Buffer.alloc(64 * 1024)), Buffer.concat([Buffer.alloc(10), data, Buffer.alloc(10)]), Buffer.alloc(8 * MiB)];
    const expected = Buffer.concat(parts);
    expect(await store.write("sparse.raw", chunks(...parts))).toMatchObject({ size: expected.length });
    const file = path.join(root, "sparse.raw");
    // equals, not toEqual: vitest compares a Buffer's bytes one by one, for seconds.
    expect((await fs.readFile(file)).equals(expected)).toBe(true);
    expect((await readAll(await store.read("sparse.raw"))).equals(expected)).toBe(true);
    const { size, blocks } = await fs.stat(file);
    expect(size).toBe(expected.length);
    // About 2 MiB of data in 18 MiB: the 16 MiB of zeros take no disk.
    expect(blocks * 512).toBeLessThan(3 * MiB);
  });

  it("serves ranged reads at the edges", async () => {
    const content = Buffer.from(Array.from({ length: 100 }, (_, i) => i));
    await store.write("r", chunks(content));
    const range = async (offset: number, length?: number) =>
      [...(await readAll(await store.read("r", { range: { offset, length } })))];

    expect(await range(0, 10)).toEqual([...content.subarray(0, 10)]);
    expect(await range(0)).toEqual([...content]);
    expect(await range(0, 100)).toEqual([...content]);
    expect(await range(99, 1)).toEqual([99]);
    expect(await range(99)).toEqual([99]);
    expect(await range(40, 0)).toEqual([]);
    expect(await range(100)).toEqual([]); // offset == size, no length: empty
    expect(await range(100, 0)).toEqual([]);

    for (const [offset, length] of [
      [100, 1],
      [101, undefined],
      [90, 11],
      [0, 101],
      [1000, 5],
    ] as const) {
      const err = await storeErrorOf(store.read("r", { range: { offset, length } }), "invalid");
      expect(err.message).toMatch(/beyond the end/);
    }
    await storeErrorOf(store.read("r", { range: { offset: -1 } }), "invalid");
    await storeErrorOf(store.read("r", { range: { offset: 1.5 } }), "invalid");
    await storeErrorOf(store.read("r", { range: { offset: 0, length: -1 } }), "invalid");
  });

  it("reports missing objects and treats directories as non-objects", async () => {
    expect(await store.stat("nope")).toBeUndefined();
    expect(await store.stat("no/such/dir/key")).toBeUndefined();
    await storeErrorOf(store.read("nope"), "not-found");
    await storeErrorOf(store.read("no/such/dir/key"), "not-found");

    await store.write("dir/child", chunks("x"));
    expect(await store.stat("dir")).toBeUndefined();
    await storeErrorOf(store.read("dir"), "not-found");
    // a key "below" an object
    expect(await store.stat("dir/child/grandchild")).toBeUndefined();
    await storeErrorOf(store.read("dir/child/grandchild"), "not-found");
  });

  it("stops a read when its signal aborts", async () => {
    await store.write("s", chunks(Buffer.alloc(4 * 1024 * 1024)));
    const controller = new AbortController();
    const stream = await store.read("s", { signal: controller.signal });
    const consume = (async () => {
      for await (const _ of stream) controller.abort();
    })();
    await expect(consume).rejects.toMatchObject({ name: "AbortError" });
    expect(stream.destroyed).toBe(true);

    await expect(store.read("s", { signal: AbortSignal.abort() })).rejects.toMatchObject({ name: "AbortError" });
  });

  it("refuses to write over a directory of objects", async () => {
    await store.write("d/x", chunks("x"));
    await storeErrorOf(store.write("d", chunks("y")), "invalid");
    await storeErrorOf(store.write("d/x/y", chunks("y")), "invalid");
    expect(await tree(root)).toEqual(["d", "d/x"]);
  });
});

describe("failed writes leave nothing behind", () => {
  it("an abort mid-way leaves no object and no temp file", async () => {
    const controller = new AbortController();
    const reason = new Error("the task was cancelled");
    let yielded = 0;
    async function* source(): AsyncGenerator<Uint8Array> {
      for (;;) {
        yield Buffer.alloc(64 * 1024, 1);
        if (++yielded === 8) controller.abort(reason);
      }
    }
    await expect(store.write("a/b/partial", source(), { signal: controller.signal })).rejects.toMatchObject({
      name: "AbortError",
      cause: reason,
    });
    expect(yielded).toBeGreaterThanOrEqual(8);
    expect(await store.stat("a/b/partial")).toBeUndefined();
    expect(await tree(root)).toEqual([]); // no temp file, and the directories it made are gone
    expect((await store.list()).objects).toEqual([]);
  });

  it("an abort while the source is stalled stops the write promptly", async () => {
    const controller = new AbortController();
    async function* source(): AsyncGenerator<Uint8Array> {
      yield Buffer.from("some bytes");
      setTimeout(() => controller.abort(), 20);
      await new Promise((resolve) => setTimeout(resolve, 60_000).unref()); // a source that hangs
      yield Buffer.from("never");
    }
    const started = Date.now();
    await expect(store.write("stalled", source(), { signal: controller.signal })).rejects.toMatchObject({
      name: "AbortError",
    });
    expect(Date.now() - started).toBeLessThan(5_000);
    expect(await store.stat("stalled")).toBeUndefined();
    expect(await tree(root)).toEqual([]);
  });

  it("an already aborted signal writes nothing", async () => {
    await expect(store.write("x/y", chunks("data"), { signal: AbortSignal.abort() })).rejects.toMatchObject({
      name: "AbortError",
    });
    expect(await tree(root)).toEqual([]);
  });

  it("a source that throws leaves nothing and its error is rethrown", async () => {
    const boom = new Error("source failed");
    async function* source(): AsyncGenerator<Uint8Array> {
      yield Buffer.alloc(100_000, 2);
      throw boom;
    }
    await expect(store.write("f/broken", source())).rejects.toBe(boom);
    expect(await store.stat("f/broken")).toBeUndefined();
    expect(await tree(root)).toEqual([]);
  });

  it("a failed overwrite keeps the previous object intact", async () => {
    await store.write("keep", chunks("original"));
    async function* source(): AsyncGenerator<Uint8Array> {
      yield Buffer.from("replacement that never completes");
      throw new Error("nope");
    }
    await expect(store.write("keep", source())).rejects.toThrow("nope");
    expect((await readAll(await store.read("keep"))).toString()).toBe("original");
    expect(await tree(root)).toEqual(["keep"]);
  });
});

describe("delete", () => {
  it("is idempotent and removes emptied directories up to the root", async () => {
    await store.write("x/y/z/obj", chunks("1"));
    await store.write("x/other", chunks("2"));
    await store.delete("x/y/z/obj");
    expect(await store.stat("x/y/z/obj")).toBeUndefined();
    expect(await tree(root)).toEqual(["x", "x/other"]);

    await store.delete("x/y/z/obj");
    await store.delete("never/existed/at/all");
    await store.delete("x/other");
    expect(await tree(root)).toEqual([]);
    expect((await fs.stat(root)).isDirectory()).toBe(true); // the root stays

    await store.delete("x/other");
  });

  it("leaves directories (which are not objects) alone", async () => {
    await store.write("dir/obj", chunks("1"));
    await store.delete("dir");
    expect(await store.stat("dir/obj")).toMatchObject({ size: 1 });
  });
});

describe("list", () => {
  const keys = ["p/1", "p/2", "p/3", "p/4", "p/5", "p/6", "p/7", "p-x", "q/1", "top", "p/sub/deep"];

  beforeEach(async () => {
    for (const key of keys) await store.write(key, chunks(key));
  });

  it("lists everything sorted by key", async () => {
    const page = await store.list();
    expect(page.objects.map((o) => o.key)).toEqual([...keys].sort());
    expect(page.nextPageToken).toBeUndefined();
    expect(page.objects.find((o) => o.key === "p/sub/deep")).toMatchObject({ size: "p/sub/deep".length });
    expect(page.objects[0]!.modifiedTime).toBeInstanceOf(Date);
  });

  it("filters by prefix", async () => {
    const listed = async (prefix: string) => (await store.list({ prefix })).objects.map((o) => o.key);
    expect(await listed("p/")).toEqual(["p/1", "p/2", "p/3", "p/4", "p/5", "p/6", "p/7", "p/sub/deep"]);
    expect(await listed("p")).toEqual(["p-x", "p/1", "p/2", "p/3", "p/4", "p/5", "p/6", "p/7", "p/sub/deep"]);
    expect(await listed("p/s")).toEqual(["p/sub/deep"]);
    expect(await listed("q/1")).toEqual(["q/1"]);
    expect(await listed("t")).toEqual(["top"]);
    expect(await listed("zzz")).toEqual([]);
    expect(await listed("../")).toEqual([]);
  });

  it("paginates across three pages", async () => {
    const seen: string[] = [];
    const tokens: string[] = [];
    let pageToken: string | undefined;
    let pages = 0;
    do {
      const page = await store.list({ prefix: "p/", pageSize: 3, pageToken });
      pages++;
      seen.push(...page.objects.map((o) => o.key));
      if (page.nextPageToken) {
        tokens.push(page.nextPageToken);
        expect(Buffer.from(page.nextPageToken, "base64url").toString()).toBe(page.objects.at(-1)!.key);
      }
      pageToken = page.nextPageToken;
    } while (pageToken);
    expect(pages).toBe(3);
    expect(tokens).toHaveLength(2);
    expect(seen).toEqual(["p/1", "p/2", "p/3", "p/4", "p/5", "p/6", "p/7", "p/sub/deep"]);
  });

  it("hides temp files, symbolic links and names that are not keys", async () => {
    await fs.writeFile(path.join(root, "p", ".5.tmp-0123456789abcdef"), "partial");
    await fs.writeFile(path.join(root, "back\\slash"), "x");
    await fs.symlink(path.join(root, "top"), path.join(root, "link-to-top"));
    const page = await store.list();
    expect(page.objects.map((o) => o.key)).toEqual([...keys].sort());
  });

  it("refuses bad page tokens and sizes", async () => {
    await storeErrorOf(store.list({ pageToken: "not base64url!" }), "invalid");
    await storeErrorOf(store.list({ pageToken: Buffer.from([0xff, 0xfe]).toString("base64url") }), "invalid");
    await storeErrorOf(store.list({ pageSize: -1 }), "invalid");
    await storeErrorOf(store.list({ pageSize: 2.5 }), "invalid");
  });
});

describe("keys cannot escape the root", () => {
  const badKeys = [
    "../x",
    "a/../../x",
    "a\\..\\x",
    "a/./b",
    "./a",
    "a/..",
    "..",
    ".",
    "a\0b",
    "",
    "a//b",
    "a/",
    ".x.tmp-0123456789abcdef",
  ];

  async function refusedEverywhere(key: string) {
    await storeErrorOf(store.stat(key), "invalid");
    await storeErrorOf(store.read(key), "invalid");
    await storeErrorOf(store.write(key, chunks("pwned")), "invalid");
    await storeErrorOf(store.delete(key), "invalid");
  }

  it.each(badKeys.map((k) => [JSON.stringify(k), k]))("refuses %s", async (_label, key) => {
    await refusedEverywhere(key);
    expect(await tree(base)).toEqual(["data", "data/objects", "outside"]);
  });

  it("refuses absolute keys", async () => {
    // Read-only probes of a real system file (this test may run as root)...
    await storeErrorOf(store.stat("/etc/passwd"), "invalid");
    await storeErrorOf(store.read("/etc/passwd"), "invalid");
    // ...and every operation against an absolute path in the test's own area.
    const victim = path.join(outside, "victim");
    await fs.writeFile(victim, "safe");
    await refusedEverywhere(victim);
    expect(await fs.readFile(victim, "utf8")).toBe("safe");
    expect(await tree(outside)).toEqual(["victim"]);
    expect(await tree(root)).toEqual([]);
  });

  it("refuses a symlinked directory that leads outside the root", async () => {
    await fs.writeFile(path.join(outside, "secret"), "top secret");
    await fs.symlink(outside, path.join(root, "link"));
    await fs.mkdir(path.join(root, "in"));
    await fs.symlink(path.join("..", "..", "..", "outside"), path.join(root, "in", "rel")); // relative link

    for (const key of ["link/secret", "link/new", "link/sub/new", "in/rel/secret", "in/rel/deeper/new"]) {
      await refusedEverywhere(key);
    }
    expect(await tree(outside)).toEqual(["secret"]);
    expect(await fs.readFile(path.join(outside, "secret"), "utf8")).toBe("top secret");
    expect((await store.list()).objects).toEqual([]);
  });

  it("refuses a symlink to a sibling whose name merely starts like the root's", async () => {
    const sibling = path.join(dataDir, "objects-sibling"); // a naive startsWith(root) check would pass it
    await fs.mkdir(sibling);
    await fs.writeFile(path.join(sibling, "secret"), "top secret");
    await fs.symlink(sibling, path.join(root, "sib"));
    for (const key of ["sib/secret", "sib/new", "sib/sub/new"]) await refusedEverywhere(key);
    expect(await tree(sibling)).toEqual(["secret"]);
  });

  it("refuses a dangling symlink that leads outside the root", async () => {
    await fs.symlink(path.join(outside, "later"), path.join(root, "dangling"));
    await storeErrorOf(store.write("dangling/new", chunks("x")), "invalid");
    await storeErrorOf(store.stat("dangling/new"), "invalid");
    expect(await tree(outside)).toEqual([]);
  });

  it("never follows a file symlink out of the root", async () => {
    await fs.writeFile(path.join(outside, "secret"), "top secret");
    await fs.symlink(path.join(outside, "secret"), path.join(root, "leaf"));
    await storeErrorOf(store.stat("leaf"), "invalid");
    await storeErrorOf(store.read("leaf"), "invalid");
    // Writing and deleting replace or remove the link itself, never its target.
    await store.write("leaf", chunks("mine"));
    expect(await fs.readFile(path.join(outside, "secret"), "utf8")).toBe("top secret");
    expect((await fs.lstat(path.join(root, "leaf"))).isFile()).toBe(true);
    await fs.rm(path.join(root, "leaf"));
    await fs.symlink(path.join(outside, "secret"), path.join(root, "leaf"));
    await store.delete("leaf");
    expect(await fs.readFile(path.join(outside, "secret"), "utf8")).toBe("top secret");
  });

  it("follows symlinks that stay inside the root", async () => {
    await store.write("real/obj", chunks("inside"));
    await fs.symlink("real", path.join(root, "alias"));
    expect(await store.stat("alias/obj")).toMatchObject({ key: "alias/obj", size: 6 });
    expect((await readAll(await store.read("alias/obj"))).toString()).toBe("inside");
  });

  it("keeps writes inside a root that is itself reached through a symlink", async () => {
    const realRoot = path.join(base, "real-root");
    await fs.mkdir(realRoot);
    await fs.symlink(realRoot, path.join(dataDir, "linked-root"));
    const linked = await driver.open(config({ root: "linked-root" }));
    await linked.write("a/b", chunks("ok"));
    expect(await fs.readFile(path.join(realRoot, "a/b"), "utf8")).toBe("ok");
    await storeErrorOf(linked.write("../escape", chunks("x")), "invalid");
  });
});

describe("linkFile", () => {
  it("gives an object a second name outside the store that keeps its bytes when the object is replaced", async () => {
    await store.write("uploads/u1", chunks("staged bytes"));
    const work = path.join(dataDir, "work");
    await fs.mkdir(work);
    const file = path.join(work, "upload");
    expect(await store.linkFile!("uploads/u1", file)).toMatchObject({ key: "uploads/u1", size: 12 });
    expect(await fs.readFile(file, "utf8")).toBe("staged bytes");
    const [linked, object] = await Promise.all([fs.stat(file), fs.stat(path.join(root, "uploads/u1"))]);
    expect(linked.ino, "a hard link, no copy").toBe(object.ino);
    // Objects are replaced by rename and removed by unlink: the host's name keeps what it linked.
    await store.write("uploads/u1", chunks("replaced"));
    expect(await fs.readFile(file, "utf8")).toBe("staged bytes");
    await store.delete("uploads/u1");
    expect(await fs.readFile(file, "utf8")).toBe("staged bytes");
  });

  it("declines a target on another file system, creating nothing", async () => {
    await store.write("obj", chunks("bytes"));
    const elsewhere = await fs.mkdtemp("/dev/shm/itx-link-");
    try {
      expect((await fs.stat(elsewhere)).dev, "the test needs /dev/shm on another file system").not.toBe((await fs.stat(root)).dev);
      expect(await store.linkFile!("obj", path.join(elsewhere, "copy"))).toBeUndefined();
      expect(await fs.readdir(elsewhere)).toEqual([]);
    } finally {
      await fs.rm(elsewhere, { recursive: true, force: true });
    }
  });

  it("refuses missing objects, bad keys and links out of the root, creating nothing", async () => {
    const target = path.join(base, "linked");
    await storeErrorOf(store.linkFile!("missing", target), "not-found");
    await storeErrorOf(store.linkFile!("../escape", target), "invalid");
    await fs.writeFile(path.join(base, "secret"), "outside");
    await fs.symlink(path.join(base, "secret"), path.join(root, "sneaky"));
    await storeErrorOf(store.linkFile!("sneaky", target), "invalid");
    await expect(fs.lstat(target)).rejects.toMatchObject({ code: "ENOENT" });
  });
});

describe("adoptFile", () => {
  it("moves a local file into the store under its key, without leaving the original or a temp file", async () => {
    const work = path.join(dataDir, "work");
    await fs.mkdir(work);
    const file = path.join(work, "runtime");
    await fs.writeFile(file, "converted image");
    const info = await store.adoptFile!("images/a/b", file);
    expect(info).toMatchObject({ key: "images/a/b", size: 15 });
    expect((await readAll(await store.read("images/a/b"))).toString()).toBe("converted image");
    await expect(fs.stat(file)).rejects.toMatchObject({ code: "ENOENT" });
    expect(await tree(root)).toEqual(["images", "images/a", "images/a/b"]);
  });

  it("replaces an existing object whole", async () => {
    await store.write("obj", chunks("old bytes"));
    const file = path.join(base, "new");
    await fs.writeFile(file, "new");
    await store.adoptFile!("obj", file);
    expect((await readAll(await store.read("obj"))).toString()).toBe("new");
  });

  it("refuses bad keys, links and directories, and leaves the file where it was", async () => {
    const file = path.join(base, "keep");
    await fs.writeFile(file, "mine");
    await storeErrorOf(store.adoptFile!("../escape", file), "invalid");
    await fs.symlink(file, path.join(base, "link"));
    await storeErrorOf(store.adoptFile!("obj", path.join(base, "link")), "invalid");
    await fs.mkdir(path.join(root, "dir"), { recursive: true });
    await store.write("dir/inner", chunks("x"));
    await storeErrorOf(store.adoptFile!("dir", file), "invalid");
    await storeErrorOf(store.adoptFile!("missing", path.join(base, "no-such-file")), "not-found");
    expect(await fs.readFile(file, "utf8")).toBe("mine");
    expect(await store.stat("obj")).toBeUndefined();
  });

  it("adopts nothing once its signal has aborted", async () => {
    const file = path.join(base, "aborted");
    await fs.writeFile(file, "bytes");
    const controller = new AbortController();
    controller.abort();
    await expect(store.adoptFile!("obj", file, { signal: controller.signal })).rejects.toMatchObject({ name: "AbortError" });
    expect(await store.stat("obj")).toBeUndefined();
    expect(await fs.readFile(file, "utf8")).toBe("bytes");
  });
});
