/**
 * The plugin conformance kit, imported as "imagetransfer/testing": vitest suites that a
 * plugin author runs from their own test file to prove a plugin keeps the contract of
 * "imagetransfer/plugin-api" before any host loads it.
 */
export { ABORT_DEADLINE_MS, runStoreConformance, type StoreConformanceOptions } from "./store-conformance.js";
export { runConverterConformance, type Conversion, type ConverterConformanceOptions } from "./converter-conformance.js";
