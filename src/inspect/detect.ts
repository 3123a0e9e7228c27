/**
 * Recognises a disk image's format from its first and last bytes. Pure: no I/O; the caller
 * reads the bytes. A later inspector grows from this; for now it answers "which format, and
 * how big is the disk the guest sees" where the header says so directly.
 *
 * What is read, per format (offsets in bytes; all sizes in bytes unless noted):
 *
 * - qcow2 (QEMU docs/interop/qcow2.txt): "QFI\xfb" at 0; virtual size u64 BE at 24.
 * - vmdk (VMware Virtual Disk Format 1.1): a sparse extent, "KDMV" at 0, capacity u64 LE
 *   at 12 in 512-byte sectors; or a text descriptor starting "# Disk DescriptorFile",
 *   whose extent lines ("RW <sectors> FLAT ...") add up to the size.
 * - vhdx (MS-VHDX 2.2.1): "vhdxfile" at 0; the size lives in the metadata region, far
 *   beyond the head, so none is given.
 * - vdi (VirtualBox): "<<< " at 0 and signature 0xbeda107f (u32 LE) at 0x40; for header
 *   version 1.x, the disk size u64 LE at 0x170.
 * - vhd (Microsoft VHD Image Format Specification, hard disk footer): cookie "conectix" at
 *   the start of the last 512 bytes (every VHD) or at 0 (the copy dynamic and differencing
 *   disks keep); "current size" u64 BE at footer offset 48.
 * - iso (ECMA-119 8.4, primary volume descriptor at 0x8000): "CD001" at 0x8001; volume space
 *   size u32 LE at 0x8050 times logical block size u16 LE at 0x8080.
 * - raw: anything else; the file's size.
 *
 * The ISO 9660 fields are "both-byte order" (LE then BE); the little-endian half is read.
 * Magics are tried in the order above; the first that matches wins.
 */

export const FORMATS = ["raw", "qcow2", "vmdk", "vhd", "vhdx", "vdi", "iso"] as const;

/** A disk format name as the API spells it. */
export type DiskFormat = (typeof FORMATS)[number];

export interface DetectedFormat {
  format: DiskFormat;
  /** Bytes the guest sees, when the header states it (and it is a safe integer). */
  virtualSize?: number;
}

/** Bytes of the head needed to see an ISO 9660 primary volume descriptor's magic. */
export const MIN_HEAD_BYTES = 0x8006;
/** Bytes of the head read by {@link detectFormat} at most. */
export const HEAD_BYTES = 64 * 1024;
/** Bytes of the tail read by {@link detectFormat} at most (one VHD footer). */
export const TAIL_BYTES = 512;

const SECTOR = 512;
const VDI_SIGNATURE = 0xbeda107f;
const ISO_MAGIC_OFFSET = 0x8001;

/**
 * The format of a file of `size` bytes whose first bytes are `head` (up to 64 KiB, at least
 * 0x8006 when the file is that long) and whose last bytes are `tail` (up to 512).
 */
export function detectFormat(head: Uint8Array, tail: Uint8Array, size: number): DetectedFormat {
  if (startsWith(head, 0, "QFI\xfb")) {
    return withSize("qcow2", u64(head, 24, false));
  }
  if (startsWith(head, 0, "KDMV")) {
    const sectors = u64(head, 12, true);
    return withSize("vmdk", sectors === undefined ? undefined : sectors * SECTOR);
  }
  if (startsWith(head, 0, "# Disk DescriptorFile")) {
    return withSize("vmdk", descriptorSize(head));
  }
  if (startsWith(head, 0, "vhdxfile")) {
    return { format: "vhdx" };
  }
  if (startsWith(head, 0, "<<< ") && u32(head, 0x40, true) === VDI_SIGNATURE) {
    const major = u16(head, 0x46, true); // version: minor u16 at 0x44, major u16 at 0x46
    return withSize("vdi", major === 1 ? u64(head, 0x170, true) : undefined);
  }
  const footerAt = tail.length >= TAIL_BYTES ? tail.length - TAIL_BYTES : -1;
  if (footerAt >= 0 && startsWith(tail, footerAt, "conectix")) {
    return withSize("vhd", u64(tail, footerAt + 48, false));
  }
  if (startsWith(head, 0, "conectix")) {
    return withSize("vhd", u64(head, 48, false));
  }
  if (startsWith(head, ISO_MAGIC_OFFSET, "CD001")) {
    const blocks = u32(head, 0x8050, true);
    const blockSize = u16(head, 0x8080, true);
    return withSize("iso", blocks === undefined || blockSize === undefined ? undefined : blocks * blockSize);
  }
  return withSize("raw", size);
}

function withSize(format: DiskFormat, virtualSize: number | undefined): DetectedFormat {
  return virtualSize !== undefined && Number.isSafeInteger(virtualSize) && virtualSize >= 0
    ? { format, virtualSize }
    : { format };
}

/**
 * A VMDK text descriptor's disk size: the sum of its extent lines'
 * (`RW|RDONLY|NOACCESS <sectors> <type> ...`) sector counts, times 512.
 */
function descriptorSize(head: Uint8Array): number | undefined {
  const end = head.indexOf(0);
  const text = latin1(head.subarray(0, end < 0 ? head.length : end));
  let sectors = 0;
  let found = false;
  for (const line of text.split(/\r?\n/)) {
    const extent = /^\s*(?:RW|RDONLY|NOACCESS)\s+(\d+)\s/.exec(line);
    if (extent) {
      sectors += Number(extent[1]);
      found = true;
    }
  }
  return found ? sectors * SECTOR : undefined;
}

function startsWith(bytes: Uint8Array, offset: number, magic: string): boolean {
  if (offset + magic.length > bytes.length) return false;
  for (let i = 0; i < magic.length; i++) {
    if (bytes[offset + i] !== magic.charCodeAt(i)) return false;
  }
  return true;
}

function view(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

function u16(bytes: Uint8Array, offset: number, littleEndian: boolean): number | undefined {
  return offset + 2 <= bytes.length ? view(bytes).getUint16(offset, littleEndian) : undefined;
}

function u32(bytes: Uint8Array, offset: number, littleEndian: boolean): number | undefined {
  return offset + 4 <= bytes.length ? view(bytes).getUint32(offset, littleEndian) : undefined;
}

/** A u64 as a number; undefined when out of reach or above Number.MAX_SAFE_INTEGER. */
function u64(bytes: Uint8Array, offset: number, littleEndian: boolean): number | undefined {
  if (offset + 8 > bytes.length) return undefined;
  const value = view(bytes).getBigUint64(offset, littleEndian);
  return value <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(value) : undefined;
}

function latin1(bytes: Uint8Array): string {
  let text = "";
  for (const byte of bytes) text += String.fromCharCode(byte);
  return text;
}
