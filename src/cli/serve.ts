import { setFlagsFromString } from "node:v8";
import type { Command } from "commander";
import { ConfigError, loadConfig } from "../config/config.js";
import { createLogger } from "../logger.js";

/** The old generation's limit after a full collection, as a growth over the live heap. */
const HEAP_GROWING_PERCENT = 200;

function collect(value: string, previous: string[] = []): string[] {
  return [...previous, value];
}

/** `itx serve`: runs the service until SIGINT or SIGTERM. */
export function registerServe(program: Command): void {
  program
    .command("serve")
    .description("run the ImageTransfer service")
    .option("--config <file>", "config file, YAML or JSON (env ITX_CONFIG)")
    .option("--listen <host:port>", "address for gRPC, gRPC-Web and Connect (env ITX_LISTEN; default 127.0.0.1:50051)")
    .option("--data-dir <dir>", "where embedded state and local images live (env ITX_DATA_DIR; default ./var)")
    .option("--mongodb-uri <uri>", "use MongoDB for images and tasks (env ITX_MONGODB_URI or MONGODB_URI)")
    .option("--plugins-dir <dir>", "load plugins from this folder too; repeatable (env ITX_PLUGINS_DIRS, ':'-separated)", collect)
    .option("--tls-cert <file>", "serve TLS with this certificate (env ITX_TLS_CERT)")
    .option("--tls-key <file>", "the TLS private key (env ITX_TLS_KEY)")
    .option("--metrics-listen <host:port>", "serve Prometheus metrics at /metrics on this address (env ITX_METRICS_LISTEN)")
    .option("--role <role>", "all (default), api (serve only) or worker (run tasks only, no listener) (env ITX_ROLE)")
    .option("--log-format <format>", "json (default) or pretty, for a terminal (env ITX_LOG_FORMAT)")
    .option("--log-level <level>", "fatal, error, warn, info, debug, trace or silent (env ITX_LOG_LEVEL)")
    .option("--insecure-no-auth", "serve without authentication: every caller is an admin (development only)")
    .action(async (opts: Record<string, string | string[] | boolean | undefined>) => {
      let config;
      try {
        config = await loadConfig({
          file: (opts.config as string | undefined) ?? process.env.ITX_CONFIG,
          env: process.env,
          overrides: {
            listen: opts.listen,
            dataDir: opts.dataDir,
            mongodbUri: opts.mongodbUri,
            pluginsDirs: opts.pluginsDir,
            "tls.cert": opts.tlsCert,
            "tls.key": opts.tlsKey,
            logLevel: opts.logLevel,
            logFormat: opts.logFormat,
            role: opts.role,
            metricsListen: opts.metricsListen,
            insecureNoAuth: opts.insecureNoAuth,
          },
        });
      } catch (err) {
        if (err instanceof ConfigError) {
          process.stderr.write(`itx serve: ${err.message}\n`);
          process.exit(2);
        }
        throw err;
      }
      const logger = createLogger(config.logLevel, config.logFormat);
      // Image bytes pass through in 1 MiB buffers that die young. After a full collection V8
      // may give the ~25 MB heap left so little room that what scavenges promote starts the next
      // full collection within a few dozen MiB, and stays there: gRPC downloads then cost 5
      // CPU-s per GiB instead of 1.3. Growing the limit to at least 3x the live heap prevents it.
      setFlagsFromString(`--heap-growing-percent=${HEAP_GROWING_PERCENT}`);
      // Loaded here, not at the top: every other itx command starts without the server's modules.
      const { startService } = await import("../service.js");
      let service;
      try {
        service = await startService(config, logger);
      } catch (err) {
        // Start-up failures people can fix (a port in use, an unreadable TLS key) get one line, not a stack.
        const code = (err as NodeJS.ErrnoException).code;
        const reason = code === "EADDRINUSE" ? `address ${config.listen} is already in use` : (err as Error).message;
        process.stderr.write(`itx serve: cannot start: ${reason}\n`);
        process.exit(1);
      }
      // The first signal lets running tasks finish within the grace period; a second one hurries.
      const hurry = new AbortController();
      let stopping = false;
      const stop = async (signal: string) => {
        if (stopping) {
          logger.info({ signal }, "stopping now; running tasks pass to other workers");
          hurry.abort();
          return;
        }
        stopping = true;
        logger.info({ signal, graceSeconds: config.shutdownGraceSeconds }, "shutting down");
        await service.close({ graceMs: config.shutdownGraceSeconds * 1000, hurry: hurry.signal });
        process.exit(0);
      };
      process.on("SIGINT", () => void stop("SIGINT"));
      process.on("SIGTERM", () => void stop("SIGTERM"));
      // Scripts and tests wait for this line to know the port (useful with port 0), and may
      // signal at once: the handlers above are in place by then.
      process.stdout.write(service.listener ? `listening on ${service.listener.url}\n` : "worker started\n");
    });
}
