/**
 * The adversarial image corpus, built at test time with the real qemu-img, sfdisk and xorriso
 * plus small byte patches (nothing binary is committed). Each case says what the inspector
 * must report: its format, and the finding codes that must be among its findings (none for
 * an honest image, which must also agree with `qemu-img info` on its virtual size).
 *
 * The data-file case is made by pointing qemu-img at a scratch file and patching the name
 * afterwards: `qemu-img create -o data_file=/etc/passwd` would truncate /etc/passwd.
 */
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import * as fs from "node:fs/promises";
import * as path from "node:path";
import { promisify } from "node:util";
import { crc32c } from "../../src/inspect/bytes.js";
import type { FindingCode, InspectedFormat } from "../../src/inspect/index.js";
import { qemuImg } from "./disk-images.js";

const run = promisify(execFile);
const KiB = 1024;
const MiB = 1024 * KiB;
/** The guest disk behind the honest images: small, half random, half a hole. */
export const CORPUS_DISK_BYTES = 4 * MiB;

export interface CorpusCase {
  name: string;
  file: string;
  /** What the inspector must say the image is. */
  format: InspectedFormat;
  /** Finding codes that must be among the inspector's findings; [] for an honest image. */
  findings: FindingCode[];
  /** For honest images: qemu-img's format name, to compare the virtual size with `qemu-img info`. */
  qemuFormat?: string;
  /** The disk_format a user would declare for it. */
  declared: string;
}

async function tool(command: string, args: string[], input?: string): Promise<string> {
  try {
    const child = run(command, args, { maxBuffer: 16 * MiB });
    if (input !== undefined) child.child.stdin!.end(input);
    return (await child).stdout;
  } catch (err) {
    const e = err as Error & { stderr?: string };
    throw new Error(`${command} ${args.join(" ")} failed: ${e.stderr?.trim() || e.message}`);
  }
}

async function readAt(file: string, offset: number, length: number): Promise<Buffer> {
  const handle = await fs.open(file, "r");
  try {
    const buffer = Buffer.alloc(length);
    await handle.read(buffer, 0, length, offset);
    return buffer;
  } finally {
    await handle.close();
  }
}

/** Overwrites bytes of `file` at `offset` (negative: from the end). */
export async function patch(file: string, offset: number, bytes: Uint8Array): Promise<void> {
  const handle = await fs.open(file, "r+");
  try {
    const at = offset < 0 ? (await handle.stat()).size + offset : offset;
    await handle.write(bytes, 0, bytes.length, at);
  } finally {
    await handle.close();
  }
}

const be32 = (value: number) => Buffer.from([value >>> 24, (value >>> 16) & 0xff, (value >>> 8) & 0xff, value & 0xff]);
const be64 = (value: bigint) => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(value);
  return b;
};
const le32 = (value: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(value);
  return b;
};
const le64 = (value: bigint) => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(value);
  return b;
};

async function copy(from: string, to: string): Promise<string> {
  await fs.copyFile(from, to);
  return to;
}

/** Rewrites a VHD footer (at `offset`) with `change` applied and its checksum made right again. */
async function patchVhdFooter(file: string, offset: number, change: (footer: Buffer) => void): Promise<void> {
  const footer = await readAt(file, offset < 0 ? (await fs.stat(file)).size + offset : offset, 512);
  change(footer);
  footer.writeUInt32BE(0, 64);
  let sum = 0;
  for (const byte of footer) sum += byte;
  footer.writeUInt32BE(~sum >>> 0, 64);
  await patch(file, offset, footer);
}

/** Replaces the text of a sparse VMDK's embedded descriptor, keeping its area's size. */
async function patchVmdkDescriptor(file: string, change: (text: string) => string): Promise<void> {
  const header = await readAt(file, 0, 512);
  const offset = Number(header.readBigUInt64LE(28)) * 512;
  const size = Number(header.readBigUInt64LE(36)) * 512;
  const area = await readAt(file, offset, size);
  const end = area.indexOf(0);
  const text = change(area.subarray(0, end < 0 ? size : end).toString("latin1"));
  if (text.length > size) throw new Error("the patched descriptor does not fit its area");
  const replaced = Buffer.alloc(size);
  replaced.write(text, "latin1");
  await patch(file, offset, replaced);
}

/** Rewrites both VHDX region tables with `change` applied and their CRC-32C made right again. */
async function patchVhdxRegionTables(file: string, change: (table: Buffer) => void): Promise<void> {
  for (const at of [192 * KiB, 256 * KiB]) {
    const table = await readAt(file, at, 64 * KiB);
    change(table);
    table.writeUInt32LE(0, 4);
    table.writeUInt32LE(crc32c(table), 4);
    await patch(file, at, table);
  }
}

/** Where a VHDX's metadata region starts (from its first region table). */
async function vhdxMetadataOffset(file: string): Promise<number> {
  const table = await readAt(file, 192 * KiB, 64 * KiB);
  const count = table.readUInt32LE(8);
  for (let i = 0; i < count; i++) {
    const entry = 16 + i * 32;
    if (table.subarray(entry, entry + 4).toString("hex") === "06a27c8b") return Number(table.readBigUInt64LE(entry + 16));
  }
  throw new Error("no metadata region");
}

/**
 * A streamOptimized VMDK as VMware streams it: the header's grain directory offset is
 * GD_AT_END and the file ends with a footer marker, a copy of the header (the footer,
 * `change` applied) and an end-of-stream marker.
 */
async function withVmdkFooter(source: string, out: string, change: (footer: Buffer) => void): Promise<string> {
  await copy(source, out);
  const footer = await readAt(out, 0, 512);
  change(footer);
  await patch(out, 56, le64(0xffffffffffffffffn));
  const marker = Buffer.alloc(512);
  marker.writeBigUInt64LE(1n, 0); // one sector of footer follows
  marker.writeUInt32LE(3, 12); // MARKER_FOOTER
  await fs.appendFile(out, Buffer.concat([marker, footer, Buffer.alloc(512)]));
  return out;
}

/** A minimal ISO 9660 image made by xorriso from one small file. */
async function buildIso(dir: string, out: string, options: string[] = []): Promise<string> {
  const content = path.join(dir, `iso-content-${path.basename(out)}`);
  await fs.mkdir(content, { recursive: true });
  await fs.writeFile(path.join(content, "README.TXT"), "an honest ISO 9660 image\n");
  await tool("xorriso", ["-as", "mkisofs", "-quiet", "-V", "ITX_TEST", ...options, "-o", out, content]);
  return out;
}

/** A raw disk with a partition table written by sfdisk ("gpt" or "dos"). */
async function buildPartitioned(source: string, out: string, label: "gpt" | "dos"): Promise<string> {
  await copy(source, out);
  await tool("sfdisk", ["--quiet", "--no-reread", "--no-tell-kernel", out], `label: ${label}\nstart=2048, size=4096, type=${label === "gpt" ? "0FC63DAF-8483-4772-8E79-3D69D8477DE4" : "83"}\n`);
  return out;
}

const q = (args: string[]) => qemuImg(args);

/** Builds every case under `dir`. */
export async function buildCorpus(dir: string): Promise<CorpusCase[]> {
  const at = (name: string) => path.join(dir, name);
  const raw = at("disk.raw");
  const half = CORPUS_DISK_BYTES / 2;
  await fs.writeFile(raw, Buffer.concat([randomBytes(half), Buffer.alloc(half)]));
  const convert = async (name: string, format: string, options?: string) => {
    await q(["convert", "-f", "raw", "-O", format, ...(options ? ["-o", options] : []), raw, at(name)]);
    return at(name);
  };
  const cases: CorpusCase[] = [];
  const honest = (name: string, file: string, format: InspectedFormat, qemuFormat: string, declared: string = format) =>
    cases.push({ name, file, format, findings: [], qemuFormat, declared });
  const bad = (name: string, file: string, format: InspectedFormat, findings: FindingCode[], declared: string = format) =>
    cases.push({ name, file, format, findings, declared });

  // Honest images, one per format and shape.
  honest("raw", raw, "raw", "raw");
  const qcow2 = await convert("honest.qcow2", "qcow2");
  honest("qcow2 version 3", qcow2, "qcow2", "qcow2");
  honest("qcow2 version 2", await convert("v2.qcow2", "qcow2", "compat=0.10"), "qcow2", "qcow2");
  honest("qcow2 with 2 MiB clusters", await convert("big-cluster.qcow2", "qcow2", "cluster_size=2M"), "qcow2", "qcow2");
  const sparseVmdk = await convert("sparse.vmdk", "vmdk", "subformat=monolithicSparse");
  honest("vmdk monolithicSparse", sparseVmdk, "vmdk", "vmdk");
  const streamVmdk = await convert("stream.vmdk", "vmdk", "subformat=streamOptimized");
  honest("vmdk streamOptimized", streamVmdk, "vmdk", "vmdk");
  honest("vmdk streamOptimized with its grain directory in a footer", await withVmdkFooter(streamVmdk, at("footer.vmdk"), () => {}), "vmdk", "vmdk");
  const dynamicVhd = await convert("dynamic.vhd", "vpc", "subformat=dynamic,force_size=on");
  honest("vhd dynamic", dynamicVhd, "vhd", "vpc");
  honest("vhd dynamic, CHS-rounded", await convert("chs.vhd", "vpc", "subformat=dynamic"), "vhd", "vpc");
  const fixedVhd = await convert("fixed.vhd", "vpc", "subformat=fixed,force_size=on");
  honest("vhd fixed", fixedVhd, "vhd", "vpc");
  const vhdx = await convert("honest.vhdx", "vhdx");
  honest("vhdx", vhdx, "vhdx", "vhdx");
  const vdi = await convert("honest.vdi", "vdi");
  honest("vdi", vdi, "vdi", "vdi");
  honest("vdi static", await convert("static.vdi", "vdi", "static=on"), "vdi", "vdi");
  const iso = await buildIso(dir, at("honest.iso"));
  honest("iso", iso, "iso", "raw");
  const gpt = await buildPartitioned(raw, at("gpt.raw"), "gpt");
  honest("raw disk with a GPT (and its protective MBR)", gpt, "gpt", "raw", "raw");
  honest("raw disk with an MBR", await buildPartitioned(raw, at("mbr.raw"), "dos"), "mbr", "raw", "raw");
  honest("hybrid iso (ISO 9660 with an MBR)", await buildIso(dir, at("hybrid-mbr.iso"), ["-partition_offset", "16"]), "iso", "raw");
  const efi = at("efi.img");
  await fs.writeFile(efi, Buffer.alloc(512 * KiB));
  const gptIso = await buildIso(dir, at("hybrid-gpt.iso"), ["-append_partition", "2", "0xef", efi, "-appended_part_as_gpt"]);
  honest("hybrid iso (ISO 9660 with a GPT and its protective MBR)", gptIso, "iso", "raw");
  const gptInVhd = await convert("gpt-in-fixed.vhd", "vpc", "subformat=fixed,force_size=on");
  await patch(gptInVhd, 0, await readAt(gpt, 0, 64 * KiB));
  honest("fixed vhd whose disk has a GPT", gptInVhd, "vhd", "vpc");

  // qcow2
  const backing = at("backing.qcow2");
  await q(["create", "-f", "qcow2", "-u", "-b", "/etc/passwd", "-F", "raw", backing, "1M"]);
  bad("qcow2 with backing file /etc/passwd", backing, "qcow2", ["QCOW2_BACKING_FILE"]);
  // The name of a scratch file, patched to /etc////passwd of the same length: qemu-img never touches /etc/passwd.
  const scratch = at("scratch-data-file.img");
  const dataFile = at("data-file.qcow2");
  await q(["create", "-f", "qcow2", "-o", `data_file=${scratch}`, dataFile, "1M"]);
  const image = await fs.readFile(dataFile);
  const nameAt = image.indexOf(Buffer.from(scratch, "latin1"));
  if (nameAt < 0) throw new Error("the data file name is not in the qcow2 header");
  await patch(dataFile, nameAt, Buffer.from(`/etc${"/".repeat(scratch.length - "/etcpasswd".length)}passwd`, "latin1"));
  await fs.rm(scratch);
  bad("qcow2 with an external data file naming /etc/passwd", dataFile, "qcow2", ["QCOW2_DATA_FILE"]);
  const dataBitOnly = await copy(qcow2, at("data-bit.qcow2"));
  await patch(dataBitOnly, 72, be64(1n << 2n));
  bad("qcow2 with the external data file bit and no name", dataBitOnly, "qcow2", ["QCOW2_DATA_FILE"]);
  for (const [name, bits] of [["bit 5", 1n << 5n], ["bit 63", 1n << 63n]] as const) {
    const unknown = await copy(qcow2, at(`unknown-${bits}.qcow2`));
    await patch(unknown, 72, be64(bits));
    bad(`qcow2 with unknown incompatible feature ${name}`, unknown, "qcow2", ["QCOW2_UNKNOWN_FEATURES"]);
  }
  const encrypted = at("encrypted.qcow2");
  await q(["create", "-f", "qcow2", "--object", "secret,id=sec0,data=itx-test", "-o", "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10", encrypted, "1M"]);
  bad("qcow2 encrypted with LUKS", encrypted, "qcow2", ["QCOW2_ENCRYPTED"]);
  const aes = await copy(qcow2, at("aes.qcow2"));
  await patch(aes, 32, be32(1));
  bad("qcow2 with the old AES encryption method", aes, "qcow2", ["QCOW2_ENCRYPTED"]);
  const version4 = await copy(qcow2, at("v4.qcow2"));
  await patch(version4, 4, be32(4));
  bad("qcow2 version 4", version4, "qcow2", ["QCOW2_VERSION"]);
  const clusterBits = await copy(qcow2, at("cluster-bits.qcow2"));
  await patch(clusterBits, 20, be32(31));
  bad("qcow2 with cluster_bits 31", clusterBits, "qcow2", ["QCOW2_HEADER_INVALID"]);
  const l1 = await copy(qcow2, at("l1.qcow2"));
  await patch(l1, 36, be32(0x7fffffff));
  bad("qcow2 with a 16 GiB L1 table", l1, "qcow2", ["QCOW2_HEADER_INVALID"]);
  const corrupt = await copy(qcow2, at("corrupt.qcow2"));
  await patch(corrupt, 72, be64(1n << 1n));
  bad("qcow2 marked corrupt", corrupt, "qcow2", ["QCOW2_CORRUPT"]);
  const short = at("short.qcow2");
  await fs.writeFile(short, (await readAt(qcow2, 0, 50)));
  bad("qcow2 cut short in its header", short, "qcow2", ["TRUNCATED"]);

  // vmdk
  const flat = at("flat.vmdk");
  await fs.writeFile(flat, '# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="monolithicFlat"\nRW 8 FLAT "/etc/passwd" 0\n');
  bad("vmdk monolithicFlat whose extent is /etc/passwd", flat, "vmdk", ["VMDK_CREATE_TYPE", "VMDK_EXTENT_FILE"]);
  const extent = await copy(sparseVmdk, at("extent.vmdk"));
  await patchVmdkDescriptor(extent, (text) => text.replace(/^RW (\d+) SPARSE ".*"$/m, 'RW 8 FLAT "/etc/passwd" 0\nRW $1 SPARSE "extent.vmdk"'));
  bad("monolithicSparse vmdk with an extra FLAT extent naming /etc/passwd", extent, "vmdk", ["VMDK_EXTENT_FILE"]);
  const twoGb = await copy(sparseVmdk, at("twogb.vmdk"));
  await patchVmdkDescriptor(twoGb, (text) => text.replace('createType="monolithicSparse"', 'createType="twoGbMaxExtentSparse"'));
  bad("vmdk with createType twoGbMaxExtentSparse", twoGb, "vmdk", ["VMDK_CREATE_TYPE"]);
  const parent = await copy(sparseVmdk, at("parent.vmdk"));
  await patchVmdkDescriptor(parent, (text) => text.replace("parentCID=ffffffff", 'parentCID=12345678\nparentFileNameHint="/etc/passwd"'));
  bad("vmdk with a parent /etc/passwd", parent, "vmdk", ["VMDK_PARENT"]);
  const bigDescriptor = at("big-descriptor.vmdk");
  await fs.writeFile(bigDescriptor, `# Disk DescriptorFile\ncreateType="monolithicSparse"\n${"# padding\n".repeat(150_000)}RW 8 SPARSE "x.vmdk"\n`);
  bad("vmdk descriptor file over 1 MiB", bigDescriptor, "vmdk", ["VMDK_DESCRIPTOR_TOO_LARGE"]);
  const bigEmbedded = await copy(sparseVmdk, at("big-embedded.vmdk"));
  await patch(bigEmbedded, 36, le64(4096n));
  bad("sparse vmdk declaring a 2 MiB descriptor", bigEmbedded, "vmdk", ["VMDK_DESCRIPTOR_TOO_LARGE"]);
  const footer = await withVmdkFooter(streamVmdk, at("footer-mismatch.vmdk"), (f) => f.writeBigUInt64LE(1n << 40n, 12));
  bad("streamOptimized vmdk whose footer disagrees with its header", footer, "vmdk", ["VMDK_FOOTER_MISMATCH"]);
  const noVmdkFooter = await copy(streamVmdk, at("no-footer.vmdk"));
  await patch(noVmdkFooter, 56, le64(0xffffffffffffffffn));
  bad("streamOptimized vmdk whose grain directory is in a footer it lacks", noVmdkFooter, "vmdk", ["VMDK_FOOTER_MISMATCH"]);

  // vhd
  const checksum = await copy(fixedVhd, at("checksum.vhd"));
  const footerByte = await readAt(checksum, -512 + 40 + (await fs.stat(checksum)).size, 1);
  await patch(checksum, -512 + 40, Buffer.from([footerByte[0]! ^ 0x01]));
  bad("vhd with a bad footer checksum", checksum, "vhd", ["VHD_CHECKSUM"]);
  const mismatch = await copy(dynamicVhd, at("mismatch.vhd"));
  await patchVhdFooter(mismatch, 0, (f) => f.writeBigUInt64BE(f.readBigUInt64BE(48) * 2n, 48));
  bad("dynamic vhd whose footer copy disagrees with its footer", mismatch, "vhd", ["VHD_FOOTER_MISMATCH"]);
  const noFooter = await copy(dynamicVhd, at("no-footer.vhd"));
  await fs.truncate(noFooter, (await fs.stat(noFooter)).size - 512);
  bad("dynamic vhd without its footer", noFooter, "vhd", ["VHD_FOOTER_MISSING"]);
  const differencing = await copy(dynamicVhd, at("differencing.vhd"));
  for (const offset of [0, -512]) await patchVhdFooter(differencing, offset, (f) => f.writeUInt32BE(4, 60));
  bad("differencing vhd", differencing, "vhd", ["VHD_DIFFERENCING"]);

  // vhdx
  const badHeaders = await copy(vhdx, at("headers.vhdx"));
  for (const offset of [64 * KiB + 200, 128 * KiB + 200]) await patch(badHeaders, offset, Buffer.from([0xff]));
  bad("vhdx whose headers both fail their CRC-32C", badHeaders, "vhdx", ["VHDX_HEADER_INVALID"]);
  const regions = await copy(vhdx, at("regions.vhdx"));
  await patchVhdxRegionTables(regions, (t) => t.writeUInt32LE(5000, 8));
  bad("vhdx with 5000 regions", regions, "vhdx", ["VHDX_REGION_TABLE_INVALID"]);
  const bigMetadata = await copy(vhdx, at("big-metadata.vhdx"));
  await patchVhdxRegionTables(bigMetadata, (t) => {
    for (let i = 0; i < t.readUInt32LE(8); i++) if (t.subarray(16 + i * 32, 20 + i * 32).toString("hex") === "06a27c8b") t.writeUInt32LE(64 * MiB, 16 + i * 32 + 24);
  });
  bad("vhdx with a 64 MiB metadata region", bigMetadata, "vhdx", ["VHDX_METADATA_INVALID"]);
  const vhdxParent = await copy(vhdx, at("parent.vhdx"));
  const metadataAt = await vhdxMetadataOffset(vhdxParent);
  const metadata = await readAt(vhdxParent, metadataAt, 64 * KiB);
  for (let i = 0; i < metadata.readUInt16LE(10); i++) {
    const entry = 32 + i * 32;
    // File parameters (CAA16737-...): flags u32 after the block size; bit 1 says "has parent".
    if (metadata.subarray(entry, entry + 4).toString("hex") === "3767a1ca") {
      await patch(vhdxParent, metadataAt + metadata.readUInt32LE(entry + 16) + 4, le32(2));
    }
  }
  bad("vhdx that says it has a parent", vhdxParent, "vhdx", ["VHDX_DIFFERENCING"]);

  // vdi, qed, luks
  const vdiDiff = await copy(vdi, at("differencing.vdi"));
  await patch(vdiDiff, 0x4c, le32(4));
  bad("differencing vdi", vdiDiff, "vdi", ["VDI_DIFFERENCING"]);
  const vdiBlocks = await copy(vdi, at("blocks.vdi"));
  await patch(vdiBlocks, 0x178, le32(4096));
  bad("vdi with 4 KiB blocks", vdiBlocks, "vdi", ["VDI_HEADER_INVALID"]);
  const qed = at("image.qed");
  await q(["create", "-f", "qed", qed, "4M"]);
  bad("qed", qed, "qed", ["QED_REFUSED"], "raw");
  const luks = at("image.luks");
  await q(["create", "-f", "luks", "--object", "secret,id=sec0,data=itx-test", "-o", "key-secret=sec0,iter-time=10", luks, "1M"]);
  bad("luks", luks, "luks", ["LUKS_ENCRYPTED"], "raw");

  // polyglots
  const qcow2Header = await readAt(qcow2, 0, 440);
  const qcow2InGpt = await copy(gpt, at("qcow2-in-gpt.raw"));
  await patch(qcow2InGpt, 0, qcow2Header);
  bad("raw GPT disk with a qcow2 header in its boot code", qcow2InGpt, "qcow2", ["POLYGLOT"], "raw");
  const qcow2InIso = await copy(iso, at("qcow2-in-iso.iso"));
  await patch(qcow2InIso, 0, await readAt(qcow2, 0, 32 * KiB));
  bad("iso with a qcow2 at 0", qcow2InIso, "qcow2", ["POLYGLOT"], "iso");
  const qcow2InVhd = await copy(fixedVhd, at("qcow2-in-fixed.vhd"));
  await patch(qcow2InVhd, 0, await readAt(qcow2, 0, 64 * KiB));
  bad("fixed vhd whose data starts with a qcow2", qcow2InVhd, "qcow2", ["POLYGLOT"], "vhd");
  const vmdkVhd = await copy(sparseVmdk, at("vmdk-and-vhd.vmdk"));
  await fs.appendFile(vmdkVhd, await readAt(fixedVhd, (await fs.stat(fixedVhd)).size - 512, 512));
  bad("sparse vmdk with a vhd footer appended", vmdkVhd, "vmdk", ["POLYGLOT"]);
  return cases;
}

