/**
 * The import policy on an inspection report: which findings, formats and sizes fail an
 * import, with the task error's reason code and a message that names what was found.
 */
import { isUnsafe, type Finding } from "./findings.js";
import type { InspectionReport } from "./inspector.js";
import type { InspectedFormat } from "./types.js";

/** Why an image is refused: `reason` becomes the task error's reason code. */
export interface Refusal {
  reason: "UNSAFE_IMAGE" | "INVALID_IMAGE" | "FORMAT_MISMATCH" | "VIRTUAL_SIZE_TOO_LARGE" | "CONVERTED_IMAGE_UNSAFE";
  message: string;
}

/** Detected formats each declared disk_format accepts: a raw disk may carry a partition table. */
const ACCEPTS: Record<string, readonly InspectedFormat[]> = {
  raw: ["raw", "gpt", "mbr"],
  iso: ["iso"],
  qcow2: ["qcow2"],
  vmdk: ["vmdk"],
  vhd: ["vhd"],
  vhdx: ["vhdx"],
  vdi: ["vdi"],
};

/**
 * What an uploaded image must pass before any converter or store sees it. With
 * `allowEncrypted` (every destination store allows encrypted images) qcow2 encryption alone
 * is no reason to refuse; any other finding still is. LUKS stays refused: there is no luks
 * disk_format to store it as.
 */
export function assessUpload(report: InspectionReport, options: { declared?: string; maxVirtualBytes: number; allowEncrypted?: boolean }): Refusal | undefined {
  const findings = options.allowEncrypted ? report.findings.filter((f) => f.code !== "QCOW2_ENCRYPTED") : report.findings;
  if (findings.length > 0) return refusal(findings);
  const { declared } = options;
  if (declared !== undefined && !(ACCEPTS[declared] ?? []).includes(report.format)) {
    return { reason: "FORMAT_MISMATCH", message: `the image was declared ${declared} but its data is ${report.format}` };
  }
  const virtualSize = report.virtualSize ?? report.size;
  if (virtualSize > options.maxVirtualBytes) {
    return { reason: "VIRTUAL_SIZE_TOO_LARGE", message: `the disk's virtual size ${virtualSize} exceeds the limit of ${options.maxVirtualBytes}` };
  }
  return undefined;
}

/**
 * The backstop after conversion (import to the runtime format, export to the requested one):
 * the output must be exactly `format`, with nothing found. A raw output is the guest's disk,
 * which may itself carry a partition table or an ISO 9660 volume.
 */
export function assessConverted(report: InspectionReport, format: string): Refusal | undefined {
  const accepted: readonly InspectedFormat[] = format === "raw" ? ["raw", "gpt", "mbr", "iso"] : (ACCEPTS[format] ?? []);
  const problems = [
    ...(accepted.includes(report.format) ? [] : [`its data is ${report.format}`]),
    ...report.findings.map(describe),
  ];
  if (problems.length === 0) return undefined;
  return { reason: "CONVERTED_IMAGE_UNSAFE", message: `the image converted to ${format} failed inspection: ${problems.join("; ")}` };
}

function refusal(findings: Finding[]): Refusal {
  const unsafe = findings.some(isUnsafe);
  // Unsafe findings first: they are what a reviewer must see.
  const ordered = [...findings.filter(isUnsafe), ...findings.filter((f) => !isUnsafe(f))];
  return { reason: unsafe ? "UNSAFE_IMAGE" : "INVALID_IMAGE", message: `the image was refused: ${ordered.map(describe).join("; ")}` };
}

/** The image's contents are encrypted: no converter can read them without the key. */
export const isEncrypted = (report: InspectionReport) => report.findings.some((f) => f.code === "QCOW2_ENCRYPTED");

const describe = (f: Finding) => `${f.message} (${f.code})`;
