import type { InjectionToken } from "tsyringe";
import type { Config } from "./config/config.js";
import type { GarbageCollector } from "./core/garbage-collector.js";
import type { UrlSigner } from "./core/signed-url.js";
import type { ConfiguredStore } from "./core/stores.js";
import type { TaskRunner } from "./core/task-runner.js";
import type { PublicEndpoint } from "./services/transfer-service.js";
import type { PluginRegistry } from "./plugins/registry.js";
import type { Repository } from "./persistence/repository.js";

/**
 * Every injection token in one place. Each constructor parameter names its token with
 * @inject, so resolution never depends on emitted decorator metadata (esbuild and tsx
 * do not emit it).
 */
export const Tokens = {
  Config: Symbol("Config") as InjectionToken<Config>,
  Repository: Symbol("Repository") as InjectionToken<Repository>,
  Plugins: Symbol("PluginRegistry") as InjectionToken<PluginRegistry>,
  Stores: Symbol("Stores") as InjectionToken<ConfiguredStore[]>,
  TaskRunner: Symbol("TaskRunner") as InjectionToken<TaskRunner>,
  GarbageCollector: Symbol("GarbageCollector") as InjectionToken<GarbageCollector>,
  UrlSigner: Symbol("UrlSigner") as InjectionToken<UrlSigner>,
  PublicEndpoint: Symbol("PublicEndpoint") as InjectionToken<PublicEndpoint>,
} as const;
