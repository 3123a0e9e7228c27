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
import { startTracing, traceRpcs } from "./tracing.js";
import { Metrics, serveMetrics } from "./metrics.js";
import { listen, type Listener } from "./server/listener.js";
import { createReflectionService } from "./server/reflection.js";
import { AdminServiceImpl } from "./services/admin-service.js";
import { ImageServiceImpl } from "./services/image-service.js";
import { TaskServiceImpl } from "./services/task-service.js";
import { TransferServiceImpl, type PublicEndpoint } from "./services/transfer-service.js";
import { Tokens } from "./tokens.js";
import { createAuthenticator, sha256Hex, type Authenticator } from "./auth/credentials.js";
import { ensureLocalAdminKey } from "./auth/local-key.js";
import { Policy, PolicyError } from "./auth/policy.js";
import { readPolicyFile } from "./auth/policy-file.js";
import { authentication } from "./server/authentication.js";

/** The assembled service, not yet listening. */
export interface Service {
  container: DependencyContainer;
  metrics: Metrics;
  /** Where temporary URLs point; startService sets it to the listener's URL unless publicUrl is configured. */
  endpoint: PublicEndpoint;
  runner: TaskRunner;
  routes: (router: ConnectRouter) => void;
  /** The first listener's handler. */
  handler: ReturnType<typeof connectNodeAdapter>;
  /** Every configured listener with its handler, which applies that listener's policy. */
  listeners: Array<ListenerSpec & { handler: ReturnType<typeof connectNodeAdapter> }>;
  /** Stops the service; running tasks get `graceMs` to finish (until `hurry` aborts), then pass to other workers. */
  close(options?: { graceMs?: number; hurry?: AbortSignal }): Promise<void>;
}

/** One listener: an address, TLS, and the policy its callers are held to. */
export interface ListenerSpec {
  name: string;
  address: string;
  tls?: { cert: string; key: string };
  policy: Policy;
}

/** The configured listeners, or the one made of `listen` and `tls`; policies compiled now, so bad rules stop start-up. */
async function listenerSpecs(config: Config): Promise<ListenerSpec[]> {
  const shared = config.policyFile ? await readPolicyFile(config.policyFile, "policyFile") : {};
  const entries = config.listeners ?? [{ name: "default", address: config.listen, tls: config.tls, policy: {}, policyFile: undefined }];
  return Promise.all(
    entries.map(async (entry, i) => {
      const own = entry.policyFile ? await readPolicyFile(entry.policyFile, `listeners[${i}].policyFile`) : {};
      let policy: Policy;
      try {
        policy = Policy.compile(shared, config.policy, own, entry.policy);
      } catch (err) {
        if (err instanceof PolicyError) throw new PolicyError(`listener "${entry.name}": ${err.message}`);
        throw err;
      }
      return { name: entry.name, address: entry.address, tls: entry.tls, policy };
    }),
  );
}

/**
 * Who may call: configured API keys and JWTs; with no auth settings, a local admin key
 * kept in the data dir (made on first start); nobody is checked with --insecure-no-auth.
 */
async function authenticatorFor(config: Config, logger: Logger): Promise<Authenticator | undefined> {
  if (config.insecureNoAuth) {
    logger.warn("authentication is OFF (--insecure-no-auth): every caller is an admin; never expose this server");
    return undefined;
  }
  if (config.auth) return createAuthenticator(config.auth.apiKeys, config.auth.jwt);
  // A worker serves no calls and needs no key.
  if (config.role === "worker") return createAuthenticator([], undefined);
  const local = await ensureLocalAdminKey(config.dataDir);
  logger.info(
    { file: local.file },
    local.created
      ? "no auth configured: created a local admin API key; itx uses it with the same data dir (or pass --token)"
      : "no auth configured: using the local admin API key",
  );
  return createAuthenticator([{ sha256: sha256Hex(local.token), subject: "local-admin", project: "default", roles: ["admin"] }], undefined);
}

/**
 * Assembles the service in a child container of its own: database, plugins, stores,
 * then the RPC handler. Nothing listens yet; see startService.
 */
export async function buildService(config: Config, logger: Logger): Promise<Service> {
  // Policies and credentials first: a bad rule or key file stops start-up before anything opens.
  const specs = await listenerSpecs(config);
  const authenticator = await authenticatorFor(config, logger);
  const tracing = await startTracing({ otlpEndpoint: config.otlpEndpoint, serviceName: "imagetransfer" }, logger);
  const container = rootContainer.createChildContainer();
  const repository: Repository = config.mongodbUri
    ? new MongoRepository({ uri: config.mongodbUri, socketTimeoutMS: config.databaseTimeoutSeconds * 1000 })
    : new SqliteRepository(config.dataDir);
  await initRepository(repository, logger);

  const plugins = new PluginRegistry({
    callTimeoutMs: config.pluginCallTimeoutSeconds * 1000,
    stallTimeoutMs: config.pluginStallTimeoutSeconds * 1000,
  });
  await loadPlugins([builtInPluginsDir, ...config.pluginsDirs], plugins, logger);
  const metrics = new Metrics();
  metrics.countTasksIn(repository);
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
    { config, repository, stores, plugins, logger, metrics },
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
  const openServices = config.auth?.openServices ?? [Health.typeName, ServerReflection.typeName];
  const listeners = specs.map((spec) => ({
    ...spec,
    handler: connectNodeAdapter({
      routes,
      interceptors: [
        traceRpcs,
        errorsAndLogging(logger, metrics, spec.name),
        authentication({ authenticator, policy: spec.policy, listener: spec.name, openServices, logger }),
      ],
      // Image bytes do not compress; gzip would only cost CPU (grpc-js always offers it).
      acceptCompression: [],
      readMaxBytes: config.maxMessageBytes,
      // Everything that is not an RPC: the signed upload and download URLs of stores without their own.
      // (connect-node's response type differs from node's only in a write callback's signature.)
      fallback: createDataEndpoint({
        stores,
        signer,
        maxImageBytes: config.maxImageBytes,
        logger,
        listener: spec.name,
        allows: (action) => spec.policy.allows(action, { subject: "", project: "", roles: [] }, { owner: "" }),
      }) as ConnectNodeAdapterOptions["fallback"],
    }),
  }));
  return {
    container,
    metrics,
    endpoint,
    runner,
    routes,
    handler: listeners[0]!.handler,
    listeners,
    async close(options = {}) {
      await runner.stop(options);
      await closeStores(stores);
      await repository.close();
      await container.dispose();
      await tracing.shutdown();
    },
  };
}

export interface RunningService extends Service {
  /** The first listener; absent for role "worker". */
  listener?: Listener;
  /** Every listener by name; empty for role "worker". */
  listening: Record<string, Listener>;
  /** Where /metrics is served, when metricsListen is configured. */
  metricsUrl?: string;
}

/** Builds the service, listens on the configured address unless it is a worker, and starts running tasks unless it is an API server. */
export async function startService(config: Config, logger: Logger): Promise<RunningService> {
  const service = await buildService(config, logger);
  const listening: Record<string, Listener> = {};
  let metricsServer: Awaited<ReturnType<typeof serveMetrics>> | undefined;
  try {
    if (config.role !== "worker") {
      for (const spec of service.listeners) listening[spec.name] = await listen(spec.handler, { address: spec.address, tls: spec.tls });
    }
    if (config.metricsListen) metricsServer = await serveMetrics(service.metrics, config.metricsListen);
  } catch (err) {
    await Promise.all(Object.values(listening).map((l) => l.close()));
    await service.close();
    throw err;
  }
  const listener = listening[service.listeners[0]!.name];
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
  logger.info({ url: listener?.url, listeners: Object.fromEntries(Object.entries(listening).map(([n, l]) => [n, l.url])), role: config.role, database: config.mongodbUri ? "mongodb" : "embedded" }, "imagetransfer started");
  return {
    ...service,
    listener,
    listening,
    metricsUrl: metricsServer?.url,
    async close(options = {}) {
      clearInterval(sweeper);
      service.container.resolve(TaskHub).close();
      // Tasks stop being claimed at once and get their grace period while connections drain.
      await Promise.all([...Object.values(listening).map((l) => l.close()), metricsServer?.close(), service.runner.stop(options)]);
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
