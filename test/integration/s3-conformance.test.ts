/**
 * The store conformance suite on store-s3, against a real S3 endpoint: Swift's s3api,
 * with a small partSize so that the large object goes up as a multipart upload.
 */
import { tmpdir } from "node:os";
import plugin from "../../plugins/store-s3/index.js";
import { runStoreConformance } from "../../src/testing/index.js";
import { createBucket, removeBucket, s3Client, s3StoreOptions } from "../helpers/s3.js";

const client = s3Client();

runStoreConformance({
  name: "store-s3 (Swift s3api)",
  plugin,
  config: async () => ({
    name: "conformance",
    region: "test",
    options: s3StoreOptions(await createBucket(client, "itx-conformance"), { partSize: 5 * 1024 * 1024 }),
    dataDir: tmpdir(),
  }),
  cleanup: (config) => removeBucket(client, config.options.bucket as string),
  // A closed port on loopback: nothing listens there.
  unavailableConfig: () => ({
    name: "unreachable",
    region: "test",
    options: s3StoreOptions("itx-unreachable", { endpoint: "http://127.0.0.1:9" }),
    dataDir: tmpdir(),
  }),
});
