/**
 * Partition tables of raw disks. They are no container: a disk with one is raw. They are
 * detected so that a partition table next to another format's header shows as a polyglot.
 *
 * - MBR: boot signature 0x55 0xaa at 510 and four 16-byte entries from 446, each with status
 *   0x00 or 0x80 and at least one with a partition type (byte 4) other than 0.
 * - GPT (UEFI specification, 5.3): header at LBA 1 (512-byte sectors): "EFI PART", header size
 *   u32 LE at 12 (92..512), CRC-32 at 16 over the header size with the field as zero, and its
 *   own LBA u64 at 24, which is 1.
 */
import { crc32, hasMagic, u32, u64, u8, withZeroed } from "../bytes.js";
import type { Detection, Detector, EndView } from "../types.js";

const GPT_AT = 512;

export function hasMbr(head: Uint8Array): boolean {
  if (u8(head, 510) !== 0x55 || u8(head, 511) !== 0xaa) return false;
  let used = 0;
  for (let i = 0; i < 4; i++) {
    const entry = 446 + i * 16;
    const status = head[entry];
    if (status !== 0x00 && status !== 0x80) return false;
    if (head[entry + 4] !== 0) used++;
  }
  return used > 0;
}

export function hasGpt(head: Uint8Array): boolean {
  if (!hasMagic(head, GPT_AT, "EFI PART")) return false;
  const size = u32(head, GPT_AT + 12, true);
  if (size === undefined || size < 92 || size > 512 || GPT_AT + size > head.length) return false;
  return crc32(withZeroed(head, GPT_AT, size, 16, 4)) === u32(head, GPT_AT + 16, true) && u64(head, GPT_AT + 24, true) === 1n;
}

export function mbrDetector(): Detector {
  return {
    format: "mbr",
    onHead() {},
    finish: ({ head, size }: EndView): Detection | undefined => (hasMbr(head) ? { virtualSize: size, findings: [] } : undefined),
  };
}

export function gptDetector(): Detector {
  return {
    format: "gpt",
    onHead() {},
    finish: ({ head, size }: EndView): Detection | undefined => (hasGpt(head) ? { virtualSize: size, findings: [] } : undefined),
  };
}
