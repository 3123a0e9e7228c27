import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import { inject, injectable } from "tsyringe";
import type { Config } from "../config/config.js";
import { DomainError, failedPrecondition, invalidArgument } from "../core/errors.js";
import { newId } from "../core/ids.js";
import { newImageRecord, type DiskFormat, type ImageRecord } from "../core/image.js";
import type { UrlSigner } from "../core/signed-url.js";
import { pickStore, resolveStoreUri, storeUri } from "../core/store-uri.js";
import type { ConfiguredStore } from "../core/stores.js";
import { TaskHub } from "../core/task-hub.js";
import type { TaskRunner } from "../core/task-runner.js";
import { newTaskRecord, type TaskRecord, type TaskType } from "../core/task.js";
import type { CopyInput } from "../core/transfer/copy.js";
import { exportFormats, exportKey } from "../core/transfer/environment.js";
import type { ExportInput } from "../core/transfer/export.js";
import type { ImportInput } from "../core/transfer/import.js";
import { HashAlgorithm, type TransferService } from "../gen/imagetransfer/v1/transfer_pb.js";
import type * as pb from "../gen/imagetransfer/v1/transfer_pb.js";
import type { Repository } from "../persistence/repository.js";
import type { StoreInstance } from "../plugins/plugin-api.js";
import { Tokens } from "../tokens.js";
import { diskFormat, imageToProto, taskToProto } from "./convert.js";
import type { PolicyAction } from "../auth/policy.js";
import { principalOf } from "./principal.js";
import { withinQuota } from "./quotas.js";
import { visibleImage } from "./visibility.js";

const hashLengths = { sha256: 64, sha512: 128 } as const;
const MAX_IDEMPOTENCY_KEY_LENGTH = 128;
/** How long an idempotency key names its task. */
const IDEMPOTENCY_WINDOW_MS = 24 * 3600 * 1000;
/**
 * DownloadImageData messages carry about this many bytes: big enough that per-message costs
 * vanish, far below message limits (grpc-js receives at most 4 MiB by default).
 */
const DOWNLOAD_CHUNK_BYTES = 1024 * 1024;

/** Where the service's own temporary URLs point: the configured public URL, else the listener. */
export interface PublicEndpoint {
  baseUrl: string;
}

/**
 * The four steps of the workflow, each a thin check-then-hand-over: upload and download
 * hand out temporary URLs, import, export and copy create tasks for the runner, and
 * the direct data path streams bytes for service principals.
 */
@injectable()
export class TransferServiceImpl implements ServiceImpl<typeof TransferService> {
  constructor(
    @inject(Tokens.Config) private readonly config: Config,
    @inject(Tokens.Repository) private readonly repository: Repository,
    @inject(Tokens.Stores) private readonly stores: ConfiguredStore[],
    @inject(TaskHub) private readonly hub: TaskHub,
    @inject(Tokens.TaskRunner) private readonly runner: TaskRunner,
    @inject(Tokens.UrlSigner) private readonly signer: UrlSigner,
    @inject(Tokens.PublicEndpoint) private readonly endpoint: PublicEndpoint,
  ) {}

  async createUploadUrl(req: pb.CreateUploadUrlRequest, ctx: HandlerContext) {
    const store = pickStore(this.stores, req.store, "isStaging", this.config.region);
    if (!store.capabilities?.write) throw failedPrecondition(`store "${store.name}" does not accept writes`);
    let key = `uploads/${newId()}`;
    if (req.imageId !== "") {
      const image = await visibleImage(this.repository, req.imageId, ctx, "create_upload_url", "image_id");
      if (image.status !== "queued") throw failedPrecondition(`image ${image.id} is ${image.status.toUpperCase()}; uploads are for QUEUED images`);
      key = `uploads/${image.id}/${newId()}`;
    }
    const { url, expireTime } = await this.temporaryUrl(store, key, "PUT", req.expiresInSeconds);
    return { url, method: "PUT", expireTime: timestampFromDate(expireTime), seedUri: storeUri(store, key) };
  }

  async importImage(req: pb.ImportImageRequest, ctx: HandlerContext) {
    if (req.seedUri === "") throw invalidArgument("seed_uri is required, e.g. the seed_uri from CreateUploadUrl");
    resolveStoreUri(this.stores, req.seedUri, this.config.region);
    const stores = this.destinationStores(req.stores);
    const declared = diskFormat.fromProto(req.diskFormat, "disk_format");
    const input: ImportInput = {
      seedUri: req.seedUri,
      diskFormat: declared,
      stores,
      allStoresMustSucceed: req.allStoresMustSucceed,
      expectedHash: expectedHash(req.expectedHash),
    };
    // The image this call created or moved to IMPORTING, returned as written rather than read again.
    let image: ImageRecord | undefined;
    const task = await this.idempotent(req.idempotencyKey, ctx, async (taskId) => {
      if (req.imageId === "") {
        const name = checkName(req.name);
        return withinQuota(this.repository, this.config, principalOf(ctx).project, { images: 1, imports: 1 }, async () => {
          image = await this.newImage(ctx, name, declared);
          return this.createTask("import", image, input, taskId);
        });
      }
      const queued = await visibleImage(this.repository, req.imageId, ctx, "import_image", "image_id");
      return withinQuota(this.repository, this.config, queued.owner, { imports: 1 }, async () => {
        image = await this.repository.updateImage(queued.id, { expect: ["queued"], status: "importing" });
        return this.createTask("import", image, input, taskId);
      });
    });
    // A repeated idempotency key returns an earlier call's task, whose image is read as it is now.
    image ??= (await this.repository.findImage(task.imageId))!;
    return { task: taskToProto(task), image: imageToProto(image) };
  }

  async exportImage(req: pb.ExportImageRequest, ctx: HandlerContext) {
    const image = await this.activeImage(req.imageId, ctx, "export_image");
    const format = diskFormat.fromProto(req.diskFormat, "disk_format");
    if (!format || !(exportFormats as readonly string[]).includes(format)) throw invalidArgument(`disk_format must be one of ${exportFormats.join(", ")}`);
    // Converting an encrypted image needs its key, which the service never has.
    if (image.encrypted && format !== image.diskFormat) {
      throw failedPrecondition(
        `image ${image.id} is an encrypted ${image.diskFormat} image; it cannot be converted to ${format} without its key; export it as ${image.diskFormat}`,
        "IMAGE_ENCRYPTED",
      );
    }
    const store = pickStore(this.stores, req.store, "isDefault", this.config.region);
    const input: ExportInput = { diskFormat: format, store: store.name };
    return { task: taskToProto(await this.idempotent(req.idempotencyKey, ctx, (id) => this.createTask("export", image, input, id))) };
  }

  async createDownloadUrl(req: pb.CreateDownloadUrlRequest, ctx: HandlerContext) {
    const image = await this.activeImage(req.imageId, ctx, "create_download_url");
    const format = diskFormat.fromProto(req.diskFormat, "disk_format");
    const { store, key } = await this.downloadObject(image, format);
    const info = await store.instance.stat(key);
    if (!info) throw failedPrecondition(`the stored object for image ${image.id} is missing from store "${store.name}"`);
    const { url, expireTime } = await this.temporaryUrl(store, key, "GET", req.expiresInSeconds);
    return { url, expireTime: timestampFromDate(expireTime), uri: storeUri(store, key), size: BigInt(info.size) };
  }

  async copyImage(req: pb.CopyImageRequest, ctx: HandlerContext) {
    const image = await this.activeImage(req.imageId, ctx, "copy_image");
    if (req.stores.length === 0) throw invalidArgument("stores must name at least one store to copy to");
    if (image.encrypted) {
      const refusing = req.stores.filter((name) => !pickStore(this.stores, name, "isDefault", this.config.region).allowsEncryptedImages);
      if (refusing.length > 0) throw failedPrecondition(`image ${image.id} is encrypted and store ${refusing.join(", ")} does not allow encrypted images`, "IMAGE_ENCRYPTED");
    }
    const input: CopyInput = { stores: this.destinationStores(req.stores), allStoresMustSucceed: req.allStoresMustSucceed };
    return { task: taskToProto(await this.idempotent(req.idempotencyKey, ctx, (id) => this.createTask("copy", image, input, id))) };
  }

  /**
   * The direct upload path: the data goes to the staging store as it arrives, then
   * through the same import task as any upload, and the call returns when it has ended.
   */
  async uploadImageData(requests: AsyncIterable<pb.UploadImageDataRequest>, ctx: HandlerContext) {
    const iterator = requests[Symbol.asyncIterator]();
    const first = await iterator.next();
    if (first.done) throw invalidArgument("the first message must name the image");
    const image = await visibleImage(this.repository, first.value.imageId, ctx, "upload_image_data", "image_id");
    const declared = diskFormat.fromProto(first.value.diskFormat, "disk_format");
    // The import slot is taken before the data arrives, so a project at its limit is told at once;
    // once the task exists it holds the slot, and its end frees it.
    const { task, staged } = await withinQuota(this.repository, this.config, image.owner, { imports: 1 }, async () => {
      await this.repository.updateImage(image.id, { expect: ["queued"], status: "uploading" });
      const staging = pickStore(this.stores, "", "isStaging", this.config.region);
      const key = `uploads/${image.id}/${newId()}`;
      const maxBytes = this.config.maxImageBytes;
      async function* chunks() {
        let total = 0;
        for (let next = first; !next.done; next = await iterator.next()) {
          total += next.value.chunk.length;
          if (total > maxBytes) throw new DomainError("resource-exhausted", "IMAGE_TOO_LARGE", `the image is larger than the limit of ${maxBytes} bytes`);
          if (next.value.chunk.length > 0) yield next.value.chunk;
        }
      }
      try {
        await staging.instance.write(key, chunks(), { signal: ctx.signal });
      } catch (err) {
        await this.repository.updateImage(image.id, { expect: ["uploading"], status: "killed" }).catch(() => undefined);
        throw err;
      }
      const importing = await this.repository.updateImage(image.id, { expect: ["uploading"], status: "importing" });
      const input: ImportInput = { seedUri: storeUri(staging, key), diskFormat: declared, stores: [], allStoresMustSucceed: true };
      return { task: await this.createTask("import", importing, input), staged: { store: staging, key } };
    });
    try {
      let last = task;
      for await (const snapshot of this.hub.watch(task.id, ctx.signal)) last = snapshot;
      if (last.state !== "succeeded") {
        throw failedPrecondition(`the upload did not become an image: ${last.error?.message ?? last.state}`, last.error?.reason);
      }
    } finally {
      await staged.store.instance.delete(staged.key).catch(() => undefined);
    }
    return { image: imageToProto((await this.repository.findImage(image.id))!) };
  }

  async *downloadImageData(req: pb.DownloadImageDataRequest, ctx: HandlerContext) {
    const image = await this.activeImage(req.imageId, ctx, "download_image_data");
    const { store, key } = await this.downloadObject(image, undefined);
    const offset = Number(req.offset);
    if (offset > image.size) throw invalidArgument(`offset ${offset} is beyond the image's ${image.size} bytes`);
    const length = req.length === 0n ? undefined : Math.min(Number(req.length), image.size - offset);
    const stream = await store.instance.read(key, { range: { offset, length }, signal: ctx.signal });
    // A store chunk of a message's size or more goes out as it is (sliced, not copied); only
    // small chunks (an HTTP store's) are gathered into one, which costs a copy.
    let pending: Buffer[] = [];
    let pendingBytes = 0;
    const take = () => {
      const message = pending.length === 1 ? pending[0]! : Buffer.concat(pending, pendingBytes);
      pending = [];
      pendingBytes = 0;
      return { chunk: message };
    };
    for await (const chunk of stream as AsyncIterable<Buffer>) {
      for (let at = 0; at < chunk.length; at += DOWNLOAD_CHUNK_BYTES) {
        const piece = at === 0 && chunk.length <= DOWNLOAD_CHUNK_BYTES ? chunk : chunk.subarray(at, at + DOWNLOAD_CHUNK_BYTES);
        pending.push(piece);
        pendingBytes += piece.length;
        if (pendingBytes >= DOWNLOAD_CHUNK_BYTES) yield take();
      }
    }
    if (pendingBytes > 0) yield take();
  }

  private async activeImage(rawId: string, ctx: HandlerContext, action: PolicyAction): Promise<ImageRecord> {
    const image = await visibleImage(this.repository, rawId, ctx, action, "image_id");
    if (image.status !== "active") throw failedPrecondition(`image ${image.id} is ${image.status.toUpperCase()}; it must be ACTIVE`, "IMAGE_NOT_ACTIVE");
    return image;
  }

  /** The image as stored, or its export in `format`, which must already exist. */
  private async downloadObject(image: ImageRecord, format: DiskFormat | undefined) {
    if (format === undefined || format === image.diskFormat) {
      const location = image.locations.find((l) => l.status === "active");
      if (!location) throw failedPrecondition(`image ${image.id} has no stored copy`, "NO_USABLE_LOCATION");
      return resolveStoreUri(this.stores, location.uri, this.config.region, "location");
    }
    // Exports go to the default store unless the caller named another: look there first.
    const key = exportKey(image.id, format);
    const candidates = [...this.stores].sort((a, b) => Number(b.isDefault) - Number(a.isDefault));
    for (const store of candidates) {
      if (store.region !== this.config.region || !store.instance) continue;
      if (await store.instance.stat(key)) return { store: store as ConfiguredStore & { instance: StoreInstance }, key };
    }
    throw failedPrecondition(`image ${image.id} has no ${format} export yet; run ExportImage with that format first`, "EXPORT_MISSING");
  }

  private destinationStores(names: string[]): string[] {
    return [...new Set(names)].map((name) => pickStore(this.stores, name, "isDefault", this.config.region).name);
  }

  private async newImage(ctx: HandlerContext, name: string, declared: DiskFormat | undefined): Promise<ImageRecord> {
    const image = newImageRecord({ id: newId(), owner: principalOf(ctx).project, name, diskFormat: declared, status: "importing" }, Date.now());
    await this.repository.insertImage(image);
    return image;
  }

  /**
   * Starts a task, unless an earlier call with the same idempotency key (same project,
   * within 24 hours) did: then returns that one. A start that fails frees the key again.
   */
  private async idempotent(key: string, ctx: HandlerContext, start: (taskId: string) => Promise<TaskRecord>): Promise<TaskRecord> {
    const taskId = newId();
    if (key === "") return start(taskId);
    if (key.length > MAX_IDEMPOTENCY_KEY_LENGTH) throw invalidArgument(`idempotency_key must be at most ${MAX_IDEMPOTENCY_KEY_LENGTH} characters`);
    const owner = principalOf(ctx).project;
    const now = Date.now();
    const named = await this.repository.reserveIdempotencyKey(owner, key, taskId, now, now - IDEMPOTENCY_WINDOW_MS);
    if (named !== taskId) {
      const task = await this.repository.findTask(named);
      // The first call reserved the key and is still creating its task.
      if (!task) throw new DomainError("aborted", "IDEMPOTENCY_KEY_IN_USE", "a request with this idempotency_key is still being handled; retry shortly");
      return task;
    }
    try {
      return await start(taskId);
    } catch (err) {
      await this.repository.releaseIdempotencyKey(owner, key, taskId).catch(() => undefined);
      throw err;
    }
  }

  /** The task belongs to the image's project, whoever asked for it (a service, an admin). */
  private async createTask(type: TaskType, image: ImageRecord, input: object, id = newId()) {
    const task = await this.hub.create(newTaskRecord({ id, type, imageId: image.id, owner: image.owner, input: { ...input } }, Date.now()));
    this.runner.poke();
    return task;
  }

  /** The store's own temporary URL where it has one, else the service's signed data endpoint. */
  private async temporaryUrl(store: ConfiguredStore & { instance: StoreInstance }, key: string, method: "GET" | "PUT", seconds: number) {
    const max = this.config.maxUrlTtlSeconds;
    if (seconds > max) throw invalidArgument(`expires_in_seconds must be at most ${max}`);
    const ttl = seconds === 0 ? this.config.urlTtlSeconds : seconds;
    const native = method === "GET" ? store.capabilities?.presignGet : store.capabilities?.presignPut;
    if (native && store.instance.presign) return store.instance.presign(key, { method, expiresInSeconds: ttl });
    return this.signer.url(this.endpoint.baseUrl, method, store.name, key, ttl);
  }
}

function checkName(name: string): string {
  if (name.length > 255) throw invalidArgument("name is longer than 255 characters");
  return name;
}

function expectedHash(hash: pb.ExpectedHash | undefined): ImportInput["expectedHash"] {
  if (!hash || (hash.algorithm === HashAlgorithm.UNSPECIFIED && hash.value === "")) return undefined;
  const algorithm = hash.algorithm === HashAlgorithm.SHA256 ? "sha256" : hash.algorithm === HashAlgorithm.SHA512 ? "sha512" : undefined;
  if (!algorithm) throw invalidArgument("expected_hash.algorithm must be SHA256 or SHA512");
  const value = hash.value.toLowerCase();
  if (value.length !== hashLengths[algorithm] || !/^[0-9a-f]+$/.test(value)) {
    throw invalidArgument(`expected_hash.value must be ${hashLengths[algorithm]} hex digits for ${algorithm}`);
  }
  return { algorithm, value };
}
