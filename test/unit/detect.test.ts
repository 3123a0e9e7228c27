// detectFormat against images made by the real qemu-img at test time (nothing binary is committed).
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import * as fs from "node:fs/promises";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { detectFormat, FORMATS, HEAD_BYTES, TAIL_BYTES, type DiskFormat } from "../../src/inspect/detect.js";

const run = promisify(execFile);
const MiB = 1024 * 1024;
const RAW_SIZE = 8 * MiB;

let dir: string;
let rawFile: string;

async function qemuImg(...args: string[]): Promise<string> {
  return (await run("qemu-img", args, { maxBuffer: 16 * MiB })).stdout;
}

async function qemuVirtualSize(file: string, qemuFormat: string): Promise<number> {
  const info = JSON.parse(await qemuImg("info", "--output=json", "-f", qemuFormat, file)) as {
    "virtual-size": number;
  };
  return info["virtual-size"];
}

/** The first up to 64 KiB, the last up to 512 bytes and the size of `file`, as a caller would read them. */
async function headTail(file: string): Promise<[Uint8Array, Uint8Array, number]> {
  const handle = await fs.open(file, "r");
  try {
    const { size } = await handle.stat();
    const head = Buffer.alloc(Math.min(HEAD_BYTES, size));
    await handle.read(head, 0, head.length, 0);
    const tail = Buffer.alloc(Math.min(TAIL_BYTES, size));
    await handle.read(tail, 0, tail.length, size - tail.length);
    return [head, tail, size];
  } finally {
    await handle.close();
  }
}

async function detectFile(file: string) {
  return detectFormat(...(await headTail(file)));
}

/**
 * A minimal ISO 9660 image (ECMA-119): 16 empty system-area sectors, a primary volume
 * descriptor at 0x8000 and a set terminator at 0x8800; `blocks` logical blocks of 2048 bytes.
 */
function minimalIso(blocks: number): Buffer {
  const image = Buffer.alloc(blocks * 2048);
  const pvd = 0x8000;
  image[pvd] = 1; // type: primary volume descriptor
  image.write("CD001", pvd + 1, "latin1");
  image[pvd + 6] = 1; // version
  image.write("LINUX".padEnd(32, " "), pvd + 8, "latin1"); // system identifier
  image.write("ITX_TEST".padEnd(32, " "), pvd + 40, "latin1"); // volume identifier
  image.writeUInt32LE(blocks, pvd + 80); // volume space size, both byte orders
  image.writeUInt32BE(blocks, pvd + 84);
  image.writeUInt16LE(1, pvd + 120); // volume set size
  image.writeUInt16BE(1, pvd + 122);
  image.writeUInt16LE(1, pvd + 124); // volume sequence number
  image.writeUInt16BE(1, pvd + 126);
  image.writeUInt16LE(2048, pvd + 128); // logical block size
  image.writeUInt16BE(2048, pvd + 130);
  image[pvd + 881] = 1; // file structure version
  const terminator = 0x8800;
  image[terminator] = 255;
  image.write("CD001", terminator + 1, "latin1");
  image[terminator + 6] = 1;
  return image;
}

beforeAll(async () => {
  dir = await fs.mkdtemp(path.join(tmpdir(), "itx-detect-"));
  rawFile = path.join(dir, "disk.raw");
  // First half random, second half zeros: sparse formats get both data and holes.
  await fs.writeFile(rawFile, Buffer.concat([randomBytes(RAW_SIZE / 2), Buffer.alloc(RAW_SIZE / 2)]));
});

afterAll(async () => {
  if (dir) await fs.rm(dir, { recursive: true, force: true });
});

describe("detectFormat on images made by qemu-img", () => {
  const cases: Array<{ name: string; qemuFormat: string; options?: string; expected: DiskFormat; sized: boolean }> = [
    { name: "qcow2", qemuFormat: "qcow2", expected: "qcow2", sized: true },
    { name: "vmdk monolithicSparse", qemuFormat: "vmdk", options: "subformat=monolithicSparse", expected: "vmdk", sized: true },
    { name: "vmdk streamOptimized", qemuFormat: "vmdk", options: "subformat=streamOptimized", expected: "vmdk", sized: true },
    { name: "vmdk monolithicFlat (text descriptor)", qemuFormat: "vmdk", options: "subformat=monolithicFlat", expected: "vmdk", sized: true },
    { name: "vhd fixed", qemuFormat: "vpc", options: "subformat=fixed,force_size=on", expected: "vhd", sized: true },
    { name: "vhd dynamic", qemuFormat: "vpc", options: "subformat=dynamic,force_size=on", expected: "vhd", sized: true },
    { name: "vhd dynamic, CHS-rounded size", qemuFormat: "vpc", options: "subformat=dynamic", expected: "vhd", sized: true },
    { name: "vhdx", qemuFormat: "vhdx", expected: "vhdx", sized: false },
    { name: "vdi", qemuFormat: "vdi", expected: "vdi", sized: true },
  ];

  for (const [index, c] of cases.entries()) {
    it(`recognises ${c.name}`, async () => {
      const file = path.join(dir, `image-${index}.${c.expected}`);
      await qemuImg("convert", "-f", "raw", "-O", c.qemuFormat, ...(c.options ? ["-o", c.options] : []), rawFile, file);
      const detected = await detectFile(file);
      expect(detected.format).toBe(c.expected);
      if (c.sized) {
        expect(detected.virtualSize).toBe(await qemuVirtualSize(file, c.qemuFormat));
      } else {
        // VHDX keeps its size in the metadata region, beyond the head.
        expect(detected.virtualSize).toBeUndefined();
      }
    });
  }

  it("recognises raw, with the file size as the virtual size", async () => {
    const detected = await detectFile(rawFile);
    expect(detected).toEqual({ format: "raw", virtualSize: RAW_SIZE });
    expect(detected.virtualSize).toBe(await qemuVirtualSize(rawFile, "raw"));
  });

  it("recognises an ISO 9660 image", async () => {
    const file = path.join(dir, "disk.iso");
    await fs.writeFile(file, minimalIso(64));
    const detected = await detectFile(file);
    expect(detected).toEqual({ format: "iso", virtualSize: 64 * 2048 });
    expect(detected.virtualSize).toBe(await qemuVirtualSize(file, "raw"));
  });
});

describe("detectFormat on hand-made bytes", () => {
  it("lists the formats", () => {
    expect([...FORMATS].sort()).toEqual(["iso", "qcow2", "raw", "vdi", "vhd", "vhdx", "vmdk"]);
  });

  it("calls an empty file raw", () => {
    expect(detectFormat(new Uint8Array(0), new Uint8Array(0), 0)).toEqual({ format: "raw", virtualSize: 0 });
  });

  it("recognises a magic even when the size field lies beyond a short head", () => {
    const head = Buffer.from("QFI\xfb\0\0\0\x03", "latin1");
    expect(detectFormat(head, head, head.length)).toEqual({ format: "qcow2" });
  });

  it("leaves out sizes that are not safe integers", () => {
    const head = Buffer.alloc(512);
    head.write("QFI\xfb", 0, "latin1");
    head.writeBigUInt64BE(2n ** 60n, 24);
    expect(detectFormat(head, head, head.length)).toEqual({ format: "qcow2" });
  });

  it("sums the extents of a VMDK text descriptor", () => {
    const text = [
      "# Disk DescriptorFile",
      "version=1",
      'createType="twoGbMaxExtentFlat"',
      'RW 4192256 FLAT "disk-f001.vmdk" 0',
      'RW 2048 FLAT "disk-f002.vmdk" 0',
      "",
    ].join("\n");
    const head = Buffer.from(text, "latin1");
    expect(detectFormat(head, head, head.length)).toEqual({ format: "vmdk", virtualSize: (4192256 + 2048) * 512 });
  });

  it("finds a VHD footer only at the start of the last 512 bytes", () => {
    const tail = Buffer.alloc(512);
    tail.write("conectix", 0, "latin1");
    tail.writeBigUInt64BE(1234n * 512n, 48);
    expect(detectFormat(Buffer.alloc(4096), tail, 1 << 20)).toEqual({ format: "vhd", virtualSize: 1234 * 512 });
    const shifted = Buffer.concat([Buffer.alloc(1), tail]).subarray(0, 512);
    expect(detectFormat(Buffer.alloc(4096), shifted, 1 << 20).format).toBe("raw");
  });

  it("wants the VDI signature as well as the text", () => {
    const head = Buffer.alloc(512);
    head.write("<<< Oracle VM VirtualBox Disk Image >>>\n", 0, "latin1");
    expect(detectFormat(head, head, head.length).format).toBe("raw");
    head.writeUInt32LE(0xbeda107f, 0x40);
    expect(detectFormat(head, head, head.length).format).toBe("vdi");
  });

  it("needs the ISO magic at 0x8001, not elsewhere", () => {
    const head = Buffer.alloc(0x8006);
    head.write("CD001", 0x8000, "latin1");
    expect(detectFormat(head, head.subarray(-512), head.length).format).toBe("raw");
    head.write("CD001", 0x8001, "latin1");
    expect(detectFormat(head, head.subarray(-512), head.length)).toEqual({ format: "iso" });
  });
});
