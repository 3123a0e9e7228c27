/**
 * VHDX, from Microsoft's [MS-VHDX] specification. Little-endian throughout:
 *
 * - 0: file type identifier "vhdxfile" (64 KiB).
 * - 64 KiB and 128 KiB: two headers, "head", CRC-32C at 4 over 4 KiB (the field as zero),
 *   sequence number u64 at 8, version u16 at 66 (1); the valid one with the higher sequence wins.
 * - 192 KiB and 256 KiB: two identical region tables, "regi", CRC-32C at 4 over 64 KiB, entry
 *   count u32 at 8 (at most 2047), entries of 32 bytes from 16: GUID, file offset u64,
 *   length u32, flags u32 (bit 0: required).
 * - The metadata region (GUID 8B7CA206-...): a table "metadata", entry count u16 at 10 (at most
 *   2047), entries of 32 bytes from 32: item GUID, offset u32 (from the region's start, at least
 *   64 KiB), length u32, flags u32 (bit 2: required). Items used here: file parameters
 *   (block size u32, flags u32 with bit 1 "has parent"), virtual disk size u64, and the parent
 *   locator, which only differencing disks have.
 */
import { finding, type Finding } from "../findings.js";
import { crc32c, guid, hasMagic, safe, u16, u32, u64, withZeroed, type Bytes } from "../bytes.js";
import type { Detection, Detector, EndView, HeadView, Region } from "../types.js";

const KiB = 1024;
const MiB = 1024 * KiB;
const HEADERS = [64 * KiB, 128 * KiB];
const REGION_TABLES = [192 * KiB, 256 * KiB];
const TABLE_BYTES = 64 * KiB;
const MAX_ENTRIES = 2047;
/** The metadata region read; qemu and Hyper-V write 1 MiB, the spec allows more, 2 MiB bounds it. */
export const MAX_METADATA_BYTES = 2 * MiB;
/** Block sizes the spec allows: powers of two from 1 MiB to 256 MiB. */
const MAX_BLOCK_BYTES = 256 * MiB;
/** The spec's largest virtual disk: 64 TiB. */
const MAX_VIRTUAL_BYTES = 64n * 1024n ** 4n;

const REGION_BAT = "2DC27766-F623-4200-9D64-115E9BFD4A08";
const REGION_METADATA = "8B7CA206-4790-4B9A-B8FE-575F050F886E";
const ITEM_FILE_PARAMETERS = "CAA16737-FA36-4D43-B3B6-33F0AA44E76B";
const ITEM_VIRTUAL_DISK_SIZE = "2FA54224-CD1B-4876-B211-5DBED83BF4B8";
const ITEM_PAGE83 = "BECA12AB-B2E6-4523-93EF-C309E000C746";
const ITEM_LOGICAL_SECTOR = "8141BF1D-A96F-4709-BA47-F233A8FAAB5F";
const ITEM_PHYSICAL_SECTOR = "CDA348C7-445D-4471-9CC9-E9885251C556";
const ITEM_PARENT_LOCATOR = "A8D35F2D-B30B-454D-ABF7-D3D84834AB0C";
const KNOWN_ITEMS = new Set([ITEM_FILE_PARAMETERS, ITEM_VIRTUAL_DISK_SIZE, ITEM_PAGE83, ITEM_LOGICAL_SECTOR, ITEM_PHYSICAL_SECTOR, ITEM_PARENT_LOCATOR]);

export function vhdxDetector(): Detector {
  let metadata: Region | undefined;
  let metadataProblem: Finding | undefined;
  return {
    format: "vhdx",
    onHead({ head, request }: HeadView) {
      if (!hasMagic(head, 0, "vhdxfile")) return;
      const table = validRegionTable(head);
      if (typeof table === "string") return;
      const entry = table.find((e) => e.guid === REGION_METADATA);
      if (!entry) return;
      if (entry.length > MAX_METADATA_BYTES) {
        metadataProblem = finding("VHDX_METADATA_INVALID", `the vhdx metadata region is ${entry.length} bytes; the limit is ${MAX_METADATA_BYTES}`);
      } else if (entry.offset < MiB || entry.offset % MiB !== 0) {
        metadataProblem = finding("VHDX_REGION_TABLE_INVALID", `the vhdx metadata region's offset ${entry.offset} is not a multiple of 1 MiB past the headers`);
      } else {
        metadata = request(entry.offset, entry.length);
      }
    },
    finish({ head, size }: EndView): Detection | undefined {
      if (!hasMagic(head, 0, "vhdxfile")) return undefined;
      if (head.length < REGION_TABLES[1]! + TABLE_BYTES) return { findings: [finding("TRUNCATED", `the vhdx headers are cut short: the image is ${size} bytes`)] };
      const findings: Finding[] = [];
      if (!HEADERS.some((at) => validHeader(head, at))) findings.push(finding("VHDX_HEADER_INVALID", 'neither vhdx header has the signature "head", a correct CRC-32C and version 1'));
      const table = validRegionTable(head);
      if (typeof table === "string") return { findings: [...findings, finding("VHDX_REGION_TABLE_INVALID", table)] };
      for (const entry of table) {
        if (entry.required && entry.guid !== REGION_BAT && entry.guid !== REGION_METADATA) {
          findings.push(finding("VHDX_REGION_TABLE_INVALID", `the vhdx region table requires an unknown region ${entry.guid}`));
        }
      }
      if (!table.some((e) => e.guid === REGION_BAT) || !table.some((e) => e.guid === REGION_METADATA)) {
        findings.push(finding("VHDX_REGION_TABLE_INVALID", "the vhdx region table lacks the block allocation table or the metadata region"));
      }
      if (metadataProblem) return { findings: [...findings, metadataProblem] };
      if (!metadata) return { findings };
      if (!metadata.bytes) return { findings: [...findings, metadata.missing("the vhdx metadata region")] };
      const parsed = readMetadata(metadata.bytes);
      return { virtualSize: parsed.virtualSize, findings: [...findings, ...parsed.findings] };
    },
  };
}

function validHeader(head: Bytes, at: number): boolean {
  return hasMagic(head, at, "head") && crc32c(withZeroed(head, at, 4 * KiB, 4, 4)) === u32(head, at + 4, true) && u16(head, at + 66, true) === 1;
}

interface RegionEntry {
  guid: string;
  offset: number;
  length: number;
  required: boolean;
}

/** The first region table with a good signature and CRC-32C, or why there is none. */
function validRegionTable(head: Bytes): RegionEntry[] | string {
  for (const at of REGION_TABLES) {
    if (!hasMagic(head, at, "regi") || crc32c(withZeroed(head, at, TABLE_BYTES, 4, 4)) !== u32(head, at + 4, true)) continue;
    const count = u32(head, at + 8, true)!;
    if (count > MAX_ENTRIES) return `the vhdx region table lists ${count} regions; the limit is ${MAX_ENTRIES}`;
    const entries: RegionEntry[] = [];
    for (let i = 0; i < count; i++) {
      const e = at + 16 + i * 32;
      const offset = safe(u64(head, e + 16, true));
      if (offset === undefined) return `the vhdx region ${i}'s offset is out of range`;
      entries.push({ guid: guid(head, e)!, offset, length: u32(head, e + 24, true)!, required: (u32(head, e + 28, true)! & 1) === 1 });
    }
    return entries;
  }
  return 'neither vhdx region table has the signature "regi" and a correct CRC-32C';
}

function readMetadata(region: Bytes): { virtualSize?: number; findings: Finding[] } {
  const bad = (what: string) => finding("VHDX_METADATA_INVALID", `the vhdx metadata ${what}`);
  if (!hasMagic(region, 0, "metadata")) return { findings: [bad('table lacks its signature "metadata"')] };
  const count = u16(region, 10, true)!;
  if (count > MAX_ENTRIES) return { findings: [bad(`table lists ${count} items; the limit is ${MAX_ENTRIES}`)] };
  const findings: Finding[] = [];
  const items = new Map<string, Bytes>();
  for (let i = 0; i < count; i++) {
    const e = 32 + i * 32;
    const id = guid(region, e)!;
    const offset = u32(region, e + 16, true)!;
    const length = u32(region, e + 20, true)!;
    const required = (u32(region, e + 24, true)! & 4) === 4;
    if (length > 0 && (offset < 64 * KiB || offset + length > region.length)) {
      findings.push(bad(`item ${id} lies outside the metadata region`));
      continue;
    }
    if (required && !KNOWN_ITEMS.has(id)) findings.push(bad(`requires an unknown item ${id}`));
    items.set(id, region.subarray(offset, offset + length));
  }
  if (items.has(ITEM_PARENT_LOCATOR)) findings.push(finding("VHDX_DIFFERENCING", "the vhdx has a parent locator: it is a differencing disk, whose parent a converter would read from the host"));
  const parameters = items.get(ITEM_FILE_PARAMETERS);
  const sizeItem = items.get(ITEM_VIRTUAL_DISK_SIZE);
  if (!parameters || parameters.length < 8 || !sizeItem || sizeItem.length < 8) {
    return { findings: [...findings, bad("lacks the file parameters or the virtual disk size")] };
  }
  const blockSize = u32(parameters, 0, true)!;
  if (blockSize < MiB || blockSize > MAX_BLOCK_BYTES || (blockSize & (blockSize - 1)) !== 0) findings.push(bad(`block size ${blockSize} is not a power of two from 1 MiB to 256 MiB`));
  if ((u32(parameters, 4, true)! & 2) === 2 && !items.has(ITEM_PARENT_LOCATOR)) {
    findings.push(finding("VHDX_DIFFERENCING", "the vhdx says it has a parent: it is a differencing disk, whose parent a converter would read from the host"));
  }
  const size = u64(sizeItem, 0, true)!;
  if (size > MAX_VIRTUAL_BYTES) findings.push(bad(`virtual disk size ${size} exceeds 64 TiB`));
  return { virtualSize: safe(size), findings };
}
