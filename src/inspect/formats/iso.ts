/**
 * ISO 9660, from ECMA-119: after a 32 KiB system area, 2048-byte volume descriptors: type
 * byte (1 primary, 255 set terminator), "CD001", version 1. The primary descriptor's volume
 * space size (u32 at 80) and logical block size (u16 at 128) are "both-byte order" fields:
 * little-endian then big-endian copies, which must agree. The volume must fit in the file.
 */
import { finding, type Finding } from "../findings.js";
import { hasMagic, u16, u32, u8 } from "../bytes.js";
import type { Detection, Detector, EndView } from "../types.js";

const SYSTEM_AREA = 0x8000;
const DESCRIPTOR = 2048;
/** Descriptors are read up to the terminator, at most this many. */
const MAX_DESCRIPTORS = 32;

export function isoDetector(): Detector {
  return {
    format: "iso",
    onHead() {},
    finish({ head, size }: EndView): Detection | undefined {
      if (!hasMagic(head, SYSTEM_AREA + 1, "CD001")) return undefined;
      for (let i = 0; i < MAX_DESCRIPTORS; i++) {
        const at = SYSTEM_AREA + i * DESCRIPTOR;
        if (!hasMagic(head, at + 1, "CD001")) break;
        const type = u8(head, at);
        if (type === 255) break;
        if (type !== 1) continue;
        const findings: Finding[] = [];
        const blocks = u32(head, at + 80, true);
        const blockSize = u16(head, at + 128, true);
        if (blocks === undefined || blockSize === undefined) return { findings: [finding("TRUNCATED", "the ISO 9660 primary volume descriptor is cut short")] };
        if (blocks !== u32(head, at + 84, false) || blockSize !== u16(head, at + 130, false)) {
          findings.push(finding("ISO_INVALID", "the ISO 9660 primary volume descriptor's little- and big-endian sizes disagree"));
        }
        if (blockSize !== 512 && blockSize !== 1024 && blockSize !== 2048) findings.push(finding("ISO_INVALID", `the ISO 9660 logical block size ${blockSize} is not 512, 1024 or 2048`));
        // qemu reads an ISO as a raw disk: the guest sees the whole file, which may hold more than the volume (appended partitions).
        if (blocks * blockSize > size) findings.push(finding("TRUNCATED", `the ISO 9660 volume is ${blocks * blockSize} bytes but the image is ${size}`));
        return { virtualSize: size, findings };
      }
      return { findings: [finding("ISO_INVALID", "the ISO 9660 image has no primary volume descriptor")] };
    },
  };
}
