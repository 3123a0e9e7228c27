import { defineConfig } from "vitest/config";

export default defineConfig({
  // Plugins written against the public entry point (plugins/converter-decompress) run from source.
  resolve: { alias: { "imagetransfer/plugin-api": new URL("./src/plugins/plugin-api.ts", import.meta.url).pathname } },
  test: {
    include: ["test/**/*.test.ts"],
    setupFiles: ["test/setup.ts"],
    // Starts a real Swift (scripts/swift.sh) unless SWIFT_AUTH_URL names one; the first start installs packages.
    globalSetup: ["test/global-setup.ts"],
    // Integration tests start servers and databases; two cores run two files at a time.
    maxWorkers: 2,
    testTimeout: 30_000,
    hookTimeout: 180_000,
    // Each test file gets a fresh module graph, so tsyringe containers never leak across files.
    isolate: true,
  },
});
