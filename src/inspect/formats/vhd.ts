/**
 * VHD, from Microsoft's Virtual Hard Disk Image Format Specification. Every VHD ends with a
 * 512-byte footer (big-endian): cookie "conectix" at 0, features at 8, version at 12, data
 * offset u64 at 16 (all ones for fixed disks, else the dynamic header's offset), original
 * size u64 at 40, current size u64 at 48, disk type u32 at 60 (2 fixed, 3 dynamic,
 * 4 differencing), checksum u32 at 64: the one's complement of the byte sum with the
 * checksum field taken as zero. Dynamic and differencing disks keep a copy of the footer at 0
 * and a 1024-byte dynamic header ("cxsparse") at the data offset: table offset u64 at 16,
 * header version at 24, max table entries u32 at 28, block size u32 at 32, checksum u32 at 36,
 * parent name and locators from 64 (used by differencing disks only).
 */
import { finding, type Finding } from "../findings.js";
import { hasMagic, safe, u32, u64, type Bytes } from "../bytes.js";
import type { Detection, Detector, EndView, HeadView, Region } from "../types.js";

const FOOTER = 512;
const DYNAMIC_HEADER = 1024;
const FIXED = 2;
const DYNAMIC = 3;
const DIFFERENCING = 4;
/** Block sizes qemu and Hyper-V write are 512 KiB to 2 MiB; the spec allows any power of two from 512 B; 256 MiB bounds it. */
const MAX_BLOCK_BYTES = 256 * 1024 * 1024;
/** Block allocation table entries are 4 bytes; 32 MiB of table is what qemu allows. */
const MAX_TABLE_ENTRIES = (32 * 1024 * 1024) / 4;

export function vhdDetector(): Detector {
  let dynamicHeader: Region | undefined;
  return {
    format: "vhd",
    onHead({ head, request }: HeadView) {
      if (!hasMagic(head, 0, "conectix")) return;
      const offset = safe(u64(head, 16, false));
      if (offset !== undefined && offset >= FOOTER) dynamicHeader = request(offset, DYNAMIC_HEADER);
    },
    finish({ head, tail, size }: EndView): Detection | undefined {
      const footerAt = tail.length - FOOTER;
      const atEnd = footerAt >= 0 && hasMagic(tail, footerAt, "conectix") ? tail.subarray(footerAt) : undefined;
      const atStart = hasMagic(head, 0, "conectix") && head.length >= FOOTER ? head.subarray(0, FOOTER) : undefined;
      if (!atEnd && !hasMagic(head, 0, "conectix")) return undefined;
      const findings: Finding[] = [];
      if (!atEnd) {
        findings.push(finding("VHD_FOOTER_MISSING", "the vhd has a footer copy at its start but no footer (cookie \"conectix\") in its last 512 bytes"));
      }
      const footer = atEnd ?? atStart;
      if (!footer) return { findings: [finding("TRUNCATED", `the vhd footer is cut short: the image is ${size} bytes`)] };
      for (const [name, copy] of [["footer", atEnd], ["footer copy at the start", atStart]] as const) {
        if (copy && !checksumOk(copy, 64, FOOTER)) findings.push(finding("VHD_CHECKSUM", `the vhd ${name} has a wrong checksum`));
      }
      if (atEnd && atStart && !sameFooter(atEnd, atStart)) {
        findings.push(finding("VHD_FOOTER_MISMATCH", "the vhd footer and its copy at the start disagree"));
      }
      const type = u32(footer, 60, false)!;
      const currentSize = u64(footer, 48, false)!;
      const virtualSize = safe(currentSize);
      if (virtualSize === undefined) findings.push(finding("VHD_HEADER_INVALID", `the vhd footer's current size ${currentSize} is out of range`));
      if (type === DIFFERENCING) {
        findings.push(finding("VHD_DIFFERENCING", "the vhd is a differencing disk: it names a parent disk, which a converter would read from the host"));
      } else if (type === DYNAMIC) {
        if (!atStart) findings.push(finding("VHD_HEADER_INVALID", "the dynamic vhd has no footer copy at its start"));
        else if (dynamicHeader?.bytes) findings.push(...dynamicFindings(dynamicHeader.bytes, currentSize));
        else findings.push(dynamicHeader?.missing("the vhd dynamic disk header") ?? finding("VHD_HEADER_INVALID", "the dynamic vhd's data offset does not point past its footer copy"));
      } else if (type !== FIXED) {
        findings.push(finding("VHD_HEADER_INVALID", `the vhd disk type ${type} is not fixed (2), dynamic (3) or differencing (4)`));
      } else if (virtualSize !== undefined && size < virtualSize + FOOTER) {
        findings.push(finding("TRUNCATED", `the fixed vhd says ${virtualSize} bytes of data but the image is ${size} bytes`));
      }
      return { virtualSize, findings, rawData: type === FIXED && !atStart };
    },
  };
}

function dynamicFindings(header: Bytes, currentSize: bigint): Finding[] {
  const bad = (what: string) => finding("VHD_HEADER_INVALID", `the vhd dynamic disk header's ${what}`);
  if (!hasMagic(header, 0, "cxsparse")) return [bad('cookie is not "cxsparse"')];
  if (!checksumOk(header, 36, DYNAMIC_HEADER)) return [finding("VHD_CHECKSUM", "the vhd dynamic disk header has a wrong checksum")];
  const findings: Finding[] = [];
  const entries = u32(header, 28, false)!;
  const blockSize = u32(header, 32, false)!;
  if (blockSize < 512 || blockSize > MAX_BLOCK_BYTES || (blockSize & (blockSize - 1)) !== 0) findings.push(bad(`block size ${blockSize} is not a power of two from 512 B to 256 MiB`));
  if (entries > MAX_TABLE_ENTRIES) findings.push(bad(`block table of ${entries} entries exceeds ${MAX_TABLE_ENTRIES}`));
  else if (BigInt(entries) * BigInt(blockSize) < currentSize) findings.push(bad(`block table of ${entries} blocks of ${blockSize} bytes cannot hold a disk of ${currentSize} bytes`));
  return findings;
}

/** The one's complement of the byte sum, the checksum field counted as zero. */
function checksumOk(bytes: Bytes, at: number, length: number): boolean {
  let sum = 0;
  for (let i = 0; i < length; i++) if (i < at || i >= at + 4) sum += bytes[i]!;
  return (~sum >>> 0) === u32(bytes, at, false);
}

function sameFooter(a: Bytes, b: Bytes): boolean {
  for (let i = 0; i < FOOTER; i++) if (a[i] !== b[i]) return false;
  return true;
}
