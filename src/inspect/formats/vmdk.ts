/**
 * VMDK, from VMware's Virtual Disk Format 1.1 specification. Two shapes reach us:
 *
 * - A sparse extent with the descriptor embedded: "KDMV" at 0, then little-endian
 *   version u32 (1..3) at 4, flags u32 at 8, capacity u64 (sectors) at 12, grainSize u64 at 20,
 *   descriptorOffset u64 at 28 and descriptorSize u64 at 36 (sectors), numGTEsPerGT u32 at 44,
 *   rgdOffset u64 at 48, gdOffset u64 at 56 (GD_AT_END, all ones, in streamOptimized files whose
 *   footer, a copy of the header, sits 1024 bytes before the end), overHead u64 at 64.
 * - A bare text descriptor ("# Disk DescriptorFile"), whose extents are other files.
 *
 * Only a single self-contained sparse file is accepted: createType monolithicSparse or
 * streamOptimized, one SPARSE extent, no parent. Any extent of another kind (FLAT, VMFS,
 * ZERO, ...) or any parentFileNameHint makes a converter open a file the descriptor names.
 */
import { finding, type Finding } from "../findings.js";
import { hasMagic, latin1, printable, safe, u32, u64, type Bytes } from "../bytes.js";
import type { Detection, Detector, EndView, HeadView, Region } from "../types.js";

const SECTOR = 512;
/** The largest descriptor read, embedded or bare: qemu's own limit is lower for embedded ones. */
export const MAX_DESCRIPTOR_BYTES = 1024 * 1024;
const GD_AT_END = 0xffffffffffffffffn;
const ALLOWED_CREATE_TYPES = new Set(["monolithicSparse", "streamOptimized"]);
const EXTENT_LINE = /^(RW|RDONLY|NOACCESS)\s+(\d+)\s+(\w+)(?:\s+"([^"]*)")?(?:\s+(\d+))?\s*$/;

export function vmdkDetector(): Detector {
  let descriptor: Region | undefined;
  let descriptorTooLarge: number | undefined;
  return {
    format: "vmdk",
    onHead({ head, request }: HeadView) {
      if (hasMagic(head, 0, "KDMV")) {
        const offset = safe(u64(head, 28, true));
        const sectors = safe(u64(head, 36, true));
        if (offset === undefined || sectors === undefined || sectors === 0) return;
        if (sectors * SECTOR > MAX_DESCRIPTOR_BYTES) descriptorTooLarge = sectors * SECTOR;
        else if (offset > 0) descriptor = request(offset * SECTOR, sectors * SECTOR);
      } else if (hasMagic(head, 0, "# Disk DescriptorFile")) {
        descriptor = request(0, MAX_DESCRIPTOR_BYTES, { clipToEnd: true });
      }
    },
    finish(end: EndView): Detection | undefined {
      if (hasMagic(end.head, 0, "KDMV")) return sparse(end, descriptor, descriptorTooLarge);
      if (hasMagic(end.head, 0, "# Disk DescriptorFile")) return bare(end, descriptor);
      return undefined;
    },
  };
}

function sparse({ head, tail, size }: EndView, descriptor: Region | undefined, tooLarge: number | undefined): Detection {
  const findings: Finding[] = [];
  const bad = (what: string) => findings.push(finding("VMDK_HEADER_INVALID", `the vmdk header's ${what}`));
  if (head.length < 77) return { findings: [finding("TRUNCATED", `the vmdk header is cut short: the image is ${size} bytes`)] };
  const version = u32(head, 4, true)!;
  const capacity = u64(head, 12, true)!;
  const grainSize = u64(head, 20, true)!;
  const descriptorOffset = u64(head, 28, true)!;
  const descriptorSize = u64(head, 36, true)!;
  const gtes = u32(head, 44, true)!;
  const gdOffset = u64(head, 56, true)!;
  if (version < 1 || version > 3) bad(`version ${version} is not 1, 2 or 3`);
  if (grainSize < 8n || grainSize > 2048n || (grainSize & (grainSize - 1n)) !== 0n) bad(`grain size ${grainSize} sectors is not a power of two from 8 to 2048`);
  if (gtes !== 512) bad(`grain table size ${gtes} is not 512 entries`);
  const virtualSize = safe(capacity * BigInt(SECTOR));
  if (virtualSize === undefined) bad(`capacity ${capacity} sectors is out of range`);

  if (gdOffset === GD_AT_END) {
    // streamOptimized: the footer copy of the header holds the real grain directory offset.
    const footerAt = tail.length - 1024;
    if (footerAt < 0 || !hasMagic(tail, footerAt, "KDMV")) {
      findings.push(finding("VMDK_FOOTER_MISMATCH", "the vmdk header says its footer holds the grain directory, but there is no footer 1024 bytes before the end"));
    } else {
      const differs = [
        ["capacity", 12],
        ["grain size", 20],
        ["descriptor offset", 28],
        ["descriptor size", 36],
      ].filter(([, at]) => u64(tail, footerAt + (at as number), true) !== u64(head, at as number, true));
      if (differs.length > 0) findings.push(finding("VMDK_FOOTER_MISMATCH", `the vmdk footer disagrees with the header on ${differs.map(([name]) => name).join(", ")}`));
    }
  }

  if (tooLarge !== undefined) {
    findings.push(finding("VMDK_DESCRIPTOR_TOO_LARGE", `the vmdk descriptor is ${tooLarge} bytes; the limit is ${MAX_DESCRIPTOR_BYTES}`));
  } else if (descriptorOffset === 0n || descriptorSize === 0n) {
    // No embedded descriptor: a sparse extent that is only data (qemu reads it as monolithicSparse).
  } else if (descriptor?.bytes) {
    const parsed = parseDescriptor(descriptor.bytes);
    findings.push(...parsed.findings);
    const extents = parsed.extents;
    if (extents.length !== 1 || extents[0]!.type !== "SPARSE") {
      findings.push(finding("VMDK_DESCRIPTOR_INVALID", `the embedded vmdk descriptor lists ${extents.length} extents; a single-file vmdk has exactly one SPARSE extent`));
    } else if (extents[0]!.sectors !== safe(capacity)) {
      findings.push(finding("VMDK_DESCRIPTOR_INVALID", `the vmdk descriptor's extent is ${extents[0]!.sectors} sectors but the header's capacity is ${capacity}`));
    }
  } else if (descriptor) {
    findings.push(descriptor.missing("the vmdk descriptor"));
  }
  return { virtualSize, findings };
}

function bare({ size }: EndView, descriptor: Region | undefined): Detection {
  if (size > MAX_DESCRIPTOR_BYTES) {
    return { findings: [finding("VMDK_DESCRIPTOR_TOO_LARGE", `the vmdk descriptor file is ${size} bytes; the limit is ${MAX_DESCRIPTOR_BYTES}`)] };
  }
  const bytes = descriptor?.bytes;
  if (!bytes) return { findings: [descriptor?.missing("the vmdk descriptor") ?? finding("TRUNCATED", "the vmdk descriptor could not be read")] };
  const parsed = parseDescriptor(bytes);
  const sectors = parsed.extents.reduce((sum, e) => sum + e.sectors, 0);
  return { virtualSize: parsed.extents.length > 0 ? sectors * SECTOR : undefined, findings: parsed.findings };
}

interface Extent {
  sectors: number;
  type: string;
  file?: string;
}

/**
 * Reads a descriptor's text: its createType, its extents, and any parent link; refuses every
 * createType but the single-file sparse ones and every extent that names a file of its own.
 */
function parseDescriptor(bytes: Bytes): { extents: Extent[]; findings: Finding[] } {
  const findings: Finding[] = [];
  const nul = bytes.indexOf(0);
  const body = bytes.subarray(0, nul < 0 ? bytes.length : nul);
  // The text ends at the first NUL, as qemu reads it; what follows is ignored. (qemu-img itself
  // leaves stale bytes there when it rewrites a descriptor with a shorter CID.)
  const text = latin1(body);
  if (/[^\t\n\r\x20-\x7e]/.test(text)) findings.push(finding("VMDK_DESCRIPTOR_INVALID", "the vmdk descriptor holds bytes that are not text"));
  const extents: Extent[] = [];
  let createType: string | undefined;
  for (const raw of text.split(/\r?\n/)) {
    const line = raw.trim();
    if (line === "" || line.startsWith("#")) continue;
    const extent = EXTENT_LINE.exec(line);
    if (extent) {
      const [, , sectors, type, file] = extent;
      extents.push({ sectors: Number(sectors), type: type!.toUpperCase(), file });
      continue;
    }
    const setting = /^([A-Za-z][\w.]*)\s*=\s*"?([^"]*)"?$/.exec(line);
    if (!setting) {
      findings.push(finding("VMDK_DESCRIPTOR_INVALID", `the vmdk descriptor has a line that is neither a setting nor an extent: "${printable(line)}"`));
      continue;
    }
    const [, key, value] = setting;
    if (key === "createType") createType = value;
    if (key === "parentFileNameHint") findings.push(finding("VMDK_PARENT", `the vmdk image names a parent disk "${printable(value!)}", which a converter would read from the host`));
  }
  if (createType === undefined) findings.push(finding("VMDK_DESCRIPTOR_INVALID", "the vmdk descriptor has no createType"));
  else if (!ALLOWED_CREATE_TYPES.has(createType)) {
    findings.push(finding("VMDK_CREATE_TYPE", `the vmdk createType "${printable(createType)}" is not monolithicSparse or streamOptimized`));
  }
  for (const extent of extents) {
    if (extent.type !== "SPARSE") {
      findings.push(finding("VMDK_EXTENT_FILE", `the vmdk has a ${extent.type} extent${extent.file === undefined ? "" : ` naming the file "${printable(extent.file)}"`}, which a converter would read from the host`));
    }
    if (!Number.isSafeInteger(extent.sectors)) findings.push(finding("VMDK_DESCRIPTOR_INVALID", "a vmdk extent's size is out of range"));
  }
  return { extents, findings };
}
