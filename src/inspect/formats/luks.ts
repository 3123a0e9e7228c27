/**
 * LUKS, from the LUKS1 and LUKS2 on-disk format specifications: magic "LUKS\xba\xbe" at 0 and
 * version u16 BE at 6 (1 or 2). Refused: an encrypted image cannot be inspected.
 */
import { finding } from "../findings.js";
import { hasMagic, u16 } from "../bytes.js";
import type { Detection, Detector, EndView } from "../types.js";

export function luksDetector(): Detector {
  return {
    format: "luks",
    onHead() {},
    finish({ head }: EndView): Detection | undefined {
      if (!hasMagic(head, 0, "LUKS\xba\xbe")) return undefined;
      const version = u16(head, 6, false);
      if (version !== 1 && version !== 2) return undefined;
      return { findings: [finding("LUKS_ENCRYPTED", `the image is LUKS${version}-encrypted; its contents cannot be inspected`)] };
    },
  };
}
