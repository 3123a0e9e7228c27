import type { Logger } from "pino";
import type { Config } from "../../config/config.js";
import type { Repository } from "../../persistence/repository.js";
import type { PluginRegistry } from "../../plugins/registry.js";
import type { ConfiguredStore } from "../stores.js";
import type { TaskRecord, TaskResult } from "../task.js";
import type { Metrics } from "../../metrics.js";

/** What every transfer needs from the service around it. */
export interface TransferEnvironment {
  config: Config;
  repository: Repository;
  stores: ConfiguredStore[];
  plugins: PluginRegistry;
  logger: Logger;
  metrics: Metrics;
}

/** One attempt at running a task. */
export interface TaskRun {
  task: TaskRecord;
  /** Aborted when the task is canceled or the service stops. */
  signal: AbortSignal;
  /** A private directory for temporary files, removed when the run ends however it ends. */
  workDir: string;
  progress(stage: string, bytesDone: number, bytesTotal: number): void;
  /** Extends the run's lease; rejects when it is lost. Call it right before a change that must happen once, such as activating an image. */
  renewLease(): Promise<void>;
}

/**
 * Why a run stopped when the task goes on elsewhere (the service is stopping, or the
 * lease passed to another worker): the run must leave the image and stores alone.
 */
export class Handover extends Error {
  override readonly name = "Handover";
}

/** True when the run stopped so that another worker continues the task. */
export function isHandover(signal: AbortSignal): boolean {
  return signal.aborted && signal.reason instanceof Handover;
}

export type Executor = (run: TaskRun, env: TransferEnvironment) => Promise<TaskResult>;

/** Where an image's runtime copy lives in a store. */
export const imageKey = (imageId: string) => `images/${imageId}`;

/** The formats an image can be exported to. */
export const exportFormats = ["raw", "qcow2", "vmdk", "vhd", "vhdx"] as const;

/** Where an image's export in a format lives; one per format, reused by later exports. */
export const exportKey = (imageId: string, format: string) => `exports/${imageId}.${format}`;
