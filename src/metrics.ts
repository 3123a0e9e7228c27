import http from "node:http";
import type { AddressInfo } from "node:net";
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from "prom-client";
import { taskStates, taskTypes } from "./core/task.js";
import type { Repository } from "./persistence/repository.js";

/**
 * The service's Prometheus metrics, in a registry of its own (never prom-client's global
 * one, so several services in one process stay apart). Label values are bounded: RPC
 * methods, codes, task types, outcomes, reason codes, stage and store names; never ids.
 */
export class Metrics {
  readonly registry = new Registry();
  readonly rpcRequests = new Counter({
    name: "itx_rpc_requests_total",
    help: "RPCs answered, by method and gRPC status code.",
    labelNames: ["method", "code"],
    registers: [this.registry],
  });
  readonly rpcDuration = new Histogram({
    name: "itx_rpc_duration_seconds",
    help: "Time to answer an RPC (for streams, until the stream ends), by method.",
    labelNames: ["method"],
    buckets: [0.001, 0.005, 0.02, 0.1, 0.5, 2, 10, 60],
    registers: [this.registry],
  });
  readonly tasksFinished = new Counter({
    name: "itx_tasks_finished_total",
    help: "Tasks this process ran to an end, by type, outcome (succeeded, failed) and reason code.",
    labelNames: ["type", "outcome", "reason"],
    registers: [this.registry],
  });
  readonly taskDuration = new Histogram({
    name: "itx_task_duration_seconds",
    help: "Time from claim to end of the tasks this process ran, by type and outcome.",
    labelNames: ["type", "outcome"],
    buckets: [1, 5, 15, 60, 300, 900, 3600],
    registers: [this.registry],
  });
  readonly stageDuration = new Histogram({
    name: "itx_pipeline_stage_duration_seconds",
    help: "Time spent in each pipeline stage (fetching, inspecting, converting, storing, copying).",
    labelNames: ["stage"],
    buckets: [0.1, 0.5, 2, 10, 60, 300, 1800],
    registers: [this.registry],
  });
  readonly tasks = new Gauge({
    name: "itx_tasks",
    help: "Tasks in the database (all processes), by type and state; read from the database at each scrape.",
    labelNames: ["type", "state"],
    registers: [this.registry],
  });
  readonly tasksRunning = new Gauge({
    name: "itx_tasks_running",
    help: "Tasks this process runs now, each under a lease it holds.",
    registers: [this.registry],
  });
  readonly storeBytes = new Counter({
    name: "itx_store_bytes_total",
    help: "Bytes read from and written to stores, by store and direction (read, write).",
    labelNames: ["store", "direction"],
    registers: [this.registry],
  });
  readonly inspectorFindings = new Counter({
    name: "itx_inspector_findings_total",
    help: "Findings that made the inspector refuse an upload or a converted image, by finding code (e.g. QCOW2_BACKING_FILE, POLYGLOT).",
    labelNames: ["code"],
    registers: [this.registry],
  });
  readonly storeErrors = new Counter({
    name: "itx_store_errors_total",
    help: "Failed store calls, after retries, by store and error kind.",
    labelNames: ["store", "kind"],
    registers: [this.registry],
  });

  constructor() {
    collectDefaultMetrics({ register: this.registry, prefix: "itx_" });
  }

  /** Makes each scrape count the database's tasks (one grouped query); an unreachable database leaves the gauge as it was. */
  countTasksIn(repository: Pick<Repository, "countTasksByTypeAndState">): void {
    const gauge = this.tasks;
    Object.assign(gauge, {
      async collect() {
        const counts = await repository.countTasksByTypeAndState().catch(() => undefined);
        if (!counts) return;
        const counted = new Map(counts.map(({ type, state, count }) => [`${type}/${state}`, count]));
        // Every combination is set, so one whose last task moved on reads 0, not its old count.
        for (const type of taskTypes) for (const state of taskStates) gauge.set({ type, state }, counted.get(`${type}/${state}`) ?? 0);
      },
    });
  }
}

/** Serves /metrics on its own address, off the public listener. */
export async function serveMetrics(metrics: Metrics, address: string): Promise<{ url: string; close(): Promise<void> }> {
  const server = http.createServer((req, res) => {
    if (req.url !== "/metrics") {
      res.writeHead(404).end("not found\n");
      return;
    }
    metrics.registry.metrics().then(
      (text) => res.writeHead(200, { "Content-Type": metrics.registry.contentType }).end(text),
      () => res.writeHead(500).end("metrics unavailable\n"),
    );
  });
  const at = address.lastIndexOf(":");
  const host = address.slice(0, at).replace(/^\[|\]$/g, "");
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(Number(address.slice(at + 1)), host, resolve);
  });
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://${host.includes(":") ? `[${host}]` : host}:${port}/metrics`,
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}
