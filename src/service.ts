import "reflect-metadata";
import type { ConnectRouter } from "@connectrpc/connect";
import { connectNodeAdapter, type ConnectNodeAdapterOptions } from "@connectrpc/connect-node";
import type { Logger } from "pino";
import { container as rootContainer, type DependencyContainer } from "tsyringe";
import type { Config } from "./config/config.js";
import { loadSigningKey, UrlSigner } from "./core/signed-url.js";
import { closeStores, openStores } from "./core/stores.js";
import { TaskHub } from "./core/task-hub.js";
import { TaskRunner } from "./core/task-runner.js";
import { GarbageCollector } from "./core/garbage-collector.js";
import { runCopy } from "./core/transfer/copy.js";
import { runExport } from "./core/transfer/export.js";
import { runImport } from "./core/transfer/import.js";
import { Health } from "./gen/grpc/health/v1/health_pb.js";
import { ServerReflection } from "./gen/grpc/reflection/v1/reflection_pb.js";
import { AdminService } from "./gen/imagetransfer/v1/admin_pb.js";
import { ImageService } from "./gen/imagetransfer/v1/image_pb.js";
import { TaskService } from "./gen/imagetransfer/v1/task_pb.js";
import { TransferService } from "./gen/imagetransfer/v1/transfer_pb.js";
import { MongoRepository } from "./persistence/mongo/mongo-repository.js";
import { SqliteRepository } from "./persistence/embedded/sqlite-repository.js";
import type { Repository } from "./persistence/repository.js";
import { builtInPluginsDir, loadPlugins } from "./plugins/loader.js";
import { PluginRegistry } from "./plugins/registry.js";
import { servedProtoFiles, servedServiceNames } from "./server/api.js";
import { createDataEndpoint } from "./server/data-endpoint.js";
import { createHealthService } from "./server/health.js";
import { errorsAndLogging } from "./server/interceptors.js";
import { Metrics, serveMetrics } from "./metrics.js";
import { listen, type Listener } from "./server/listener.js";
import { createReflectionService } from "./server/reflection.js";
import { AdminServiceImpl } from "./services/admin-service.js";
import { ImageServiceImpl } from "./services/image-service.js";
import { TaskServiceImpl } from "./services/task-service.js";
import { TransferServiceImpl, type PublicEndpoint } from "./services/transfer-service.js";
import { Tokens } from "./tokens.js";

/** The assembled service, not yet listening. */
export interface Service {
  container: DependencyContainer;
  metrics: Metrics;
  /** Where temporary URLs point; startService sets it to the listener's URL unless publicUrl is configured. */
  endpoint: PublicEndpoint;
  runner: TaskRunner;
  routes: (router: ConnectRouter) => void;
  handler: ReturnType<typeof connectNodeAdapter>;
  /** Stops the service; running tasks get `graceMs` to finish (until `hurry` aborts), then pass to other workers. */
  close(options?: { graceMs?: number; hurry?: AbortSignal }): Promise<void>;
}

/**
 * Assembles the service in a child container of its own: database, plugins, stores,
 * then the RPC handler. Nothing listens yet; see startService.
 */
export async function buildService(config: Config, logger: Logger): Promise<Service> {
  const container = rootContainer.createChildContainer();
  const repository: Repository = config.mongodbUri
    ? new MongoRepository({ uri: config.mongodbUri })
    : new SqliteRepository(config.dataDir);
  await initRepository(repository, logger);

  const plugins = new PluginRegistry();
  await loadPlugins([builtInPluginsDir, ...config.pluginsDirs], plugins, logger);
  const metrics = new Metrics();
  const stores = await openStores(config.stores, {
    region: config.region,
    dataDir: config.dataDir,
    plugins,
    logger,
    observe: (store) => ({
      bytes: (direction, count) => metrics.storeBytes.inc({ store, direction }, count),
      error: (kind) => metrics.storeErrors.inc({ store, kind }),
    }),
  });
  const signer = new UrlSigner(await loadSigningKey(config.dataDir, config.urlSigningKey));
  const endpoint: PublicEndpoint = { baseUrl: config.publicUrl?.replace(/\/$/, "") ?? "" };

  container.register(Tokens.Config, { useValue: config });
  container.register(Tokens.Repository, { useValue: repository });
  container.register(Tokens.Plugins, { useValue: plugins });
  container.register(Tokens.Stores, { useValue: stores });
  container.register(Tokens.UrlSigner, { useValue: signer });
  container.register(Tokens.PublicEndpoint, { useValue: endpoint });
  container.registerSingleton(TaskHub);
  const runner = new TaskRunner(
    container.resolve(TaskHub),
    { config, repository, stores, plugins, logger },
    { import: runImport, export: runExport, copy: runCopy },
    logger,
    metrics,
  );
  container.register(Tokens.TaskRunner, { useValue: runner });
  const collector = new GarbageCollector(config, repository, stores, logger, () => runner.runningTasks());
  container.register(Tokens.GarbageCollector, { useValue: collector });

  const routes = (router: ConnectRouter) => {
    router.service(ImageService, container.resolve(ImageServiceImpl));
    router.service(TransferService, container.resolve(TransferServiceImpl));
    router.service(TaskService, container.resolve(TaskServiceImpl));
    router.service(AdminService, container.resolve(AdminServiceImpl));
    router.service(
      Health,
      createHealthService(servedServiceNames, {
        "": () => repository.ping(),
        [TransferService.typeName]: async () => {
          await repository.ping();
          if (!stores.some((s) => s.instance && s.region === config.region)) throw new Error("no store is usable");
        },
      }),
    );
    router.service(ServerReflection, createReflectionService(servedProtoFiles, servedServiceNames));
  };
  const handler = connectNodeAdapter({
    routes,
    interceptors: [errorsAndLogging(logger, metrics)],
    // Image bytes do not compress; gzip would only cost CPU (grpc-js always offers it).
    acceptCompression: [],
    readMaxBytes: config.maxMessageBytes,
    // Everything that is not an RPC: the signed upload and download URLs of stores without their own.
    // (connect-node's response type differs from node's only in a write callback's signature.)
    fallback: createDataEndpoint({ stores, signer, maxImageBytes: config.maxImageBytes, logger }) as ConnectNodeAdapterOptions["fallback"],
  });
  return {
    container,
    metrics,
    endpoint,
    runner,
    routes,
    handler,
    async close(options = {}) {
      await runner.stop(options);
      await closeStores(stores);
      await repository.close();
      await container.dispose();
    },
  };
}

export interface RunningService extends Service {
  /** Absent for role "worker". */
  listener?: Listener;
  /** Where /metrics is served, when metricsListen is configured. */
  metricsUrl?: string;
}

/** Builds the service, listens on the configured address unless it is a worker, and starts running tasks unless it is an API server. */
export async function startService(config: Config, logger: Logger): Promise<RunningService> {
  const service = await buildService(config, logger);
  let listener: Listener | undefined;
  let metricsServer: Awaited<ReturnType<typeof serveMetrics>> | undefined;
  try {
    if (config.role !== "worker") listener = await listen(service.handler, { address: config.listen, tls: config.tls });
    if (config.metricsListen) metricsServer = await serveMetrics(service.metrics, config.metricsListen);
  } catch (err) {
    await listener?.close();
    await service.close();
    throw err;
  }
  service.endpoint.baseUrl ||= listener?.url ?? "";
  let sweeper: NodeJS.Timeout | undefined;
  if (config.role !== "api") {
    service.runner.start();
    const collector = service.container.resolve(Tokens.GarbageCollector);
    if (config.gcIntervalSeconds > 0) {
      sweeper = setInterval(() => void collector.sweep().catch((err) => logger.warn({ err: String(err) }, "garbage collection failed")), config.gcIntervalSeconds * 1000);
      sweeper.unref();
    }
  }
  logger.info({ url: listener?.url, role: config.role, database: config.mongodbUri ? "mongodb" : "embedded" }, "imagetransfer started");
  return {
    ...service,
    listener,
    metricsUrl: metricsServer?.url,
    async close(options = {}) {
      clearInterval(sweeper);
      service.container.resolve(TaskHub).close();
      // Tasks stop being claimed at once and get their grace period while connections drain.
      await Promise.all([listener?.close(), metricsServer?.close(), service.runner.stop(options)]);
      await service.close();
    },
  };
}

/**
 * An unreachable MongoDB does not stop start-up: the server answers UNAVAILABLE and
 * reports NOT_SERVING until the database is back, and indexes are created then.
 */
async function initRepository(repository: Repository, logger: Logger): Promise<void> {
  try {
    await repository.init();
  } catch (err) {
    logger.warn({ err: String(err) }, "database not ready; retrying in the background");
    const retry = setInterval(() => {
      repository.init().then(
        () => {
          clearInterval(retry);
          logger.info("database ready");
        },
        () => undefined,
      );
    }, 5_000);
    retry.unref();
  }
}
