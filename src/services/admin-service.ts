import type { ServiceImpl } from "@connectrpc/connect";
import { inject, injectable } from "tsyringe";
import type { Config } from "../config/config.js";
import type { GarbageCollector } from "../core/garbage-collector.js";
import type { TaskRunner } from "../core/task-runner.js";
import type { Repository } from "../persistence/repository.js";
import { VERSION } from "../version.js";
import type { ConfiguredStore } from "../core/stores.js";
import type { AdminService } from "../gen/imagetransfer/v1/admin_pb.js";
import type { PluginRegistry } from "../plugins/registry.js";
import { Tokens } from "../tokens.js";
import { pluginToProto, storeToProto } from "./convert.js";

/** What operators need to see of the deployment: stores and plugins, including failures. */
@injectable()
export class AdminServiceImpl implements ServiceImpl<typeof AdminService> {
  constructor(
    @inject(Tokens.Stores) private readonly stores: ConfiguredStore[],
    @inject(Tokens.Plugins) private readonly plugins: PluginRegistry,
    @inject(Tokens.GarbageCollector) private readonly collector: GarbageCollector,
    @inject(Tokens.Config) private readonly config: Config,
    @inject(Tokens.Repository) private readonly repository: Repository,
    @inject(Tokens.TaskRunner) private readonly runner: TaskRunner,
  ) {}

  async listStores() {
    return { stores: this.stores.map(storeToProto) };
  }

  async listPlugins() {
    return {
      plugins: this.plugins.reports.map((report) => {
        const plugin = pluginToProto(report);
        plugin.errorCount = BigInt(this.plugins.errorCount(report.id));
        return plugin;
      }),
    };
  }

  /** Answers even while the database is away: that is when operators need it most. */
  async getStatus() {
    const reachable = await this.repository.ping().then(() => true, () => false);
    const count = (state: "pending" | "running") => (reachable ? this.repository.countTasks({ state }).catch(() => 0) : 0);
    const [pending, running] = await Promise.all([count("pending"), count("running")]);
    return {
      version: VERSION,
      uptimeSeconds: BigInt(Math.floor(process.uptime())),
      database: this.config.mongodbUri ? "mongodb" : "embedded",
      databaseReachable: reachable,
      role: this.config.role,
      stores: this.stores.map(storeToProto),
      pluginsLoaded: this.plugins.reports.filter((p) => p.state === "loaded").length,
      pluginsFailed: this.plugins.reports.filter((p) => p.state === "failed").length,
      tasksPending: BigInt(pending),
      tasksRunning: BigInt(running),
      tasksRunningHere: this.runner.runningTasks().size,
    };
  }

  async collectGarbage() {
    const report = await this.collector.sweep();
    return {
      removedObjects: report.objects,
      removedWorkDirs: report.workDirs,
      removedTasks: report.tasks,
      removedPartialWrites: report.partialWrites,
    };
  }
}
