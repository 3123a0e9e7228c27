/**
 * qcow2, from QEMU's docs/interop/qcow2.txt. Header fields are big-endian:
 *
 *   0 magic "QFI\xfb"          4 version (2 or 3)        8 backing_file_offset u64
 *  16 backing_file_size u32    20 cluster_bits (9..21)  24 size (virtual, bytes) u64
 *  32 crypt_method (0 none)    36 l1_size u32           40 l1_table_offset u64
 *  48 refcount_table_offset   56 refcount_table_clusters 60 nb_snapshots  64 snapshots_offset
 *  version 3 only: 72 incompatible_features u64, 80 compatible_features, 88 autoclear_features,
 *  96 refcount_order u32, 100 header_length u32, 104 compression_type u8 (when header_length > 104).
 *
 * Header extensions follow the header (at 72 for version 2, header_length for 3) inside the
 * first cluster: type u32, length u32, data padded to 8 bytes, until type 0. The external
 * data file's name is extension 0x44415441; the full disk encryption header is 0x0537be77.
 */
import { finding, type Finding } from "../findings.js";
import { hasMagic, latin1, printable, safe, u32, u64, type Bytes } from "../bytes.js";
import type { Detection, Detector, EndView, HeadView, Region } from "../types.js";

const INCOMPATIBLE = ["dirty", "corrupt", "external data file", "compression type", "extended L2 entries"];
const KNOWN_INCOMPATIBLE = (1n << BigInt(INCOMPATIBLE.length)) - 1n;
const CORRUPT_BIT = 1n << 1n;
const DATA_FILE_BIT = 1n << 2n;
const EXT_END = 0;
const EXT_DATA_FILE = 0x44415441;
const EXT_ENCRYPTION = 0x0537be77;
/** Extensions qemu reads are few; a header that lists more is malformed or hostile. */
const MAX_EXTENSIONS = 64;
/** qemu's own caps: 32 MiB of L1 table, 8 MiB of refcount table, 64 Ki snapshots, 1023-byte backing name. */
const MAX_L1_BYTES = 32 * 1024 * 1024;
const MAX_REFCOUNT_TABLE_BYTES = 8 * 1024 * 1024;
const MAX_SNAPSHOTS = 65536;
const MAX_BACKING_NAME = 1023;
/** The first cluster is at most 2 MiB; extensions and the backing name must lie inside it. */
const MAX_CLUSTER_BYTES = 2 * 1024 * 1024;

export function qcow2Detector(): Detector {
  let cluster: Region | undefined;
  return {
    format: "qcow2",
    onHead({ head, request }: HeadView) {
      if (!hasMagic(head, 0, "QFI\xfb")) return;
      const bits = u32(head, 20, false);
      if (bits !== undefined && bits >= 9 && bits <= 21) cluster = request(0, Math.min(2 ** bits, MAX_CLUSTER_BYTES));
    },
    finish({ head, size }: EndView): Detection | undefined {
      if (!hasMagic(head, 0, "QFI\xfb")) return undefined;
      if (head.length < 72) return { findings: [finding("TRUNCATED", `the qcow2 header is cut short: the image is ${size} bytes`)] };
      return inspect(head, cluster, size);
    },
  };
}

function inspect(head: Bytes, cluster: Region | undefined, fileSize: number): Detection {
  const findings: Finding[] = [];
  const bad = (what: string) => findings.push(finding("QCOW2_HEADER_INVALID", `the qcow2 header's ${what}`));
  const version = u32(head, 4, false)!;
  const virtualSize = u64(head, 24, false)!;
  if (version !== 2 && version !== 3) {
    return { findings: [finding("QCOW2_VERSION", `the qcow2 header says version ${version}; only versions 2 and 3 exist`)] };
  }
  const clusterBits = u32(head, 20, false)!;
  if (clusterBits < 9 || clusterBits > 21) bad(`cluster_bits ${clusterBits} is outside 9..21`);
  const clusterSize = 2 ** Math.min(Math.max(clusterBits, 9), 21);
  const aligned = (offset: bigint) => offset % BigInt(clusterSize) === 0n;

  const backingOffset = u64(head, 8, false)!;
  const backingSize = u32(head, 16, false)!;
  if (backingOffset !== 0n) {
    findings.push(finding("QCOW2_BACKING_FILE", `the qcow2 image names a backing file${backingName(cluster, backingOffset, backingSize)}, which a converter would read from the host`));
  }
  const crypt = u32(head, 32, false)!;
  if (crypt !== 0) findings.push(finding("QCOW2_ENCRYPTED", `the qcow2 image is encrypted (${crypt === 1 ? "AES" : crypt === 2 ? "LUKS" : `method ${crypt}`})`));

  const l1Size = u32(head, 36, false)!;
  const l1Offset = u64(head, 40, false)!;
  const refcountOffset = u64(head, 48, false)!;
  const refcountClusters = u32(head, 56, false)!;
  const snapshots = u32(head, 60, false)!;
  const snapshotsOffset = u64(head, 64, false)!;
  if (l1Size * 8 > MAX_L1_BYTES) bad(`L1 table of ${l1Size} entries exceeds ${MAX_L1_BYTES / 8}`);
  // Each L1 entry maps one L2 table of clusterSize/8 entries of one cluster each (fewer with extended L2 entries: this is the lenient bound).
  const perL1 = (BigInt(clusterSize) * BigInt(clusterSize)) / 8n;
  if (BigInt(l1Size) * perL1 < virtualSize) bad(`L1 table of ${l1Size} entries cannot map a disk of ${virtualSize} bytes`);
  if (l1Size > 0 && (l1Offset === 0n || !aligned(l1Offset))) bad(`L1 table offset ${l1Offset} is not a cluster boundary`);
  if (refcountOffset === 0n || !aligned(refcountOffset)) bad(`refcount table offset ${refcountOffset} is not a cluster boundary`);
  if (refcountClusters * clusterSize > MAX_REFCOUNT_TABLE_BYTES) bad(`refcount table of ${refcountClusters} clusters is too large`);
  if (snapshots > MAX_SNAPSHOTS) bad(`snapshot count ${snapshots} exceeds ${MAX_SNAPSHOTS}`);
  if (snapshots > 0 && !aligned(snapshotsOffset)) bad(`snapshot table offset ${snapshotsOffset} is not a cluster boundary`);
  if (safe(virtualSize) === undefined) bad(`virtual size ${virtualSize} is out of range`);

  let headerLength = 72;
  let dataFileBit = false;
  if (version === 3) {
    if (head.length < 104) return { findings: [...findings, finding("TRUNCATED", `the qcow2 version 3 header is cut short: the image is ${fileSize} bytes`)] };
    const incompatible = u64(head, 72, false)!;
    const unknown = incompatible & ~KNOWN_INCOMPATIBLE;
    if (unknown !== 0n) {
      findings.push(finding("QCOW2_UNKNOWN_FEATURES", `the qcow2 image sets incompatible feature bits qemu's format does not define (0x${unknown.toString(16)})`));
    }
    if (incompatible & CORRUPT_BIT) findings.push(finding("QCOW2_CORRUPT", "the qcow2 image is marked corrupt"));
    if (incompatible & DATA_FILE_BIT) dataFileBit = true;
    const refcountOrder = u32(head, 96, false)!;
    if (refcountOrder > 6) bad(`refcount_order ${refcountOrder} exceeds 6`);
    headerLength = u32(head, 100, false)!;
    if (headerLength < 104 || headerLength % 8 !== 0 || headerLength > clusterSize) bad(`header length ${headerLength} is out of range`);
  }
  const extensions = readExtensions(cluster, headerLength);
  if (typeof extensions === "string") findings.push(finding("QCOW2_HEADER_INVALID", extensions));
  else if (extensions === undefined) findings.push(cluster!.missing("the qcow2 header extensions"));
  const read = typeof extensions === "object" ? extensions : { encrypted: false };
  if (dataFileBit || read.dataFile !== undefined) {
    const name = read.dataFile === undefined ? "" : ` "${printable(read.dataFile)}"`;
    findings.push(finding("QCOW2_DATA_FILE", `the qcow2 image keeps its data in an external file${name}, which a converter would read from the host`));
  }
  if (read.encrypted) findings.push(finding("QCOW2_ENCRYPTED", "the qcow2 image carries an encryption header"));
  return { virtualSize: safe(virtualSize), findings };
}

/**
 * The header extensions that matter here: an external data file's name (a finding even
 * without the feature bit) and an encryption header. A string says why they cannot be read;
 * undefined, that the first cluster is missing.
 */
function readExtensions(cluster: Region | undefined, start: number): { dataFile?: string; encrypted: boolean } | string | undefined {
  const bytes = cluster?.bytes;
  if (!bytes) return cluster ? undefined : { encrypted: false };
  const found: { dataFile?: string; encrypted: boolean } = { encrypted: false };
  let at = start;
  for (let count = 0; count < MAX_EXTENSIONS; count++) {
    const type = u32(bytes, at, false);
    const length = u32(bytes, at + 4, false);
    if (type === undefined || length === undefined) return "the qcow2 header extensions run past the first cluster";
    if (type === EXT_END) return found;
    const end = at + 8 + Math.ceil(length / 8) * 8;
    if (end > bytes.length) return `the qcow2 header extension 0x${type.toString(16)} runs past the first cluster`;
    if (type === EXT_DATA_FILE) found.dataFile = latin1(bytes.subarray(at + 8, at + 8 + length));
    if (type === EXT_ENCRYPTION) found.encrypted = true;
    at = end;
  }
  return `the qcow2 header lists more than ${MAX_EXTENSIONS} extensions`;
}

function backingName(cluster: Region | undefined, offset: bigint, size: number): string {
  const bytes = cluster?.bytes;
  const start = safe(offset);
  if (!bytes || start === undefined || size === 0 || size > MAX_BACKING_NAME || start + size > bytes.length) return "";
  return ` "${printable(latin1(bytes.subarray(start, start + size)))}"`;
}
