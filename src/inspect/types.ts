import type { Bytes } from "./bytes.js";
import type { Finding } from "./findings.js";

/** The formats the inspector tells apart. gpt and mbr are raw disks with a partition table. */
export const INSPECTED_FORMATS = ["raw", "qcow2", "vmdk", "vhd", "vhdx", "vdi", "qed", "iso", "gpt", "mbr", "luks"] as const;
export type InspectedFormat = (typeof INSPECTED_FORMATS)[number];

/** Bytes at a fixed place in the image that a detector asked for after reading the head. */
export interface Region {
  readonly offset: number;
  readonly length: number;
  /** The bytes, once the stream has passed them; undefined before, or when they lie beyond the end or past the memory bound. */
  readonly bytes: Bytes | undefined;
  /** Why `bytes` is missing at the end, as a finding about `what` (e.g. "the qcow2 backing file name"). */
  missing(what: string): Finding;
}

/** What a detector sees once the head has been read (or the stream ended first). */
export interface HeadView {
  /** The first HEAD_BYTES of the image, or all of it when shorter. */
  readonly head: Bytes;
  /**
   * Asks for `length` bytes at `offset`, captured as the stream passes them. With
   * `clipToEnd`, a region that runs past the end holds what there is instead of nothing.
   */
  request(offset: number, length: number, options?: { clipToEnd?: boolean }): Region;
}

/** What a detector sees at the end of the stream. */
export interface EndView {
  readonly head: Bytes;
  /** The last TAIL_BYTES of the image, or all of it when shorter. */
  readonly tail: Bytes;
  /** The image's size in bytes. */
  readonly size: number;
}

/** A detector's verdict when its format's signature is present. */
export interface Detection {
  /** Bytes the guest sees, when the format states it and it is a safe integer. */
  virtualSize?: number;
  /** For polyglot rules: a fixed VHD is a raw disk plus a footer, so its data may carry a partition table. */
  rawData?: boolean;
  findings: Finding[];
}

/** One format's detector, made fresh for each image. */
export interface Detector {
  readonly format: InspectedFormat;
  onHead(view: HeadView): void;
  /** undefined when the format's signature is absent. */
  finish(end: EndView): Detection | undefined;
}
