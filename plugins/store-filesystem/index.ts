/**
 * The built-in "file" store: objects are regular files under one root directory.
 *
 * Keys are relative, '/'-separated paths. They can never leave the root: keys are
 * checked lexically (no absolute paths, no '.', '..' or empty segments, no backslashes,
 * no NUL bytes), and every path actually used is first resolved with realpath and
 * checked to lie inside the (real) root, so a symbolic link cannot lead outside it either.
 * Directories are created one level at a time, each checked before going deeper, so
 * mkdir never runs through a link that leaves the root.
 *
 * Writes are atomic: bytes go to a hidden temp file in the target's directory
 * (`.NAME.tmp-<16 hex>`, runs of zeros left as holes), which is fsynced and renamed over
 * the target; any failure or abort removes the temp file. Temp names are reserved: keys may
 * not use them and list() never shows them. adoptFile() renames a finished local file into
 * the store instead, when it lies on the same file system, and linkFile() gives an object a
 * second name outside the store there (a hard link; objects are never changed in place, so
 * the link keeps the bytes it was made with); openFile() hands the host an object's open
 * file, for reads into buffers it reuses.
 */
import { randomBytes } from "node:crypto";
import { constants, createReadStream, type Stats } from "node:fs";
import * as fs from "node:fs/promises";
import * as path from "node:path";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import {
  defineStorePlugin,
  isStoreError,
  SparseFileWriter,
  StoreError,
  type ByteRange,
  type CallOptions,
  type ListOptions,
  type ObjectInfo,
  type ObjectPage,
  type OpenFile,
  type ReadOptions,
  type StoreConfig,
  type StoreErrorKind,
  type StoreInstance,
} from "../../src/plugins/plugin-api.js";

const DEFAULT_PAGE_SIZE = 1000;
/** Bytes per chunk read: 1 MiB reads cost a fraction of 64 KiB ones per byte, in every layer above. */
const READ_CHUNK_BYTES = 1024 * 1024;
/** NAME_MAX on practically every local file system, in bytes. */
const MAX_SEGMENT_BYTES = 255;
/** Temp file names: `.` + (a prefix of) the target's name + `.tmp-` + 16 hex digits. */
const TEMP_NAME = /^\..*\.tmp-[0-9a-f]{16}$/s;
/** Open flag that makes open() fail rather than follow a symbolic link (0 where unsupported). */
const O_NOFOLLOW = constants.O_NOFOLLOW ?? 0;
/** Retries when a concurrent delete() prunes a directory a write just created. */
const MKDIR_ATTEMPTS = 4;

const OPTION_NAMES = ["root"] as const;

export default defineStorePlugin({
  schemes: ["file"],
  capabilities: {
    readRanges: true,
    write: true,
    delete: true,
    list: true,
    // The service signs its own URLs for this store.
    presignGet: false,
    presignPut: false,
    maxObjectSize: 0,
    openFile: true,
  },
  open: (config: StoreConfig) => FileStore.open(config),
});

class FileStore implements StoreInstance {
  /** The real path of the root, without symbolic links. */
  private readonly root: string;
  /** `root` plus a trailing separator: a path is inside the root iff it starts with this. */
  private readonly rootPrefix: string;

  private constructor(root: string) {
    this.root = root;
    this.rootPrefix = root.endsWith(path.sep) ? root : root + path.sep;
  }

  static async open(config: StoreConfig): Promise<FileStore> {
    const options: Record<string, unknown> = config.options ?? {};
    for (const name of Object.keys(options)) {
      if (!(OPTION_NAMES as readonly string[]).includes(name)) {
        throw new StoreError(
          "invalid",
          `unknown option ${JSON.stringify(name)}: the file store accepts only "root"`,
        );
      }
    }
    const root = options.root;
    if (root === undefined || root === null) {
      throw new StoreError("invalid", `option "root" is required: the directory that holds the objects`);
    }
    if (typeof root !== "string") {
      throw new StoreError("invalid", `option "root" must be a string (a directory path), not ${typeof root}`);
    }
    if (root.trim() === "") throw new StoreError("invalid", `option "root" must not be empty`);
    if (root.includes("\0")) throw new StoreError("invalid", `option "root" must not contain a NUL byte`);

    const resolved = path.resolve(config.dataDir, root);
    try {
      await fs.mkdir(resolved, { recursive: true });
    } catch (err) {
      if (errorCode(err) === "EEXIST" || errorCode(err) === "ENOTDIR") {
        throw new StoreError("invalid", `option "root" (${resolved}) is not a directory`, { cause: err });
      }
      throw storeError(err, `option "root": cannot create the directory ${resolved}`);
    }
    let real: string;
    let stats: Stats;
    try {
      real = await fs.realpath(resolved);
      stats = await fs.stat(real);
    } catch (err) {
      throw storeError(err, `option "root": cannot open the directory ${resolved}`);
    }
    if (!stats.isDirectory()) {
      throw new StoreError("invalid", `option "root" (${resolved}) is not a directory`);
    }
    return new FileStore(real);
  }

  async stat(key: string, options?: CallOptions): Promise<ObjectInfo | undefined> {
    const segments = checkKey(key);
    checkAborted(options?.signal);
    const file = await this.locateExisting(key, segments);
    if (file === undefined) return undefined;
    let stats: Stats;
    try {
      // `file` holds no symbolic links, so lstat describes the object itself.
      stats = await fs.lstat(file);
    } catch (err) {
      if (isMissing(err)) return undefined;
      throw storeError(err, `cannot stat ${JSON.stringify(key)}`);
    }
    return stats.isFile() ? info(key, stats) : undefined;
  }

  async read(key: string, options?: ReadOptions): Promise<Readable> {
    const range = options?.range;
    if (range !== undefined) checkRangeShape(range);
    const signal = options?.signal;
    const { file, handle, stats } = await this.open(key, signal);
    let handOver = false;
    try {
      const size = stats.size;
      const offset = range?.offset ?? 0;
      const length = range?.length ?? size - offset;
      if (offset > size || offset + length > size) {
        throw new StoreError(
          "invalid",
          `range ${describeRange(range!)} lies beyond the end of ${JSON.stringify(key)} (${size} bytes)`,
        );
      }
      checkAborted(signal);
      if (length === 0) return Readable.from([]);
      handOver = true; // the stream owns the handle now and closes it when done or destroyed
      return createReadStream(file, { fd: handle, start: offset, end: offset + length - 1, signal, highWaterMark: READ_CHUNK_BYTES });
    } finally {
      if (!handOver) await handle.close().catch(() => {});
    }
  }

  async openFile(key: string, options?: CallOptions): Promise<OpenFile> {
    const { handle, stats } = await this.open(key, options?.signal);
    return {
      info: info(key, stats),
      read: async (buffer, position) => {
        try {
          return (await handle.read(buffer, 0, buffer.length, position)).bytesRead;
        } catch (err) {
          throw storeError(err, `cannot read ${JSON.stringify(key)}`);
        }
      },
      close: () => handle.close(),
    };
  }

  /**
   * A hard link to the object at `target`, where that is on the root's file system and links
   * are allowed (undefined otherwise). The link must turn out to be the file that was opened:
   * anything else (an object swapped for a symbolic link meanwhile) is removed again, and the
   * host reads the object instead.
   */
  async linkFile(key: string, target: string, options?: CallOptions): Promise<ObjectInfo | undefined> {
    const { file, handle, stats } = await this.open(key, options?.signal);
    try {
      if (stats.dev !== (await fs.stat(path.dirname(target))).dev) return undefined;
      await fs.link(file, target);
    } catch (err) {
      // EXDEV: another mount of the same file system; EPERM: protected_hardlinks.
      if (errorCode(err) === "EXDEV" || errorCode(err) === "EPERM") return undefined;
      if (isMissing(err)) throw new StoreError("not-found", `object ${JSON.stringify(key)} not found`);
      throw storeError(err, `cannot link ${JSON.stringify(key)}`);
    } finally {
      await handle.close().catch(() => {});
    }
    const linked = await fs.lstat(target).catch(() => undefined);
    if (linked?.isFile() && linked.ino === stats.ino && linked.dev === stats.dev) return info(key, stats);
    await fs.rm(target, { force: true }).catch(() => {});
    return undefined;
  }

  /** The object's file, opened for reading, with its stats; StoreError "not-found" if there is none. */
  private async open(key: string, signal: AbortSignal | undefined): Promise<{ file: string; handle: fs.FileHandle; stats: Stats }> {
    const segments = checkKey(key);
    checkAborted(signal);
    const notFound = () => new StoreError("not-found", `object ${JSON.stringify(key)} not found`);
    const file = await this.locateExisting(key, segments);
    if (file === undefined) throw notFound();
    let handle: fs.FileHandle;
    try {
      // O_NOFOLLOW: `file` was resolved without links; refuse one swapped in since.
      handle = await fs.open(file, constants.O_RDONLY | O_NOFOLLOW);
    } catch (err) {
      if (isMissing(err)) throw notFound();
      if (errorCode(err) === "ELOOP") throw escapes(key);
      throw storeError(err, `cannot read ${JSON.stringify(key)}`);
    }
    try {
      const stats = await handle.stat();
      if (!stats.isFile()) throw notFound();
      return { file, handle, stats };
    } catch (err) {
      await handle.close().catch(() => {});
      throw err;
    }
  }

  async write(key: string, source: AsyncIterable<Uint8Array>, options?: CallOptions): Promise<ObjectInfo> {
    const segments = checkKey(key);
    const signal = options?.signal;
    checkAborted(signal);
    const leaf = segments[segments.length - 1]!;
    const what = `cannot write ${JSON.stringify(key)}`;

    // Create the parent directories and the temp file; retry when a concurrent delete()
    // removes a directory we just made (it prunes directories it leaves empty).
    let dir: string;
    let temp: string;
    let handle: fs.FileHandle;
    for (let attempt = 1; ; attempt++) {
      try {
        dir = await this.makeParents(key, segments);
        const target = path.join(dir, leaf);
        const existing = await fs.lstat(target).catch((err: unknown) => {
          if (isMissing(err)) return undefined;
          throw err;
        });
        if (existing?.isDirectory()) {
          throw new StoreError("invalid", `${what}: a directory of objects already has that name`);
        }
        temp = path.join(dir, tempName(leaf));
        // "wx": O_CREAT|O_EXCL, which never follows a symbolic link.
        handle = await fs.open(temp, "wx");
        break;
      } catch (err) {
        if (errorCode(err) === "ENOENT" && attempt < MKDIR_ATTEMPTS) continue;
        throw storeError(err, what);
      }
    }

    let streamOwnsHandle = false;
    let writeError: unknown;
    try {
      // The writer owns the handle: when it ends it fsyncs and closes it, and pipeline
      // settles only after that; when it is destroyed it closes it as well. Zeros become
      // holes: a raw image that is half zeros costs half the disk and page cache.
      const out = new SparseFileWriter(handle, { sync: true });
      streamOwnsHandle = true;
      out.once("error", (err) => (writeError = err));
      try {
        // pipeline alone settles only once a stalled source yields again; an abort must not wait.
        await untilAborted(pipeline(source, out, { signal }), signal);
      } catch (err) {
        // Errors of our own writes are store errors; the source's are the caller's, as they are.
        throw err === writeError ? storeError(err, what) : err;
      }
      checkAborted(signal);
      let stats: Stats;
      try {
        stats = await fs.lstat(temp);
        await fs.rename(temp, path.join(dir, leaf));
      } catch (err) {
        throw storeError(err, what);
      }
      await syncDirectory(dir);
      return info(key, stats);
    } catch (err) {
      if (!streamOwnsHandle) await handle.close().catch(() => {});
      await fs.rm(temp, { force: true }).catch(() => {});
      // Directories this write created and left empty go too (a concurrent writer that
      // loses its directory to this retries, see above).
      await this.pruneEmptyDirectories(dir);
      throw err;
    }
  }

  /**
   * Renames a local file into the store: no byte is copied. Only where the file lies on the
   * root's file system (undefined otherwise: the host writes it instead). The file's bytes
   * are synced before the rename and the directory after it, so the object is as durable as
   * a written one, and it appears whole or not at all.
   */
  async adoptFile(key: string, file: string, options?: CallOptions): Promise<ObjectInfo | undefined> {
    const segments = checkKey(key);
    const signal = options?.signal;
    checkAborted(signal);
    const leaf = segments[segments.length - 1]!;
    const what = `cannot write ${JSON.stringify(key)}`;
    let handle: fs.FileHandle;
    try {
      // O_NOFOLLOW: the host hands over its own regular file, never a link to another.
      handle = await fs.open(file, constants.O_RDONLY | O_NOFOLLOW);
    } catch (err) {
      throw storeError(err, what);
    }
    let stats: Stats;
    try {
      stats = await handle.stat();
      if (!stats.isFile()) throw new StoreError("invalid", `${what}: only a regular file can be adopted`);
      if (stats.dev !== (await fs.stat(this.root)).dev) return undefined;
      await handle.sync();
    } catch (err) {
      throw storeError(err, what);
    } finally {
      await handle.close().catch(() => {});
    }
    checkAborted(signal);
    for (let attempt = 1; ; attempt++) {
      let dir: string | undefined;
      try {
        dir = await this.makeParents(key, segments);
        const target = path.join(dir, leaf);
        const existing = await fs.lstat(target).catch((err: unknown) => {
          if (isMissing(err)) return undefined;
          throw err;
        });
        if (existing?.isDirectory()) {
          throw new StoreError("invalid", `${what}: a directory of objects already has that name`);
        }
        checkAborted(signal);
        await fs.rename(file, target);
        await syncDirectory(dir);
        return info(key, stats);
      } catch (err) {
        // A concurrent delete() pruned the directory just made: make it again.
        if (errorCode(err) === "ENOENT" && attempt < MKDIR_ATTEMPTS && (await exists(file))) continue;
        if (dir !== undefined) await this.pruneEmptyDirectories(dir);
        if (errorCode(err) === "EXDEV") return undefined;
        throw storeError(err, what);
      }
    }
  }

  async delete(key: string, options?: CallOptions): Promise<void> {
    const segments = checkKey(key);
    checkAborted(options?.signal);
    const dir = await this.realParent(key, segments);
    if (dir === undefined) return;
    const target = path.join(dir, segments[segments.length - 1]!);
    try {
      const stats = await fs.lstat(target);
      if (stats.isDirectory()) return; // directories are not objects
      // unlink removes a symbolic link itself, never what it points to.
      await fs.unlink(target);
    } catch (err) {
      if (isMissing(err) || errorCode(err) === "EISDIR") return;
      throw storeError(err, `cannot delete ${JSON.stringify(key)}`);
    }
    await this.pruneEmptyDirectories(dir);
  }

  async list(options?: ListOptions): Promise<ObjectPage> {
    const prefix = options?.prefix ?? "";
    if (typeof prefix !== "string") throw new StoreError("invalid", `list prefix must be a string`);
    const pageSize = options?.pageSize || DEFAULT_PAGE_SIZE;
    if (!Number.isSafeInteger(pageSize) || pageSize < 1) {
      throw new StoreError("invalid", `list pageSize must be a positive integer, not ${String(options?.pageSize)}`);
    }
    const after = options?.pageToken ? decodePageToken(options.pageToken) : undefined;
    const signal = options?.signal;
    checkAborted(signal);

    const keys: Array<{ key: string; file: string }> = [];
    await this.walk(this.root, "", prefix, keys, signal);
    const candidates = keys
      .filter((k) => k.key.startsWith(prefix) && (after === undefined || compareKeys(k.key, after) > 0))
      .sort((a, b) => compareKeys(a.key, b.key));

    const objects: ObjectInfo[] = [];
    let index = 0;
    for (; index < candidates.length && objects.length < pageSize; index++) {
      const { key, file } = candidates[index]!;
      try {
        const stats = await fs.lstat(file);
        if (stats.isFile()) objects.push(info(key, stats));
      } catch (err) {
        if (!isMissing(err)) throw storeError(err, `cannot list ${JSON.stringify(key)}`);
      }
    }
    const page: ObjectPage = { objects };
    if (index < candidates.length && objects.length > 0) {
      page.nextPageToken = Buffer.from(objects[objects.length - 1]!.key, "utf8").toString("base64url");
    }
    return page;
  }

  async close(): Promise<void> {}

  /** Temp files of writers that died mid-way (list() never shows them), older than `olderThan`. */
  async removePartialWrites(olderThan: Date, options?: CallOptions): Promise<number> {
    let removed = 0;
    const visit = async (dir: string): Promise<void> => {
      checkAborted(options?.signal);
      const entries = await fs.readdir(dir, { withFileTypes: true }).catch(() => []);
      for (const entry of entries) {
        const file = path.join(dir, entry.name);
        if (entry.isDirectory()) await visit(file);
        else if (entry.isFile() && TEMP_NAME.test(entry.name)) {
          const stats = await fs.lstat(file).catch(() => undefined);
          if (stats && stats.mtime < olderThan) {
            await fs.rm(file, { force: true });
            removed++;
          }
        }
      }
    };
    await visit(this.root);
    return removed;
  }

  /**
   * Collects the regular files under `dir` (whose key prefix is `keyPrefix`), skipping
   * temp files, names that are not valid key segments, symbolic links and directories
   * that cannot hold keys starting with `prefix`.
   */
  private async walk(
    dir: string,
    keyPrefix: string,
    prefix: string,
    out: Array<{ key: string; file: string }>,
    signal: AbortSignal | undefined,
  ): Promise<void> {
    checkAborted(signal);
    let entries;
    try {
      entries = await fs.readdir(dir, { withFileTypes: true });
    } catch (err) {
      if (isMissing(err)) return; // removed while we were listing
      throw storeError(err, `cannot list ${JSON.stringify(keyPrefix || "/")}`);
    }
    for (const entry of entries) {
      const name = entry.name;
      if (!isValidSegment(name)) continue;
      const key = keyPrefix + name;
      if (entry.isDirectory()) {
        const sub = key + "/";
        if (sub.startsWith(prefix) || prefix.startsWith(sub)) {
          await this.walk(path.join(dir, name), sub, prefix, out, signal);
        }
      } else if (entry.isFile() && key.startsWith(prefix)) {
        out.push({ key, file: path.join(dir, name) });
      }
    }
  }

  /**
   * The real path of an existing object's file (links resolved and checked to stay
   * inside the root), or undefined when there is nothing at `key`.
   */
  private async locateExisting(key: string, segments: string[]): Promise<string | undefined> {
    const dir = await this.realParent(key, segments);
    if (dir === undefined) return undefined;
    const file = path.join(dir, segments[segments.length - 1]!);
    let stats: Stats;
    try {
      stats = await fs.lstat(file);
    } catch (err) {
      if (isMissing(err)) return undefined;
      throw storeError(err, `cannot look up ${JSON.stringify(key)}`);
    }
    if (!stats.isSymbolicLink()) return file;
    let real: string;
    try {
      real = await fs.realpath(file);
    } catch (err) {
      if (isMissing(err)) return undefined; // a dangling link: no object
      if (errorCode(err) === "ELOOP") throw escapes(key);
      throw storeError(err, `cannot look up ${JSON.stringify(key)}`);
    }
    if (!this.isInside(real, false)) throw escapes(key);
    return real;
  }

  /**
   * The real path of the key's parent directory, checked to be inside the root (or the
   * root itself); undefined when it does not exist. Even then the deepest ancestor that
   * does exist is checked, so a key through a link leading outside is always refused.
   */
  private async realParent(key: string, segments: string[]): Promise<string | undefined> {
    for (let depth = segments.length - 1; depth >= 0; depth--) {
      const lexical = path.join(this.root, ...segments.slice(0, depth));
      let real: string;
      try {
        real = await fs.realpath(lexical);
      } catch (err) {
        if (errorCode(err) === "ELOOP") throw escapes(key);
        if (!isMissing(err)) throw storeError(err, `cannot look up ${JSON.stringify(key)}`);
        if (await isDanglingLink(lexical)) throw escapes(key);
        continue;
      }
      if (!this.isInside(real, true)) throw escapes(key);
      if (depth < segments.length - 1) return undefined; // checked an ancestor: parent is missing
      return real;
    }
    return undefined; // unreachable: depth 0 is the root itself
  }

  /**
   * Creates the key's parent directories one level at a time, checking each level's real
   * path before going deeper, and returns the real path of the parent.
   */
  private async makeParents(key: string, segments: string[]): Promise<string> {
    let current = this.root;
    for (let i = 0; i < segments.length - 1; i++) {
      const next = path.join(current, segments[i]!);
      try {
        // Not recursive: `current` is a real path, so this creates exactly one directory
        // inside it, or finds something already there (possibly a link, resolved below).
        await fs.mkdir(next);
      } catch (err) {
        if (errorCode(err) !== "EEXIST") throw err;
      }
      let real: string;
      try {
        real = await fs.realpath(next);
      } catch (err) {
        if (errorCode(err) === "ELOOP") throw escapes(key);
        if (isMissing(err) && (await isDanglingLink(next))) throw escapes(key);
        throw err;
      }
      if (!this.isInside(real, true)) throw escapes(key);
      const stats = await fs.stat(real);
      if (!stats.isDirectory()) {
        throw new StoreError(
          "invalid",
          `cannot write ${JSON.stringify(key)}: ${JSON.stringify(segments.slice(0, i + 1).join("/"))} is an object, not a directory`,
        );
      }
      current = real;
    }
    return current;
  }

  /** Removes `dir` and its ancestors while they are empty, stopping below the root. */
  private async pruneEmptyDirectories(dir: string): Promise<void> {
    let current = dir;
    while (current !== this.root && current.startsWith(this.rootPrefix)) {
      try {
        await fs.rmdir(current);
      } catch (err) {
        if (errorCode(err) !== "ENOENT") return; // not empty (or not ours to remove): stop
      }
      current = path.dirname(current);
    }
  }

  /** Whether a real (link-free) path lies inside the root; the root itself counts only if allowed. */
  private isInside(real: string, allowRoot: boolean): boolean {
    if (real === this.root) return allowRoot;
    return real.startsWith(this.rootPrefix);
  }
}

/** Checks a key and returns its segments; throws StoreError "invalid" for anything unsafe. */
function checkKey(key: unknown): string[] {
  if (typeof key !== "string") throw new StoreError("invalid", `object key must be a string, not ${typeof key}`);
  if (key === "") throw new StoreError("invalid", "object key must not be empty");
  const quoted = JSON.stringify(key);
  if (key.includes("\0")) throw new StoreError("invalid", `object key ${quoted} contains a NUL byte`);
  if (key.includes("\\")) throw new StoreError("invalid", `object key ${quoted} contains a backslash`);
  if (key.startsWith("/")) {
    throw new StoreError("invalid", `object key ${quoted} is absolute; keys are relative to the store`);
  }
  const segments = key.split("/");
  for (const segment of segments) {
    if (segment === "") {
      throw new StoreError("invalid", `object key ${quoted} has an empty segment (a doubled or trailing '/')`);
    }
    if (segment === "." || segment === "..") {
      throw new StoreError("invalid", `object key ${quoted} contains a '${segment}' segment`);
    }
    if (Buffer.byteLength(segment, "utf8") > MAX_SEGMENT_BYTES) {
      throw new StoreError("invalid", `object key ${quoted} has a segment longer than ${MAX_SEGMENT_BYTES} bytes`);
    }
    if (TEMP_NAME.test(segment)) {
      throw new StoreError("invalid", `object key ${quoted} uses a name reserved for temporary files`);
    }
  }
  // Belt and braces: the resolved path must lie strictly inside any root.
  const probe = path.posix.join("/root", ...segments);
  if (!probe.startsWith("/root/")) throw new StoreError("invalid", `object key ${quoted} leaves the store root`);
  return segments;
}

/** Whether a directory entry name can be a key segment (used to filter list results). */
function isValidSegment(name: string): boolean {
  return (
    name !== "" &&
    name !== "." &&
    name !== ".." &&
    !name.includes("\\") &&
    !name.includes("\0") &&
    !TEMP_NAME.test(name)
  );
}

function checkRangeShape(range: ByteRange): void {
  const { offset, length } = range;
  if (!Number.isSafeInteger(offset) || offset < 0) {
    throw new StoreError("invalid", `range offset must be a non-negative integer, not ${String(offset)}`);
  }
  if (length !== undefined && (!Number.isSafeInteger(length) || length < 0)) {
    throw new StoreError("invalid", `range length must be a non-negative integer, not ${String(length)}`);
  }
}

function describeRange(range: ByteRange): string {
  return range.length === undefined
    ? `from offset ${range.offset}`
    : `of ${range.length} bytes at offset ${range.offset}`;
}

function decodePageToken(token: string): string {
  const bytes = Buffer.from(token, "base64url");
  let key: string | undefined;
  if (bytes.length > 0 && bytes.toString("base64url") === token) {
    try {
      key = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
    } catch {
      key = undefined;
    }
  }
  if (key === undefined) throw new StoreError("invalid", `list pageToken is not one this store returned`);
  return key;
}

/** Orders keys by UTF-16 code units, the same order used to compare with page tokens. */
function compareKeys(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function tempName(leaf: string): string {
  // Keep the name within NAME_MAX: ".", up to 200 bytes of the leaf, ".tmp-", 16 hex digits.
  let base = leaf;
  if (Buffer.byteLength(base, "utf8") > 200) {
    const codePoints = Array.from(base);
    while (Buffer.byteLength(codePoints.join(""), "utf8") > 200) codePoints.pop();
    base = codePoints.join("");
  }
  return `.${base}.tmp-${randomBytes(8).toString("hex")}`;
}

function info(key: string, stats: Stats): ObjectInfo {
  return { key, size: stats.size, modifiedTime: stats.mtime };
}

function escapes(key: string): StoreError {
  return new StoreError(
    "invalid",
    `object key ${JSON.stringify(key)} leads outside the store root through a symbolic link`,
  );
}

async function exists(p: string): Promise<boolean> {
  return fs.lstat(p).then(
    () => true,
    () => false,
  );
}

async function isDanglingLink(p: string): Promise<boolean> {
  try {
    return (await fs.lstat(p)).isSymbolicLink();
  } catch {
    return false;
  }
}

/** Makes a rename durable; best effort, since not every file system can fsync a directory. */
async function syncDirectory(dir: string): Promise<void> {
  let handle: fs.FileHandle | undefined;
  try {
    handle = await fs.open(dir, constants.O_RDONLY);
    await handle.sync();
  } catch {
    // ignore
  } finally {
    await handle?.close().catch(() => {});
  }
}

/**
 * The error for an aborted call, shaped like the AbortError that Node's streams and fs
 * calls reject with (the signal's reason is its cause), so every abort looks the same.
 */
function abortError(signal: AbortSignal): Error {
  const err = new Error("The operation was aborted", { cause: signal.reason });
  err.name = "AbortError";
  return Object.assign(err, { code: "ABORT_ERR" });
}

function checkAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw abortError(signal);
}

/** Settles like `promise`, or rejects with an AbortError as soon as `signal` aborts. */
function untilAborted<T>(promise: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (signal === undefined) return promise;
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(abortError(signal));
    if (signal.aborted) onAbort();
    else signal.addEventListener("abort", onAbort, { once: true });
    promise.then(resolve, reject).finally(() => signal.removeEventListener("abort", onAbort));
  });
}

function errorCode(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === "string" ? code : undefined;
}

function isMissing(err: unknown): boolean {
  const code = errorCode(err);
  return code === "ENOENT" || code === "ENOTDIR";
}

const KIND_BY_CODE: Record<string, StoreErrorKind> = {
  ENOENT: "not-found",
  EACCES: "permission",
  EPERM: "permission",
  EROFS: "permission",
  EEXIST: "already-exists",
  ENOSPC: "unavailable",
  EDQUOT: "unavailable",
  EIO: "unavailable",
  EMFILE: "unavailable",
  ENFILE: "unavailable",
  EBUSY: "unavailable",
  EAGAIN: "unavailable",
  ENAMETOOLONG: "invalid",
  ENOTDIR: "invalid",
  EISDIR: "invalid",
  ELOOP: "invalid",
};

/**
 * Wraps a file-system error in a StoreError whose message names the operation and the
 * error code but no server path (messages may reach clients; the cause keeps the details).
 * StoreErrors and abort errors pass through unchanged.
 */
function storeError(err: unknown, what: string): unknown {
  if (isStoreError(err) || (err instanceof Error && err.name === "AbortError")) return err;
  const code = errorCode(err);
  const kind: StoreErrorKind = (code !== undefined && KIND_BY_CODE[code]) || "unavailable";
  return new StoreError(kind, `${what}: ${code ?? (err instanceof Error ? err.message : String(err))}`, {
    cause: err,
  });
}
