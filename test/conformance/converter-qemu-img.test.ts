import plugin from "../../plugins/converter-qemu-img/index.js";
import { runConverterConformance } from "../../src/testing/index.js";

runConverterConformance({ name: "converter-qemu-img", plugin });
