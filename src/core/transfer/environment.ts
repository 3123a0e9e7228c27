import type { Logger } from "pino";
import type { Config } from "../../config/config.js";
import type { Repository } from "../../persistence/repository.js";
import type { PluginRegistry } from "../../plugins/registry.js";
import type { ConfiguredStore } from "../stores.js";
import type { TaskRecord, TaskResult } from "../task.js";

/** What every transfer needs from the service around it. */
export interface TransferEnvironment {
  config: Config;
  repository: Repository;
  stores: ConfiguredStore[];
  plugins: PluginRegistry;
  logger: Logger;
}

/** One attempt at running a task. */
export interface TaskRun {
  task: TaskRecord;
  /** Aborted when the task is canceled or the service stops. */
  signal: AbortSignal;
  /** A private directory for temporary files, removed when the run ends however it ends. */
  workDir: string;
  progress(stage: string, bytesDone: number, bytesTotal: number): void;
}

export type Executor = (run: TaskRun, env: TransferEnvironment) => Promise<TaskResult>;

/** Where an image's runtime copy lives in a store. */
export const imageKey = (imageId: string) => `images/${imageId}`;

/** Where an image's export in a format lives; one per format, reused by later exports. */
export const exportKey = (imageId: string, format: string) => `exports/${imageId}.${format}`;
