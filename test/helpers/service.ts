import "reflect-metadata";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pino } from "pino";
import { loadConfig, type Config } from "../../src/config/config.js";
import { startService, type RunningService } from "../../src/service.js";

export interface TestService extends RunningService {
  /** Empty for role "worker", which does not listen. */
  url: string;
  config: Config;
  dataDir: string;
  /** Stops the server and removes its data dir unless `keepData`. */
  stop(options?: { keepData?: boolean }): Promise<void>;
}

/** A real server on a free loopback port with its own data dir (embedded database unless mongodbUri is given). */
export async function startTestService(overrides: Record<string, unknown> = {}): Promise<TestService> {
  const dataDir = (overrides.dataDir as string | undefined) ?? (await mkdtemp(join(tmpdir(), "itx-test-")));
  const config = await loadConfig({ overrides: { listen: "127.0.0.1:0", dataDir, logLevel: "silent", ...overrides } });
  const service = await startService(config, pino({ level: process.env.ITX_TEST_LOG_LEVEL ?? "silent" }));
  return {
    ...service,
    url: service.listener?.url ?? "",
    config,
    dataDir,
    async stop(options = {}) {
      await service.close();
      if (!options.keepData) await rm(dataDir, { recursive: true, force: true });
    },
  };
}
