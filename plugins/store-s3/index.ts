/**
 * The built-in "s3" store: objects in one S3 bucket (AWS or any S3-compatible service),
 * through the AWS SDK for JavaScript v3. Seed URIs are s3://STORE/KEY, KEY being the
 * object's key in the store's bucket. Options and their defaults: options.ts and README.md.
 */
import { defineStorePlugin, type StoreConfig } from "../../src/plugins/plugin-api.js";
import { parseOptions } from "./options.js";

export default defineStorePlugin({
  schemes: ["s3"],
  capabilities: {
    readRanges: true,
    write: true,
    delete: true,
    list: true,
    presignGet: true,
    presignPut: true,
    // S3's limit for one object. A store's own is lower below partSize 525 MiB: 10,000 parts of partSize.
    maxObjectSize: 5 * 1024 ** 4,
  },
  async open(config: StoreConfig) {
    const options = parseOptions(config);
    // The SDK takes a quarter of a second to load: only services with an S3 store pay for it.
    const { S3Store } = await import("./s3-store.js");
    return new S3Store(options);
  },
});
