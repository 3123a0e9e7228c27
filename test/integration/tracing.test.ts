/**
 * OpenTelemetry tracing through a real OTLP/HTTP exchange: a stock grpc-js client sends
 * `traceparent` metadata with ImportImage; the server's spans for the RPC, the import task,
 * its pipeline stages and its store calls reach a collector (a plain HTTP server here) in the
 * caller's trace, each under the right parent.
 */
import { randomBytes, randomUUID } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildSourceRaw } from "../helpers/disk-images.js";
import { createGrpcJsClients } from "../helpers/grpc-js-client.js";
import { startTestService, type TestService } from "../helpers/service.js";
import { uploadFile, watchToEnd } from "../helpers/transfer.js";

interface OtlpSpan {
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  name: string;
  kind: number;
  attributes: Array<{ key: string; value: Record<string, unknown> }>;
  status?: { code?: number };
}

let collector: Server;
let collectorUrl: string;
const spans: OtlpSpan[] = [];
let work: string;

beforeAll(async () => {
  collector = createServer((req, res) => {
    let body = "";
    req.setEncoding("utf8");
    req.on("data", (d: string) => (body += d));
    req.on("end", () => {
      if (req.url === "/v1/traces" && req.headers["content-type"]?.startsWith("application/json")) {
        const payload = JSON.parse(body) as { resourceSpans: Array<{ scopeSpans: Array<{ spans: OtlpSpan[] }> }> };
        for (const r of payload.resourceSpans) for (const s of r.scopeSpans) spans.push(...s.spans);
        res.writeHead(200, { "content-type": "application/json" }).end("{}");
      } else {
        res.writeHead(400).end();
      }
    });
  });
  await new Promise<void>((resolve) => collector.listen(0, "127.0.0.1", resolve));
  collectorUrl = `http://127.0.0.1:${(collector.address() as AddressInfo).port}/v1/traces`;
  work = await mkdtemp(join(tmpdir(), "itx-tracing-"));
});

afterAll(async () => {
  await new Promise((resolve) => collector.close(resolve));
  await rm(work, { recursive: true, force: true });
});

const attribute = (span: OtlpSpan, key: string) => Object.values(span.attributes.find((a) => a.key === key)?.value ?? {})[0];

describe("tracing", () => {
  it("puts the RPC, its task, the task's stages and store calls into the caller's trace", async () => {
    const service: TestService = await startTestService({ otlpEndpoint: collectorUrl });
    const traceId = randomBytes(16).toString("hex");
    const callerSpanId = randomBytes(8).toString("hex");
    let taskId = "";
    try {
      const seedUri = await uploadFile(service.url, await buildSourceRaw(join(work, "disk.raw"), 4 * 1024 * 1024));
      const clients = createGrpcJsClients(new URL(service.url).host);
      const metadata = new grpc.Metadata();
      metadata.set("traceparent", `00-${traceId}-${callerSpanId}-01`);
      const response = await new Promise<{ task: { id: string } }>((resolve, reject) =>
        (clients.transfer as unknown as Record<string, Function>).importImage({ seedUri, diskFormat: "DISK_FORMAT_RAW" }, metadata, (err: Error | null, r: { task: { id: string } }) =>
          err ? reject(err) : resolve(r),
        ),
      );
      clients.close();
      taskId = response.task.id;
      expect((await watchToEnd(service.url, taskId)).error).toBeUndefined();
    } finally {
      // Stopping flushes the spans still buffered.
      await service.stop();
    }

    const inTrace = spans.filter((s) => s.traceId === traceId);
    const rpc = inTrace.find((s) => s.name === "imagetransfer.v1.TransferService/ImportImage");
    expect(rpc, `spans in the trace: ${inTrace.map((s) => s.name).join(", ")}`).toBeDefined();
    expect(rpc!.parentSpanId).toBe(callerSpanId);
    expect(rpc!.kind).toBe(2); // SERVER
    expect(attribute(rpc!, "rpc.grpc.status_code")).toBe(0);

    const task = inTrace.find((s) => s.name === "task import");
    expect(task?.parentSpanId).toBe(rpc!.spanId);
    expect(attribute(task!, "task.id")).toBe(taskId);

    const stages = inTrace.filter((s) => s.parentSpanId === task!.spanId && attribute(s, "task.stage") !== undefined).map((s) => s.name);
    expect(stages).toEqual(expect.arrayContaining(["fetching", "inspecting", "storing"]));

    const storeCalls = inTrace.filter((s) => s.name.startsWith("store.") && s.kind === 3); // CLIENT
    // The staged upload comes into the work dir as a hard link (linkFile), not by a read, and the
    // converted image goes into the filesystem store by rename (adoptFile), not by a write.
    expect(storeCalls.map((s) => s.name)).toEqual(expect.arrayContaining(["store.stat", "store.linkFile", "store.adoptFile"]));
    expect(storeCalls.every((s) => attribute(s, "store.name") === "local")).toBe(true);
  });

  it("marks a failed RPC's span with its gRPC status", async () => {
    const service = await startTestService({ otlpEndpoint: collectorUrl });
    const traceId = randomBytes(16).toString("hex");
    try {
      const clients = createGrpcJsClients(new URL(service.url).host);
      const metadata = new grpc.Metadata();
      metadata.set("traceparent", `00-${traceId}-${randomBytes(8).toString("hex")}-01`);
      const code = await new Promise<number>((resolve) =>
        (clients.image as unknown as Record<string, Function>).getImage({ id: randomUUID() }, metadata, (err: grpc.ServiceError | null) => resolve(err?.code ?? 0)),
      );
      clients.close();
      expect(code).toBe(grpc.status.NOT_FOUND);
    } finally {
      await service.stop();
    }
    const rpc = spans.find((s) => s.traceId === traceId && s.name === "imagetransfer.v1.ImageService/GetImage");
    expect(attribute(rpc!, "rpc.grpc.status_code")).toBe(grpc.status.NOT_FOUND);
    expect(rpc!.status?.code).toBe(2); // ERROR
  });
});
