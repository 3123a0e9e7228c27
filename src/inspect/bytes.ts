/**
 * Bounds-checked readers for the inspector: every read past the end of what was captured
 * answers undefined instead of throwing, so a short or hostile file can only make a
 * detector see "missing", never crash it.
 */

export type Bytes = Uint8Array;

function view(bytes: Bytes): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

export function u8(bytes: Bytes, offset: number): number | undefined {
  return offset >= 0 && offset < bytes.length ? bytes[offset] : undefined;
}

export function u16(bytes: Bytes, offset: number, littleEndian: boolean): number | undefined {
  return offset >= 0 && offset + 2 <= bytes.length ? view(bytes).getUint16(offset, littleEndian) : undefined;
}

export function u32(bytes: Bytes, offset: number, littleEndian: boolean): number | undefined {
  return offset >= 0 && offset + 4 <= bytes.length ? view(bytes).getUint32(offset, littleEndian) : undefined;
}

/** A u64 as a bigint: header fields may hold any value, and hostile ones often do. */
export function u64(bytes: Bytes, offset: number, littleEndian: boolean): bigint | undefined {
  return offset >= 0 && offset + 8 <= bytes.length ? view(bytes).getBigUint64(offset, littleEndian) : undefined;
}

/** A bigint as a number when it is a safe integer, else undefined. */
export function safe(value: bigint | undefined): number | undefined {
  return value !== undefined && value <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(value) : undefined;
}

export function hasMagic(bytes: Bytes, offset: number, magic: string): boolean {
  if (offset < 0 || offset + magic.length > bytes.length) return false;
  for (let i = 0; i < magic.length; i++) {
    if (bytes[offset + i] !== magic.charCodeAt(i)) return false;
  }
  return true;
}

export function isZero(bytes: Bytes, start = 0, end = bytes.length): boolean {
  for (let i = start; i < end; i++) if (bytes[i] !== 0) return false;
  return true;
}

/** Bytes as ISO-8859-1 text: one character per byte, so offsets stay offsets. */
export function latin1(bytes: Bytes): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("latin1");
}

/** A file name or other header text as it may be shown to a person: printable, at most 200 characters. */
export function printable(text: string): string {
  const shown = text.replace(/[^\x20-\x7e]/g, "?");
  return shown.length > 200 ? `${shown.slice(0, 200)}...` : shown;
}

/** A GUID in its mixed-endian on-disk form (VHDX, GPT) as the usual upper-case text. */
export function guid(bytes: Bytes, offset: number): string | undefined {
  if (offset < 0 || offset + 16 > bytes.length) return undefined;
  const hex = (start: number, end: number, reverse: boolean) => {
    const part = Array.from(bytes.subarray(offset + start, offset + end), (b) => b.toString(16).padStart(2, "0"));
    return (reverse ? part.reverse() : part).join("");
  };
  return [hex(0, 4, true), hex(4, 6, true), hex(6, 8, true), hex(8, 10, false), hex(10, 16, false)].join("-").toUpperCase();
}

const CRC32C_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

/** CRC-32C (Castagnoli), the checksum of VHDX headers, region and log entries. */
export function crc32c(bytes: Bytes): number {
  let crc = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) crc = CRC32C_TABLE[(crc ^ bytes[i]!) & 0xff]! ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

const CRC32_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0xedb88320 : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

/** CRC-32 (IEEE 802.3), the checksum of GPT headers. */
export function crc32(bytes: Bytes): number {
  let crc = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) crc = CRC32_TABLE[(crc ^ bytes[i]!) & 0xff]! ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

/** A copy of `bytes[start, start+length)` with `[zeroAt, zeroAt+zeroLength)` cleared: checksums skip their own field. */
export function withZeroed(bytes: Bytes, start: number, length: number, zeroAt: number, zeroLength: number): Bytes {
  const copy = bytes.slice(start, start + length);
  copy.fill(0, zeroAt, zeroAt + zeroLength);
  return copy;
}
