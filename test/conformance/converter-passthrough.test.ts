import plugin from "../../plugins/converter-passthrough/index.js";
import { runConverterConformance } from "../../src/testing/index.js";

// A rename finishes before any abort can come, so the aborted job needs no large image.
runConverterConformance({ name: "converter-passthrough", plugin, cancelImageBytes: 32 * 1024 * 1024 });
