/** Runs a plugin's register() as the loader would, without a registry: the conformance kit's helper. */
export { registerForTest as registerPlugin } from "../../src/testing/register.js";
