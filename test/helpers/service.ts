import "reflect-metadata";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pino, type Logger } from "pino";
import { loadConfig, type Config } from "../../src/config/config.js";
import { startService, type RunningService } from "../../src/service.js";

export interface TestService extends RunningService {
  /** The first listener's URL; empty for role "worker", which does not listen. */
  url: string;
  /** Every listener's URL by name. */
  urls: Record<string, string>;
  config: Config;
  dataDir: string;
  /** Stops the server and removes its data dir unless `keepData`. */
  stop(options?: { keepData?: boolean }): Promise<void>;
}

/**
 * A real server on a free loopback port with its own data dir (embedded database unless
 * mongodbUri is given). Tests that are not about authentication run it with
 * insecureNoAuth (every caller an admin of project "default"); pass `auth` (or
 * `insecureNoAuth: false`, for the local admin key) to test authentication.
 */
export async function startTestService(overrides: Record<string, unknown> = {}, options: { logger?: Logger } = {}): Promise<TestService> {
  const dataDir = (overrides.dataDir as string | undefined) ?? (await mkdtemp(join(tmpdir(), "itx-test-")));
  const insecureNoAuth = overrides.auth === undefined && overrides.insecureNoAuth === undefined ? true : undefined;
  let config: Config;
  let service: RunningService;
  try {
    config = await loadConfig({ overrides: { listen: "127.0.0.1:0", dataDir, logLevel: "silent", insecureNoAuth, ...overrides } });
    service = await startService(config, options.logger ?? pino({ level: process.env.ITX_TEST_LOG_LEVEL ?? "silent" }));
  } catch (err) {
    // A server that failed to start leaves no data dir of ours behind.
    if (overrides.dataDir === undefined) await rm(dataDir, { recursive: true, force: true });
    throw err;
  }
  return {
    ...service,
    url: service.listener?.url ?? "",
    urls: Object.fromEntries(Object.entries(service.listening).map(([name, l]) => [name, l.url])),
    config,
    dataDir,
    async stop(options = {}) {
      await service.close();
      if (!options.keepData) await rm(dataDir, { recursive: true, force: true });
    },
  };
}
