/**
 * The plugin API: everything a store or converter plugin may rely on. Third parties
 * import it as "imagetransfer/plugin-api"; nothing else in the host is public.
 *
 * A plugin is a folder with a package.json whose "imageTransfer" key declares
 * `{ "kind": "store" | "converter", "apiVersion": "1.0", "entry": "./index.js" }`; the entry
 * module's default export is a definition made with {@link defineStorePlugin} or
 * {@link defineConverterPlugin}.
 */
import type { Readable } from "node:stream";

/**
 * The version of this contract. The host loads plugins of the same major version and
 * an equal or lower minor version. 1.1 added ConversionJob.maxOutputBytes and
 * CallOptions.traceContext; 1.2 added StoreInstance.adoptFile; 1.3 added StoreInstance.openFile;
 * 1.4 added ConverterDriver.findHoles and StoreInstance.linkFile; 1.5 added SparseFileWriter.
 */
export const PLUGIN_API_VERSION = "1.5";

/** What a store can do; the host never calls what a store does not advertise. */
export interface StoreCapabilities {
  /** read() honours `range`, so broken reads resume where they stopped. */
  readRanges: boolean;
  /** write() works; a store without it only serves as a source. */
  write: boolean;
  delete: boolean;
  list: boolean;
  /** presign() makes GET URLs the store itself serves; otherwise the host signs its own. */
  presignGet: boolean;
  /** presign() makes PUT URLs the store itself serves; otherwise the host signs its own. */
  presignPut: boolean;
  /** Largest object the store accepts, in bytes; 0 means no limit. */
  maxObjectSize: number;
  /**
   * The store is addressed by whole URIs: a seed URI in one of its schemes is itself the
   * key (a web download: https://host/path/image.qcow2), not SCHEME://STORE/KEY. Such a
   * store is only read from. Optional; absent means false.
   */
  uriKeys?: boolean;
  /** Instances have openFile(): objects are local files the host may read into its own buffers. Optional; absent means false. @since 1.3 */
  openFile?: boolean;
}

/** One stored object. Keys are relative to the store instance, without a leading slash. */
export interface ObjectInfo {
  key: string;
  size: number;
  modifiedTime?: Date;
}

/**
 * A byte range: `length` omitted means to the end of the object, and a length of 0 reads
 * nothing. A range that ends beyond the object is refused with StoreError "invalid".
 */
export interface ByteRange {
  offset: number;
  length?: number;
}

/** Options every store call takes. */
export interface CallOptions {
  /**
   * Aborting it must stop the call promptly (the conformance kit allows 1.5 s), reject it,
   * and leave nothing half-written; a read stream errors once it is aborted.
   */
  signal?: AbortSignal;
  /**
   * W3C trace-context headers of the call (`traceparent`, maybe `tracestate`), set when the
   * host traces; a plugin that talks HTTP may send them to its backend. Never required.
   * @since 1.1
   */
  traceContext?: Record<string, string>;
}

/** Options of {@link StoreInstance.read}. */
export interface ReadOptions extends CallOptions {
  range?: ByteRange;
}

/** Options of {@link StoreInstance.list}. */
export interface ListOptions extends CallOptions {
  /** Only keys that start with it; any string, not only up to a '/'. */
  prefix?: string;
  /** The most objects one page holds; the store picks a default when it is absent. */
  pageSize?: number;
  /** A previous page's nextPageToken, opaque to the host. */
  pageToken?: string;
}

/** One page of a listing. */
export interface ObjectPage {
  objects: ObjectInfo[];
  /** Set when more objects follow. */
  nextPageToken?: string;
}

/** What a temporary URL allows, and for how long. */
export interface PresignOptions {
  method: "GET" | "PUT";
  expiresInSeconds: number;
}

/**
 * A temporary URL: anyone holding it may GET or PUT the one object until `expireTime`; a
 * tampered or expired URL must be refused with a 4xx status.
 */
export interface PresignedUrl {
  url: string;
  expireTime: Date;
}

/**
 * An object opened for reads into the caller's buffers (see {@link StoreInstance.openFile}).
 * It keeps reading the bytes it was opened on, even if the object is replaced meanwhile.
 */
export interface OpenFile {
  /** The opened object's size and time. */
  info: ObjectInfo;
  /** Reads up to `buffer.length` bytes at `position` into `buffer`; resolves how many (0 at the end). */
  read(buffer: Uint8Array, position: number): Promise<number>;
  close(): Promise<void>;
}

/** One configured store, opened by a store plugin. */
export interface StoreInstance {
  /** The object's size and time, or undefined when it does not exist. */
  stat(key: string, options?: CallOptions): Promise<ObjectInfo | undefined>;
  /** A stream of the object's bytes (or of `range`); rejects with StoreError "not-found". */
  read(key: string, options?: ReadOptions): Promise<Readable>;
  /**
   * Writes `source` to `key`. Atomic: the object becomes visible only once every byte is
   * stored, and a failed or aborted write leaves no object behind.
   */
  write(key: string, source: AsyncIterable<Uint8Array>, options?: CallOptions): Promise<ObjectInfo>;
  /** Removes the object; removing a missing object succeeds. */
  delete(key: string, options?: CallOptions): Promise<void>;
  /**
   * The objects whose keys start with `prefix` (any string, not only up to a '/'), in
   * ascending key order, at most `pageSize` per page; objects being written are not listed.
   */
  list(options?: ListOptions): Promise<ObjectPage>;
  /**
   * Removes what writes that never finished left behind (a writer killed mid-way) and
   * that is older than `olderThan`; returns how many it removed. Optional: stores whose
   * unfinished writes leave nothing need not have it.
   */
  removePartialWrites?(olderThan: Date, options?: CallOptions): Promise<number>;
  /**
   * Moves a local file the host has finished with (a converted image in its work dir) into
   * the store as `key` without copying its bytes, where the store can: a file store whose
   * root is on the same file system renames it. Resolves undefined when it cannot, leaving
   * the file as it was, and the host writes the bytes with write() instead. Atomic and
   * durable like write(): the object appears whole or not at all, and a failure leaves no
   * object behind. Optional.
   * @since 1.2
   */
  adoptFile?(key: string, path: string, options?: CallOptions): Promise<ObjectInfo | undefined>;
  /**
   * Opens the object for reads into buffers the host reuses, where the object is a local
   * file: a stream's new buffer per chunk costs a GiB-sized download a garbage collection
   * every few dozen MiB, and the host's downloads would run at half speed or less. Rejects
   * with StoreError "not-found" like read(); resolves undefined when this object cannot be
   * opened so, and the host reads it with read(). The caller closes it. Only for stores
   * advertising the openFile capability.
   * @since 1.3
   */
  openFile?(key: string, options?: CallOptions): Promise<OpenFile | undefined>;
  /**
   * Gives the object a second name, `path`, a new local file of the host's, without copying its
   * bytes, where the store can: a file store whose root is on the same file system makes a hard
   * link. The host then reads its work copy of an object (an import's staged upload) without
   * writing it again. Only for stores that never change an object's bytes in place (a file store
   * replaces an object by rename), or the host's copy would change with it. Rejects with
   * StoreError "not-found" like read(); resolves undefined when it cannot, creating nothing, and
   * the host copies the object with read(). Optional.
   * @since 1.4
   */
  linkFile?(key: string, path: string, options?: CallOptions): Promise<ObjectInfo | undefined>;
  /** A temporary URL; only for stores advertising presignGet or presignPut. */
  presign?(key: string, options: PresignOptions): Promise<PresignedUrl>;
  close?(): Promise<void>;
}

/** The configuration of one store instance, from the service's config file. */
export interface StoreConfig {
  /** The instance name, the host part of its seed URIs (file://NAME/KEY). */
  name: string;
  region: string;
  /** Plugin-specific options, as written in the config file. */
  options: Record<string, unknown>;
  /** The service's data directory, absolute, for plugins that keep local state. */
  dataDir: string;
}

/** What a store plugin provides. */
export interface StoreDriver {
  /** URI schemes served, lower case, e.g. ["file"]. */
  schemes: string[];
  capabilities: StoreCapabilities;
  /** Opens one configured instance; throws StoreError "invalid" for bad options. */
  open(config: StoreConfig): Promise<StoreInstance> | StoreInstance;
}

/** A disk format name as the API spells it in lower case: raw, qcow2, vmdk, vhd, vhdx, vdi, iso. */
export type FormatName = string;

/**
 * One conversion. Aborting `signal` must reject promptly, end every process the converter
 * started, and leave no output.
 */
export interface ConversionJob extends CallOptions {
  from: FormatName;
  to: FormatName;
  /** A local file holding the source image; the host no longer needs it, so a converter may move it. */
  inputPath: string;
  /** Where to write the converted image; the host removes it if the job fails. */
  outputPath: string;
  /**
   * The most bytes the output may take, when the host sets a cap (decompressing an upload).
   * A converter that would write more stops, removes its output and rejects with an error
   * whose `code` is "OUTPUT_TOO_LARGE". Optional: the host checks the output's size after too.
   * @since 1.1
   */
  maxOutputBytes?: number;
  /** Called with work done so far out of `total` (bytes, or another unit): never decreasing, ending with done equal to total. */
  onProgress?(done: number, total: number): void;
}

/** What a converter found in an image file. */
export interface ImageDescription {
  /** Bytes the guest sees. */
  virtualSize: number;
  /** Set when the image refers to another file for its data; such images are refused. */
  backingFile?: string;
  /** Set when the image keeps its data in an external file; such images are refused. */
  dataFile?: string;
  /** Other files reading the image would open, e.g. a VMDK descriptor's extents; such images are refused. */
  externalFiles?: string[];
}

/** What a converter plugin provides. */
export interface ConverterDriver {
  conversions: Array<{ from: FormatName; to: FormatName }>;
  convert(job: ConversionJob): Promise<void>;
  /** Reads an image file's header, taking its format as given (never probing). */
  describe?(path: string, format: FormatName, options?: CallOptions): Promise<ImageDescription>;
  /** Bytes the conversion's output will take, known before converting; undefined when the converter cannot tell. */
  measure?(path: string, from: FormatName, to: FormatName, options?: CallOptions): Promise<number | undefined>;
  /**
   * The holes of a local file, whatever its format: the ranges that hold no data and read as
   * zeros, as the file system reports them (SEEK_HOLE; `qemu-img map`), found without reading
   * them, ascending and not overlapping. The host hashes holes from zeros instead of reading
   * them: reading a hole still fills the page cache with zeros, which on a half-empty disk is
   * half the work of hashing it. Report only what the file system says is a hole: a range
   * that holds data would make the recorded hash wrong. Optional.
   * @since 1.4
   */
  findHoles?(path: string, options?: CallOptions): Promise<FileRange[]>;
}

/** A run of bytes of a local file. */
export interface FileRange {
  offset: number;
  length: number;
}

/** Where a plugin's log lines go; they carry the plugin's id. */
export interface PluginLogger {
  info(message: string, fields?: Record<string, unknown>): void;
  warn(message: string, fields?: Record<string, unknown>): void;
  error(message: string, fields?: Record<string, unknown>): void;
}

/**
 * What the host hands a plugin while it registers: a narrow view, not the container.
 * Registering a scheme that another plugin already serves throws.
 */
export interface RegistrationContext {
  readonly pluginId: string;
  readonly hostApiVersion: string;
  readonly logger: PluginLogger;
  registerStore(driver: StoreDriver): void;
  registerConverter(driver: ConverterDriver): void;
}

const brand = Symbol.for("imagetransfer.plugin");

interface PluginBase {
  readonly [brand]: true;
  readonly apiVersion: string;
  /** Called once at start-up; throwing marks the plugin failed and the host skips it. */
  register(context: RegistrationContext): Promise<void>;
}

/** A store plugin, as {@link defineStorePlugin} makes it. */
export interface StorePluginDefinition extends PluginBase {
  readonly kind: "store";
}

/** A converter plugin, as {@link defineConverterPlugin} makes it. */
export interface ConverterPluginDefinition extends PluginBase {
  readonly kind: "converter";
}

/** What a plugin entry module's default export must be. */
export type PluginDefinition = StorePluginDefinition | ConverterPluginDefinition;

/** Optional hook run before the driver is registered, e.g. to check that a tool is installed. */
export type Setup = { setup?(context: RegistrationContext): Promise<void> | void };

/** Declares a store plugin; the result is the plugin entry module's default export. */
export function defineStorePlugin(driver: StoreDriver & Setup): StorePluginDefinition {
  return {
    [brand]: true,
    kind: "store",
    apiVersion: PLUGIN_API_VERSION,
    async register(context) {
      await driver.setup?.(context);
      context.registerStore(driver);
    },
  };
}

/** Declares a converter plugin; the result is the plugin entry module's default export. */
export function defineConverterPlugin(driver: ConverterDriver & Setup): ConverterPluginDefinition {
  return {
    [brand]: true,
    kind: "converter",
    apiVersion: PLUGIN_API_VERSION,
    async register(context) {
      await driver.setup?.(context);
      context.registerConverter(driver);
    },
  };
}

/** True for values made by defineStorePlugin or defineConverterPlugin, from any copy of this module. */
export function isPluginDefinition(value: unknown): value is PluginDefinition {
  return typeof value === "object" && value !== null && (value as Record<symbol, unknown>)[brand] === true;
}

/**
 * Why a store call failed: the object is missing, already exists, the backend cannot be
 * reached or failed transiently (the host retries these), access was denied, or the request
 * (a key, range, option or token) is not acceptable.
 */
export type StoreErrorKind = "not-found" | "already-exists" | "unavailable" | "permission" | "invalid";

/**
 * The error store plugins throw; the host maps `kind` to task reason codes and gRPC
 * statuses. Test with {@link isStoreError}, which works across module copies.
 */
export class StoreError extends Error {
  override readonly name = "StoreError";
  constructor(
    readonly kind: StoreErrorKind,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** Whether `err` is a {@link StoreError}, from this copy of the plugin API or any other. */
export function isStoreError(err: unknown): err is StoreError {
  return err instanceof Error && err.name === "StoreError" && typeof (err as StoreError).kind === "string";
}

/** A helper for stores that keep objects in local files: writes a stream, leaving its zeros as holes. @since 1.5 */
export { SparseFileWriter, type SparseFileWriterOptions } from "./sparse-file.js";
