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

describe("progress reporting while the pipeline keeps reporting", () => {
  it("finishes a flush without waiting for progress reported after it began, and keeps to the interval", async () => {
    const writes: number[] = [];
    const reporter = new ProgressReporter(async () => {
      await new Promise((r) => setTimeout(r, 30));
      writes.push(Date.now());
    });
    let done = 0;
    const feeding = setInterval(() => reporter.report({ stage: "fetching", bytesDone: ++done, bytesTotal: 1e9 }), 5);
    try {
      await new Promise((r) => setTimeout(r, 50));
      const started = Date.now();
      await reporter.flush();
      // A flush writes what was due, not everything that keeps arriving.
      expect(Date.now() - started).toBeLessThan(500);
      const before = writes.length;
      await new Promise((r) => setTimeout(r, 1000));
      // About ten writes a second while progress streams in, not one per report.
      expect(writes.length - before).toBeLessThanOrEqual(12);
    } finally {
      clearInterval(feeding);
      await reporter.flush();
    }
  });
});
