/**
 * What the inspector can find wrong with an image. Each finding has a stable code (it is
 * quoted in task errors and logs, and documented in docs/image-safety.md) and a class:
 * "unsafe" findings are images that could make a converter read host files or that hide
 * what they are; "invalid" ones are images whose structures are broken or out of range.
 * Both fail an import.
 */
export const FINDING_CODES = {
  QCOW2_VERSION: "invalid",
  QCOW2_HEADER_INVALID: "invalid",
  QCOW2_CORRUPT: "invalid",
  QCOW2_BACKING_FILE: "unsafe",
  QCOW2_DATA_FILE: "unsafe",
  QCOW2_UNKNOWN_FEATURES: "unsafe",
  QCOW2_ENCRYPTED: "unsafe",
  VMDK_HEADER_INVALID: "invalid",
  VMDK_CREATE_TYPE: "unsafe",
  VMDK_EXTENT_FILE: "unsafe",
  VMDK_PARENT: "unsafe",
  VMDK_DESCRIPTOR_TOO_LARGE: "invalid",
  VMDK_DESCRIPTOR_INVALID: "invalid",
  VMDK_FOOTER_MISMATCH: "invalid",
  VHD_CHECKSUM: "invalid",
  VHD_FOOTER_MISSING: "invalid",
  VHD_FOOTER_MISMATCH: "invalid",
  VHD_HEADER_INVALID: "invalid",
  VHD_DIFFERENCING: "unsafe",
  VHDX_HEADER_INVALID: "invalid",
  VHDX_REGION_TABLE_INVALID: "invalid",
  VHDX_METADATA_INVALID: "invalid",
  VHDX_DIFFERENCING: "unsafe",
  VDI_HEADER_INVALID: "invalid",
  VDI_DIFFERENCING: "unsafe",
  QED_REFUSED: "unsafe",
  LUKS_ENCRYPTED: "unsafe",
  ISO_INVALID: "invalid",
  POLYGLOT: "unsafe",
  TRUNCATED: "invalid",
  INSPECTION_LIMIT: "invalid",
} as const satisfies Record<string, "unsafe" | "invalid">;

export type FindingCode = keyof typeof FINDING_CODES;

export interface Finding {
  code: FindingCode;
  /** Names what was found, for the person who uploaded the image. */
  message: string;
}

export const finding = (code: FindingCode, message: string): Finding => ({ code, message });

/** Whether a finding means the image could reach host files or hide what it is (else it is malformed). */
export function isUnsafe(f: Finding): boolean {
  return FINDING_CODES[f.code] === "unsafe";
}
