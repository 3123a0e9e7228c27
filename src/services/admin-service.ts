import type { ServiceImpl } from "@connectrpc/connect";
import { inject, injectable } from "tsyringe";
import type { GarbageCollector } from "../core/garbage-collector.js";
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
  ) {}

  async listStores() {
    return { stores: this.stores.map(storeToProto) };
  }

  async listPlugins() {
    return { plugins: this.plugins.reports.map(pluginToProto) };
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
