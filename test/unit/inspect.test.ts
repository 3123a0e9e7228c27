// The streaming inspector against the adversarial corpus (built at test time by qemu-img,
// sfdisk, xorriso and byte patches): one test per case, each read in four chunk sizes.
import * as fs from "node:fs/promises";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import {
  assessUpload,
  ImageInspector,
  InspectionError,
  MAX_RETAINED_BYTES,
  type InspectionReport,
} from "../../src/inspect/index.js";
import { buildCorpus, type CorpusCase } from "../helpers/corpus.js";
import { qemuImg } from "../helpers/disk-images.js";

const CHUNK_SIZES = [17, 512, 64 * 1024, 1024 * 1024];

let dir: string;
let corpus: CorpusCase[] = [];
// Cases are known only once the corpus is built; vitest collects tests before beforeAll runs,
// so the corpus is built at collection time (top-level await) and removed afterwards.
dir = await fs.mkdtemp(path.join(tmpdir(), "itx-corpus-"));
corpus = await buildCorpus(dir);
afterAll(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

/** Feeds `bytes` to a fresh inspector in `chunkSize` pieces; checks the memory bound after every write. */
function inspect(bytes: Uint8Array, chunkSize: number): InspectionReport & { peak: number } {
  const inspector = new ImageInspector();
  let peak = 0;
  for (let at = 0; at < bytes.length; at += chunkSize) {
    inspector.write(bytes.subarray(at, at + chunkSize));
    peak = Math.max(peak, inspector.retainedBytes);
  }
  return { ...inspector.finish(), peak: Math.max(peak, inspector.retainedBytes) };
}

const codes = (report: InspectionReport) => [...new Set(report.findings.map((f) => f.code))].sort();

describe("the corpus", () => {
  it("has an honest image and a tripping image for every format", () => {
    for (const format of ["qcow2", "vmdk", "vhd", "vhdx", "vdi"]) {
      expect(corpus.some((c) => c.format === format && c.findings.length === 0), format).toBe(true);
      expect(corpus.some((c) => c.format === format && c.findings.length > 0), format).toBe(true);
    }
  });

  for (const c of corpus) {
    it(`${c.findings.length === 0 ? "passes" : "refuses"} ${c.name}`, async () => {
      const bytes = await fs.readFile(c.file);
      const reports = CHUNK_SIZES.map((size) => inspect(bytes, size));
      const [first] = reports;
      for (const [i, report] of reports.entries()) {
        const { peak, ...verdict } = report;
        expect(peak, `retained bytes with ${CHUNK_SIZES[i]}-byte chunks`).toBeLessThanOrEqual(MAX_RETAINED_BYTES);
        const { peak: _, ...firstVerdict } = first!;
        expect(verdict, `verdict with ${CHUNK_SIZES[i]}-byte chunks`).toEqual(firstVerdict);
      }
      const report = first!;
      expect(report.format).toBe(c.format);
      expect(report.size).toBe(bytes.length);
      if (c.findings.length === 0) {
        expect(report.findings).toEqual([]);
        const info = JSON.parse(await qemuImg(["info", "--output=json", "-f", c.qemuFormat!, c.file])) as { "virtual-size": number };
        expect(report.virtualSize).toBe(info["virtual-size"]);
        expect(assessUpload(report, { declared: c.declared, maxVirtualBytes: 1024 ** 4 })).toBeUndefined();
      } else {
        expect(codes(report)).toEqual(expect.arrayContaining(c.findings));
        for (const f of report.findings) expect(f.message.length).toBeGreaterThan(10);
        const refusal = assessUpload(report, { declared: c.declared, maxVirtualBytes: 1024 ** 4 });
        expect(refusal?.reason).toMatch(/^(UNSAFE|INVALID)_IMAGE$/);
        for (const code of c.findings) expect(refusal?.message).toContain(`(${code})`);
      }
    });
  }
});

describe("the inspector on large virtual disks", () => {
  it("agrees with qemu-img on a 2 TiB qcow2 (and raises no finding: the cap is the pipeline's)", async () => {
    const file = path.join(dir, "two-tib.qcow2");
    await qemuImg(["create", "-f", "qcow2", file, "2T"]);
    const report = inspect(await fs.readFile(file), 64 * 1024);
    expect(report.findings).toEqual([]);
    const info = JSON.parse(await qemuImg(["info", "--output=json", "-f", "qcow2", file])) as { "virtual-size": number };
    expect(report.virtualSize).toBe(info["virtual-size"]);
    expect(assessUpload(report, { declared: "qcow2", maxVirtualBytes: 1024 ** 4 })?.reason).toBe("VIRTUAL_SIZE_TOO_LARGE");
  });

  // qemu-img rewrites a descriptor in place when its CID changes; a shorter CID leaves stale
  // bytes after the text's NUL (seen about once in 250 real files). qemu ignores them, so must we.
  it("accepts a real vmdk with stale bytes after its descriptor's NUL", async () => {
    const file = path.join(dir, "stale-descriptor.vmdk");
    await qemuImg(["create", "-f", "vmdk", file, "16M"]);
    const bytes = await fs.readFile(file);
    const descriptorStart = Number(bytes.readBigUInt64LE(28)) * 512;
    const nul = bytes.indexOf(0, descriptorStart);
    bytes.write("\0\nstale", nul, "latin1");
    const report = inspect(bytes, 512);
    expect(report.format).toBe("vmdk");
    expect(report.findings).toEqual([]);
  });
});

describe("the inspector on hand-made bytes", () => {
  it("calls an empty stream raw of size 0", () => {
    const inspector = new ImageInspector();
    expect(inspector.finish()).toEqual({ format: "raw", virtualSize: 0, size: 0, matches: [], findings: [] });
  });

  it("throws only InspectionError, also when written to after finishing", () => {
    const inspector = new ImageInspector();
    inspector.finish();
    expect(() => inspector.write(new Uint8Array(1))).toThrow(InspectionError);
    expect(() => new ImageInspector().write("text" as unknown as Uint8Array)).toThrow(InspectionError);
  });

  it("keeps its memory bound when every detector asks for its largest region", () => {
    // A qcow2 header with 2 MiB clusters and a sparse VMDK descriptor near the limit at once, then 64 MiB of data.
    const head = Buffer.alloc(1024 * 1024);
    head.write("QFI\xfb", 0, "latin1");
    head.writeUInt32BE(3, 4);
    head.writeUInt32BE(21, 20);
    const inspector = new ImageInspector();
    inspector.write(head);
    const chunk = Buffer.alloc(1024 * 1024, 0x5a);
    for (let i = 0; i < 64; i++) {
      inspector.write(chunk);
      expect(inspector.retainedBytes).toBeLessThanOrEqual(MAX_RETAINED_BYTES);
    }
    expect(inspector.finish().format).toBe("qcow2");
    expect(MAX_RETAINED_BYTES).toBeLessThanOrEqual(5 * 1024 * 1024);
  });

  it("reports a region it was not allowed to keep as INSPECTION_LIMIT, not as a pass", () => {
    // qcow2 backing file name at an offset the 2 MiB first-cluster region cannot hold is not read, but still a finding.
    const head = Buffer.alloc(4096);
    head.write("QFI\xfb", 0, "latin1");
    head.writeUInt32BE(3, 4);
    head.writeBigUInt64BE(1n << 40n, 8);
    head.writeUInt32BE(10, 16);
    head.writeUInt32BE(16, 20);
    head.writeUInt32BE(104, 100);
    const inspector = new ImageInspector();
    inspector.write(head);
    expect(inspector.finish().findings.map((f) => f.code)).toContain("QCOW2_BACKING_FILE");
  });

  it("refuses declared-versus-detected mismatches both ways", () => {
    const qcow2: InspectionReport = { format: "qcow2", virtualSize: 1, size: 1, matches: ["qcow2"], findings: [] };
    const raw: InspectionReport = { format: "raw", virtualSize: 1, size: 1, matches: [], findings: [] };
    expect(assessUpload(qcow2, { declared: "raw", maxVirtualBytes: 10 })).toMatchObject({ reason: "FORMAT_MISMATCH", message: expect.stringMatching(/declared raw.*qcow2/) });
    expect(assessUpload(raw, { declared: "qcow2", maxVirtualBytes: 10 })).toMatchObject({ reason: "FORMAT_MISMATCH", message: expect.stringMatching(/declared qcow2.*raw/) });
    expect(assessUpload({ ...raw, format: "gpt" }, { declared: "raw", maxVirtualBytes: 10 })).toBeUndefined();
    expect(assessUpload(raw, { declared: "raw", maxVirtualBytes: 10 })).toBeUndefined();
  });

  it("refuses a virtual size above the cap", () => {
    const big: InspectionReport = { format: "qcow2", virtualSize: 2 * 1024 ** 4, size: 1, matches: ["qcow2"], findings: [] };
    expect(assessUpload(big, { declared: "qcow2", maxVirtualBytes: 1024 ** 4 })).toMatchObject({ reason: "VIRTUAL_SIZE_TOO_LARGE" });
  });
});
