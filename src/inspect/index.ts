/** The format inspector: what an image is and what is wrong with it, from its bytes alone. */
export { ImageInspector, InspectionError, HEAD_BYTES, TAIL_BYTES, MAX_REGION_BYTES, MAX_RETAINED_BYTES, type InspectionReport } from "./inspector.js";
export { FINDING_CODES, isUnsafe, type Finding, type FindingCode } from "./findings.js";
export { INSPECTED_FORMATS, type InspectedFormat } from "./types.js";
export { assessUpload, assessConverted, isEncrypted, type Refusal } from "./checks.js";

import { ImageInspector, type InspectionReport } from "./inspector.js";

/** Inspects every chunk of `chunks` in order (a file stream, a test's buffers). */
export async function inspectChunks(chunks: AsyncIterable<Uint8Array> | Iterable<Uint8Array>): Promise<InspectionReport> {
  const inspector = new ImageInspector();
  for await (const chunk of chunks) inspector.write(chunk);
  return inspector.finish();
}
