import { describe, expect, it } from "vitest";
import { ProgressReporter } from "../../src/core/task-hub.js";

describe("progress reporting", () => {
  it("writes every stage at least once, and the last sample before a state change, even under load", async () => {
    const written: string[] = [];
    // A slow database: each write takes 15 ms.
    const reporter = new ProgressReporter(async (p) => {
      await new Promise((r) => setTimeout(r, 15));
      written.push(`${p.stage}:${p.bytesDone}`);
    });
    for (const stage of ["fetching", "inspecting", "converting", "storing"]) {
      for (let i = 1; i <= 50; i++) reporter.report({ stage, bytesDone: i, bytesTotal: 50 });
    }
    await reporter.flush();
    const stages = written.map((w) => w.split(":")[0]);
    expect(stages.filter((stage, i) => stage !== stages[i - 1])).toEqual(["fetching", "inspecting", "converting", "storing"]);
    // Each stage's last write is its last sample, and a handful of writes did the work of 200 reports.
    for (const stage of ["fetching", "inspecting", "converting", "storing"]) {
      expect(written.filter((w) => w.startsWith(stage)).at(-1)).toBe(`${stage}:50`);
    }
    expect(written.length).toBeLessThanOrEqual(8);
  });
});
