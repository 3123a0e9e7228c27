/**
 * VDI (VirtualBox), as qemu's block/vdi.c and VirtualBox's VDICore.h lay it out, little-endian:
 * text at 0 ("<<< ... >>>"), signature 0xbeda107f u32 at 0x40, version u32 at 0x44 (1.1),
 * header size u32 at 0x48, image type u32 at 0x4c (1 dynamic, 2 static, 3 undo, 4 differencing),
 * offset of the block map u32 at 0x154, of the data u32 at 0x158, sector size u32 at 0x168,
 * disk size u64 at 0x170, block size u32 at 0x178 (1 MiB), blocks in image u32 at 0x180,
 * and the parent's UUID at 0x1a8 (zero unless differencing).
 */
import { finding, type Finding } from "../findings.js";
import { isZero, safe, u32, u64 } from "../bytes.js";
import type { Detection, Detector, EndView } from "../types.js";

const SIGNATURE = 0xbeda107f;
const HEADER_END = 0x1c8;
const MiB = 1024 * 1024;
/** qemu's cap on the block map: 2^31 blocks would be 8 GiB of map. */
const MAX_BLOCKS = 0x3fffffff;

const isVdi = (head: Uint8Array) => u32(head, 0x40, true) === SIGNATURE;

export function vdiDetector(): Detector {
  return {
    format: "vdi",
    onHead() {},
    finish({ head, size }: EndView): Detection | undefined {
      if (!isVdi(head)) return undefined;
      if (head.length < HEADER_END) return { findings: [finding("TRUNCATED", `the vdi header is cut short: the image is ${size} bytes`)] };
      const findings: Finding[] = [];
      const bad = (what: string) => findings.push(finding("VDI_HEADER_INVALID", `the vdi header's ${what}`));
      const major = u32(head, 0x44, true)! >>> 16;
      const type = u32(head, 0x4c, true)!;
      const diskSize = u64(head, 0x170, true)!;
      const blockSize = u32(head, 0x178, true)!;
      const blocks = u32(head, 0x180, true)!;
      const mapOffset = u32(head, 0x154, true)!;
      const dataOffset = u32(head, 0x158, true)!;
      if (major !== 1) bad(`version ${major} is not 1`);
      if (type === 3 || type === 4 || !isZero(head, 0x1a8, 0x1b8)) {
        findings.push(finding("VDI_DIFFERENCING", "the vdi is a differencing or undo disk: it depends on a parent disk"));
      } else if (type !== 1 && type !== 2) bad(`image type ${type} is not dynamic (1) or static (2)`);
      if (u32(head, 0x168, true) !== 512) bad(`sector size ${u32(head, 0x168, true)} is not 512`);
      if (blockSize !== MiB) bad(`block size ${blockSize} is not 1 MiB`);
      if (blocks > MAX_BLOCKS) bad(`block count ${blocks} exceeds ${MAX_BLOCKS}`);
      else if (BigInt(blocks) * BigInt(blockSize) < diskSize) bad(`${blocks} blocks of ${blockSize} bytes cannot hold a disk of ${diskSize} bytes`);
      if (mapOffset % 512 !== 0 || dataOffset % 512 !== 0 || mapOffset < HEADER_END || dataOffset < mapOffset + blocks * 4) {
        bad(`block map (${mapOffset}) or data offset (${dataOffset}) is out of place`);
      }
      return { virtualSize: safe(diskSize), findings };
    },
  };
}
