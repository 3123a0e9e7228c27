import { open } from "node:fs/promises";
import { assessConverted, assessUpload, ImageInspector, type InspectionReport } from "../../inspect/index.js";
import type { Metrics } from "../../metrics.js";
import type { DiskFormat } from "../image.js";
import { taskFailure } from "./failure.js";
import { CHUNK_BYTES } from "./streams.js";

/**
 * Inspects a local file, reading only what the inspector asks for (head, regions, tail):
 * a converted image of many gigabytes costs a few reads, not another full pass.
 */
export async function inspectFile(path: string, signal: AbortSignal): Promise<InspectionReport> {
  const inspector = new ImageInspector();
  const file = await open(path, "r");
  try {
    const { size } = await file.stat();
    const buffer = Buffer.alloc(CHUNK_BYTES);
    let position = 0;
    while (position < size) {
      signal.throwIfAborted();
      const next = inspector.nextWanted(size);
      if (next > position) inspector.skipTo(next);
      position = next;
      const { bytesRead } = await file.read(buffer, 0, Math.min(CHUNK_BYTES, size - position), position);
      if (bytesRead === 0) break;
      inspector.write(buffer.subarray(0, bytesRead));
      position += bytesRead;
    }
    return inspector.finish();
  } finally {
    await file.close();
  }
}

/** Fails the task when the uploaded image must not go further (before any converter sees it). */
export function refuseUpload(
  report: InspectionReport,
  options: { declared?: DiskFormat; maxVirtualBytes: number; allowEncrypted: boolean },
  metrics: Metrics,
): void {
  const refusal = assessUpload(report, options);
  if (refusal) throw refused(report, refusal, metrics);
}

/** The backstop: a converted image must be exactly `format`, with nothing found. */
export async function refuseConverted(path: string, format: DiskFormat, signal: AbortSignal, metrics: Metrics): Promise<void> {
  const report = await inspectFile(path, signal);
  const refusal = assessConverted(report, format);
  if (refusal) throw refused(report, refusal, metrics);
}

function refused(report: InspectionReport, refusal: { reason: string; message: string }, metrics: Metrics) {
  for (const code of new Set(report.findings.map((f) => f.code))) metrics.inspectorFindings.inc({ code });
  return taskFailure(refusal.reason, refusal.message);
}

/** The format a converter reads an inspected image as: a partitioned raw disk is raw. */
export function sourceFormat(report: InspectionReport): DiskFormat {
  return report.format === "gpt" || report.format === "mbr" ? "raw" : (report.format as DiskFormat);
}
