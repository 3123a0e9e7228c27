/**
 * QED, QEMU's deprecated enhanced disk format ("QED\0" at 0, virtual size u64 LE at 24 per
 * QEMU's docs). Always refused: nothing we serve needs it, and it supports backing files.
 */
import { finding } from "../findings.js";
import { hasMagic, safe, u64 } from "../bytes.js";
import type { Detection, Detector, EndView } from "../types.js";

export function qedDetector(): Detector {
  return {
    format: "qed",
    onHead() {},
    finish({ head }: EndView): Detection | undefined {
      if (!hasMagic(head, 0, "QED\0")) return undefined;
      return { virtualSize: safe(u64(head, 24, true)), findings: [finding("QED_REFUSED", "the image is QED, a format this service never accepts")] };
    },
  };
}
