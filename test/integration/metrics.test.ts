import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import parsePrometheusTextFormat from "parse-prometheus-text-format";
import { afterAll, beforeAll, expect, it } from "vitest";
import { DiskFormat, ImageService } from "../../src/gen/imagetransfer/v1/image_pb.js";
import { TaskState } from "../../src/gen/imagetransfer/v1/task_pb.js";
import { buildImage, buildSourceRaw, MiB, qemuImg } from "../helpers/disk-images.js";
import { startTestService, type TestService } from "../helpers/service.js";
import { importFile } from "../helpers/transfer.js";

let dir: string;
let service: TestService;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "itx-metrics-"));
  service = await startTestService({ metricsListen: "127.0.0.1:0" });
});
afterAll(async () => {
  await service?.stop();
  await rm(dir, { recursive: true, force: true });
});

type Scrape = { families: ReturnType<typeof parsePrometheusTextFormat>; text: string };

async function scrape(): Promise<Scrape> {
  const res = await fetch(service.metricsUrl!);
  expect(res.status).toBe(200);
  expect(res.headers.get("content-type")).toMatch(/^text\/plain/);
  const text = await res.text();
  // The whole exposition parses as Prometheus text format.
  return { families: parsePrometheusTextFormat(text), text };
}

/**
 * The sum of a counter's or gauge's samples whose labels include `labels`; for a
 * histogram, of its _count samples (read from the text: the parser drops histogram labels).
 */
function total({ families, text }: Scrape, name: string, labels: Record<string, string> = {}): number {
  const family = families.find((f) => f.name === name);
  const matches = (found: Record<string, string>) => Object.entries(labels).every(([k, v]) => found[k] === v);
  if (family?.type === "HISTOGRAM") {
    return [...text.matchAll(new RegExp(`^${name}_count(?:\\{(.*)\\})? (\\S+)$`, "gm"))]
      .filter(([, raw]) => matches(Object.fromEntries([...(raw ?? "").matchAll(/(\w+)="([^"]*)"/g)].map(([, k, v]) => [k!, v!]))))
      .reduce((sum, [, , value]) => sum + Number(value), 0);
  }
  return (family?.metrics ?? []).filter((m) => matches(m.labels ?? {})).reduce((sum, m) => sum + Number(m.value ?? 0), 0);
}

it("serves Prometheus text on its own listener whose counters move as an import runs", async () => {
  expect(new URL(service.metricsUrl!).port).not.toBe(new URL(service.url).port);
  const before = await scrape();
  // Process metrics are there from the start; names follow Prometheus conventions (units, _total).
  expect(before.families.map((f) => f.name)).toEqual(expect.arrayContaining(["itx_process_resident_memory_bytes", "itx_rpc_requests_total"]));

  const qcow2 = await buildImage(await buildSourceRaw(join(dir, "disk.raw"), 8 * MiB), "qcow2", join(dir, "disk.qcow2"));
  const task = await importFile(service.url, qcow2, DiskFormat.QCOW2);
  expect(task.state).toBe(TaskState.SUCCEEDED);
  await createClient(ImageService, createGrpcTransport({ baseUrl: service.url })).getImage({ id: "not-a-uuid" }).catch(() => undefined);

  const after = await scrape();
  expect(total(after, "itx_tasks_finished_total", { type: "import", outcome: "succeeded" })).toBe(1);
  expect(total(after, "itx_task_duration_seconds", { type: "import", outcome: "succeeded" })).toBe(1);
  for (const stage of ["fetching", "inspecting", "converting", "storing"]) {
    expect(total(after, "itx_pipeline_stage_duration_seconds", { stage }), stage).toBe(1);
  }
  // The upload was written once and read once; the raw image was written once.
  expect(total(after, "itx_store_bytes_total", { store: "local", direction: "write" })).toBeGreaterThanOrEqual(8 * MiB);
  expect(total(after, "itx_store_bytes_total", { store: "local", direction: "read" })).toBeGreaterThan(0);
  expect(total(after, "itx_rpc_requests_total", { method: "imagetransfer.v1.TransferService/ImportImage", code: "OK" })).toBe(1);
  expect(total(after, "itx_rpc_requests_total", { method: "imagetransfer.v1.ImageService/GetImage", code: "InvalidArgument" })).toBe(1);
  expect(total(after, "itx_tasks_running")).toBe(0);
  // Tasks by type and state, as the database holds them.
  expect(total(after, "itx_tasks", { type: "import", state: "succeeded" })).toBe(1);
  expect(total(after, "itx_tasks", { state: "running" })).toBe(0);
  // No label carries an id: every label value is short and from a bounded set.
  const uuid = /[0-9a-f]{8}-[0-9a-f]{4}-/;
  for (const family of after.families) for (const sample of family.metrics) for (const value of Object.values(sample.labels ?? {})) expect(value).not.toMatch(uuid);
});

it("counts the inspector's refusals by finding code", async () => {
  const base = await buildImage(await buildSourceRaw(join(dir, "base.raw"), 1 * MiB), "qcow2", join(dir, "base.qcow2"));
  const overlay = join(dir, "overlay.qcow2");
  await qemuImg(["create", "-f", "qcow2", "-b", base, "-F", "qcow2", overlay]);
  const before = total(await scrape(), "itx_inspector_findings_total", { code: "QCOW2_BACKING_FILE" });
  const task = await importFile(service.url, overlay, DiskFormat.QCOW2);
  expect(task.error?.reason).toBe("UNSAFE_IMAGE");
  expect(total(await scrape(), "itx_inspector_findings_total", { code: "QCOW2_BACKING_FILE" })).toBe(before + 1);
});
