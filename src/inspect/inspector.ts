/**
 * The streaming format inspector. It is fed an image's bytes in order, in chunks of any size,
 * and keeps only what its detectors need: the head, a rolling tail, and the regions the
 * detectors ask for after reading the head, never more than MAX_RETAINED_BYTES whatever the
 * input. Every format's detector runs on the same bytes; at the end it says which format the
 * image is, how large the disk the guest sees is, and what is wrong with it.
 *
 * It does no I/O, holds no timers, and every loop it runs is bounded by the bytes it keeps,
 * so it cannot hang; it throws nothing but InspectionError.
 */
import { finding, type Finding } from "./findings.js";
import type { Detection, Detector, EndView, InspectedFormat, Region } from "./types.js";
import { qcow2Detector } from "./formats/qcow2.js";
import { vmdkDetector } from "./formats/vmdk.js";
import { vhdDetector } from "./formats/vhd.js";
import { vhdxDetector } from "./formats/vhdx.js";
import { vdiDetector } from "./formats/vdi.js";
import { qedDetector } from "./formats/qed.js";
import { isoDetector } from "./formats/iso.js";
import { gptDetector, mbrDetector } from "./formats/partition-table.js";
import { luksDetector } from "./formats/luks.js";

const KiB = 1024;
const MiB = 1024 * KiB;
/** The head every detector reads: up to the end of the second VHDX region table (256 KiB + 64 KiB). */
export const HEAD_BYTES = 320 * KiB;
/** The rolling tail: VHD and VMDK footers sit in the last 1536 bytes. */
export const TAIL_BYTES = 4 * KiB;
/** All regions the detectors ask for, together (a 2 MiB qcow2 cluster, a 1 MiB VMDK descriptor, ...). */
export const MAX_REGION_BYTES = 4 * MiB;
/** The most the inspector holds for one image, whatever the input. */
export const MAX_RETAINED_BYTES = HEAD_BYTES + TAIL_BYTES + MAX_REGION_BYTES;

/** Raw disk layouts: an ISO 9660 image may carry an MBR and a GPT (a hybrid ISO), a GPT always has a protective MBR. */
const LAYOUTS: ReadonlySet<InspectedFormat> = new Set(["iso", "gpt", "mbr"]);
const LAYOUT_PRECEDENCE: InspectedFormat[] = ["iso", "gpt", "mbr"];

/** The only error the inspector throws: misuse (writing after finish) or a fault of its own. */
export class InspectionError extends Error {
  override readonly name = "InspectionError";
}

export interface InspectionReport {
  /** The format the image is; raw when no signature matched. */
  format: InspectedFormat;
  /** Bytes the guest sees, when the format states it (raw: the image's size). */
  virtualSize?: number;
  /** Bytes inspected: the image's size. */
  size: number;
  /** Every format whose signature is present (more than one, beyond the benign pairs, is a polyglot). */
  matches: InspectedFormat[];
  findings: Finding[];
}

const DETECTORS: Array<() => Detector> = [
  qcow2Detector,
  vmdkDetector,
  vhdDetector,
  vhdxDetector,
  vdiDetector,
  qedDetector,
  luksDetector,
  isoDetector,
  gptDetector,
  mbrDetector,
];

class CapturedRegion implements Region {
  private buffer: Uint8Array | undefined;
  /** Set at the end: the bytes are all there (or, clipped, what there is). */
  private complete = false;

  constructor(
    readonly offset: number,
    readonly length: number,
    private readonly clipToEnd: boolean,
    private readonly overLimit: boolean,
  ) {}

  /** Asked for but not kept (over the memory bound): no bytes of it are wanted. */
  get refused(): boolean {
    return this.overLimit;
  }

  get bytes(): Uint8Array | undefined {
    return this.complete ? (this.buffer ?? new Uint8Array(0)) : undefined;
  }

  get retained(): number {
    return this.buffer?.length ?? 0;
  }

  missing(what: string): Finding {
    return this.overLimit
      ? finding("INSPECTION_LIMIT", `${what} (${this.length} bytes at ${this.offset}) is more than the inspector reads`)
      : finding("TRUNCATED", `${what} (${this.length} bytes at ${this.offset}) lies beyond the end of the image`);
  }

  /** Copies the part of `chunk` (which starts at `start`) that falls inside the region. */
  capture(chunk: Uint8Array, start: number): void {
    if (this.overLimit) return;
    const from = Math.max(this.offset, start);
    const to = Math.min(this.offset + this.length, start + chunk.length);
    if (from >= to) return;
    this.buffer ??= new Uint8Array(this.length);
    this.buffer.set(chunk.subarray(from - start, to - start), from - this.offset);
  }

  end(size: number): void {
    if (this.overLimit) return;
    if (this.offset + this.length <= size) this.complete = true;
    else if (this.clipToEnd && this.offset < size) {
      this.buffer = (this.buffer ?? new Uint8Array(0)).subarray(0, size - this.offset);
      this.complete = true;
    }
  }
}

/** Inspects one image: `write` each chunk in order, then `finish`. */
export class ImageInspector {
  private readonly head = new Uint8Array(HEAD_BYTES);
  private readonly tail = new Uint8Array(TAIL_BYTES);
  private readonly detectors = DETECTORS.map((make) => make());
  private readonly regions: CapturedRegion[] = [];
  private regionBytes = 0;
  private position = 0;
  /** Where the last skip ended: the tail is only whole if at least TAIL_BYTES were fed since. */
  private skippedTo = 0;
  private headRead = false;
  private report: InspectionReport | undefined;

  /** Feeds the next bytes of the image. */
  write(chunk: Uint8Array): void {
    if (this.report) throw new InspectionError("the inspector has finished; it takes no more bytes");
    if (!(chunk instanceof Uint8Array)) throw new InspectionError("the inspector takes bytes (Uint8Array chunks)");
    guarded(() => {
      let rest = chunk;
      if (!this.headRead) {
        // The part that completes the head goes first, so that regions asked for then capture the rest of this chunk.
        const take = Math.min(rest.length, HEAD_BYTES - this.position);
        this.head.set(rest.subarray(0, take), this.position);
        this.advance(rest.subarray(0, take));
        rest = rest.subarray(take);
        if (this.position === HEAD_BYTES) this.readHead();
      }
      if (rest.length > 0) this.advance(rest);
    });
  }

  /**
   * For a caller that can seek (a local file): the next offset, at or after the current
   * position, whose bytes the inspector needs from an image of `size` bytes: the head, a
   * region a detector asked for, or the tail. Bytes before it may be skipped with `skipTo`.
   */
  nextWanted(size: number): number {
    if (!this.headRead) return this.position;
    const tailStart = Math.max(this.position, size - TAIL_BYTES);
    let next = tailStart;
    for (const region of this.regions) {
      const end = region.offset + region.length;
      if (!region.refused && end > this.position) next = Math.min(next, Math.max(region.offset, this.position));
    }
    return next;
  }

  /** Moves past bytes no detector needs (see `nextWanted`); the last TAIL_BYTES must still be fed. */
  skipTo(offset: number): void {
    if (this.report) throw new InspectionError("the inspector has finished; it takes no more bytes");
    if (!this.headRead || !Number.isSafeInteger(offset) || offset < this.position) {
      throw new InspectionError("the inspector can skip only forward, after the head");
    }
    if (this.regions.some((r) => r.offset < offset && r.offset + r.length > this.position && !r.refused)) {
      throw new InspectionError("the inspector cannot skip bytes a detector asked for");
    }
    this.position = offset;
    this.skippedTo = offset;
  }

  /** Bytes held now (head, tail and captured regions): never more than MAX_RETAINED_BYTES. */
  get retainedBytes(): number {
    return this.head.length + this.tail.length + this.regions.reduce((sum, r) => sum + r.retained, 0);
  }

  /** Ends the stream and reports. Calling it again returns the same report. */
  finish(): InspectionReport {
    if (this.report) return this.report;
    this.report = guarded(() => {
      if (!this.headRead) this.readHead();
      const size = this.position;
      if (this.skippedTo > 0 && size - this.skippedTo < Math.min(size, TAIL_BYTES)) {
        throw new InspectionError("the inspector was not fed the image's last bytes after a skip");
      }
      for (const region of this.regions) region.end(size);
      const end: EndView = { head: this.head.subarray(0, Math.min(size, HEAD_BYTES)), tail: this.tailBytes(), size };
      const detections = new Map<InspectedFormat, Detection>();
      for (const detector of this.detectors) {
        const detection = detector.finish(end);
        if (detection) detections.set(detector.format, detection);
      }
      return verdict(detections, size);
    });
    return this.report;
  }

  private advance(bytes: Uint8Array): void {
    for (const region of this.regions) region.capture(bytes, this.position);
    this.keepTail(bytes);
    this.position += bytes.length;
  }

  private readHead(): void {
    this.headRead = true;
    const head = this.head.subarray(0, this.position);
    const request = (offset: number, length: number, options?: { clipToEnd?: boolean }): Region => {
      const sane = Number.isSafeInteger(offset) && offset >= 0 && Number.isSafeInteger(length) && length > 0;
      const overLimit = !sane || this.regionBytes + length > MAX_REGION_BYTES;
      const region = new CapturedRegion(sane ? offset : 0, sane ? length : 0, options?.clipToEnd ?? false, overLimit);
      if (!overLimit) {
        this.regionBytes += length;
        region.capture(head, 0);
      }
      this.regions.push(region);
      return region;
    };
    for (const detector of this.detectors) detector.onHead({ head, request });
  }

  /** Keeps the last TAIL_BYTES in a ring: a copy per chunk no larger than the tail. */
  private keepTail(bytes: Uint8Array): void {
    const kept = bytes.length > TAIL_BYTES ? bytes.subarray(bytes.length - TAIL_BYTES) : bytes;
    const start = (this.position + bytes.length - kept.length) % TAIL_BYTES;
    const first = Math.min(kept.length, TAIL_BYTES - start);
    this.tail.set(kept.subarray(0, first), start);
    this.tail.set(kept.subarray(first), 0);
  }

  private tailBytes(): Uint8Array {
    const length = Math.min(this.position, TAIL_BYTES);
    const out = new Uint8Array(length);
    const start = (this.position - length) % TAIL_BYTES;
    const first = Math.min(length, TAIL_BYTES - start);
    out.set(this.tail.subarray(start, start + first), 0);
    out.set(this.tail.subarray(0, length - first), first);
    return out;
  }
}

/**
 * One format from every detector that matched. A container format next to anything else is
 * a polyglot; raw layouts may go together (hybrid ISO, GPT with its protective MBR) and may
 * sit inside a fixed VHD, whose data is a raw disk.
 */
function verdict(detections: Map<InspectedFormat, Detection>, size: number): InspectionReport {
  const matches = [...detections.keys()];
  const findings = [...detections.values()].flatMap((d) => d.findings);
  const containers = matches.filter((f) => !LAYOUTS.has(f));
  const layouts = matches.filter((f) => LAYOUTS.has(f));
  const container = containers[0];
  if (containers.length > 1 || (container && layouts.length > 0 && !detections.get(container)!.rawData)) {
    findings.unshift(finding("POLYGLOT", `the image is at once ${matches.join(" and ")}: tools that probe differently would read it differently`));
  }
  const format = container ?? LAYOUT_PRECEDENCE.find((f) => detections.has(f)) ?? "raw";
  const virtualSize = format === "raw" ? size : detections.get(format)!.virtualSize;
  return { format, ...(virtualSize === undefined ? {} : { virtualSize }), size, matches, findings };
}

function guarded<T>(work: () => T): T {
  try {
    return work();
  } catch (err) {
    if (err instanceof InspectionError) throw err;
    throw new InspectionError(`the inspector failed: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
  }
}
