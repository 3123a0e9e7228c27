import { describe, expect, it } from "vitest";
import { TaskStateSchema } from "../../src/gen/imagetransfer/v1/task_pb.js";
import {
  enumName,
  formatBytes,
  formatDuration,
  formatTable,
  parseEnum,
  ProgressMeter,
  renderProgress,
  type ProgressSample,
} from "../../src/cli/output.js";

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

/** A meter on a clock the test moves by hand. */
function fixedClock() {
  let t = 1_000_000;
  const meter = new ProgressMeter(() => t, 5_000);
  return {
    meter,
    at(ms: number, sample?: Partial<ProgressSample>) {
      t = 1_000_000 + ms;
      if (sample) meter.update({ state: "running", stage: "fetch", bytesDone: 0, bytesTotal: GiB, ...sample });
    },
  };
}

describe("formatBytes", () => {
  it("uses IEC units", () => {
    expect(formatBytes(0)).toBe("0 B");
    expect(formatBytes(1023)).toBe("1023 B");
    expect(formatBytes(1536)).toBe("1.5 KiB");
    expect(formatBytes(100 * MiB)).toBe("100.0 MiB");
    expect(formatBytes(3n * BigInt(GiB))).toBe("3.0 GiB");
    expect(formatBytes(5 * 1024 * GiB)).toBe("5.0 TiB");
  });
});

describe("formatDuration", () => {
  it("is short and unknown stays unknown", () => {
    expect(formatDuration(9.24)).toBe("9s");
    expect(formatDuration(185)).toBe("3m05s");
    expect(formatDuration(7260)).toBe("2h01m");
    expect(formatDuration(undefined)).toBeUndefined();
    expect(formatDuration(Number.POSITIVE_INFINITY)).toBeUndefined();
  });
});

describe("ProgressMeter", () => {
  it("has no rate until two samples span some time", () => {
    const { meter, at } = fixedClock();
    at(0, { bytesDone: 0 });
    expect(meter.rate()).toBeUndefined();
    expect(meter.eta()).toBeUndefined();
  });

  it("measures bytes per second over the window and derives the ETA", () => {
    const { meter, at } = fixedClock();
    at(0, { bytesDone: 0 });
    at(1_000, { bytesDone: 100 * MiB });
    expect(meter.rate()).toBe(100 * MiB);
    expect(meter.eta()).toBeCloseTo((GiB - 100 * MiB) / (100 * MiB), 6);
    at(2_000, { bytesDone: 300 * MiB });
    expect(meter.rate()).toBe(150 * MiB);
  });

  it("forgets samples that left the window", () => {
    const { meter, at } = fixedClock();
    at(0, { bytesDone: 0 });
    at(1_000, { bytesDone: 500 * MiB });
    at(2_000, { bytesDone: 600 * MiB });
    at(8_000, { bytesDone: 900 * MiB });
    // The 0 and 1000 ms samples are out; 2000 ms stays as the anchor of the newest.
    expect(meter.rate()).toBe((300 * MiB * 1000) / 6_000);
  });

  it("lets the rate decay while nothing arrives", () => {
    const { meter, at } = fixedClock();
    at(0, { bytesDone: 0 });
    at(1_000, { bytesDone: 100 * MiB });
    at(4_000);
    expect(meter.rate()).toBe(25 * MiB);
  });

  it("starts over on a new stage or when bytes go backwards", () => {
    const { meter, at } = fixedClock();
    at(0, { bytesDone: 0 });
    at(1_000, { bytesDone: 100 * MiB });
    at(1_500, { stage: "convert", bytesDone: 0 });
    expect(meter.rate()).toBeUndefined();
    at(2_500, { stage: "convert", bytesDone: 50 * MiB });
    expect(meter.rate()).toBe(50 * MiB);
    at(3_000, { stage: "convert", bytesDone: 10 * MiB });
    expect(meter.rate()).toBeUndefined();
  });
});

describe("renderProgress", () => {
  it("draws stage, bar, bytes, rate and ETA within the width", () => {
    const { meter, at } = fixedClock();
    at(0, { bytesDone: 0 });
    at(1_000, { bytesDone: 100 * MiB });
    const line = renderProgress(meter, 80);
    expect(line).toBe("fetch  [##-----------------]    9%   100.0 MiB / 1.0 GiB  100.0 MiB/s  ETA 9s   ");
    expect(line.length).toBeLessThanOrEqual(80);
  });

  it("keeps the bar in place while the numbers change", () => {
    const { meter, at } = fixedClock();
    const barEnds: number[] = [];
    at(0, { bytesDone: 0 });
    barEnds.push(renderProgress(meter, 80).indexOf("]"));
    for (let i = 1; i <= 10; i++) {
      at(i * 1_000, { bytesDone: i * 100 * MiB + (i % 3) * 12345 });
      barEnds.push(renderProgress(meter, 80).indexOf("]"));
    }
    at(12_000);
    barEnds.push(renderProgress(meter, 80).indexOf("]"));
    expect(new Set(barEnds).size).toBe(1);
  });

  it("fills the bar as the task nears the end and caps it at 30 columns", () => {
    const { meter, at } = fixedClock();
    at(0, { bytesDone: 0 });
    at(1_000, { bytesDone: GiB / 2 });
    const line = renderProgress(meter, 200);
    expect(line).toContain(`[${"#".repeat(15)}${"-".repeat(15)}]`);
    expect(line).toContain(" 50%");
    expect(line).toContain("512.0 MiB / 1.0 GiB");
    expect(line).toContain("512.0 MiB/s");
    expect(line).toContain("ETA 1s");
  });

  it("drops the bar on a narrow terminal and never exceeds the width", () => {
    const { meter, at } = fixedClock();
    at(0, { bytesDone: 0 });
    at(1_000, { bytesDone: 100 * MiB });
    for (const width of [20, 40, 60, 79, 120]) {
      expect(renderProgress(meter, width).length).toBeLessThanOrEqual(width);
    }
    expect(renderProgress(meter, 60)).not.toContain("[");
  });

  it("shows no bar or percentage while the total is unknown", () => {
    const { meter, at } = fixedClock();
    at(0, { bytesDone: 0, bytesTotal: 0 });
    at(2_000, { bytesDone: 10 * MiB, bytesTotal: 0 });
    const line = renderProgress(meter, 100);
    expect(line).not.toContain("[");
    expect(line).not.toContain("%");
    expect(line).toContain("10.0 MiB");
    expect(line).toContain("5.0 MiB/s");
    expect(line).toContain("ETA --");
  });

  it("names states other than running and hides rate and ETA once finished", () => {
    const { meter, at } = fixedClock();
    expect(renderProgress(meter)).toBe("waiting for the task...");
    at(0, { state: "pending", stage: "", bytesDone: 0, bytesTotal: 0 });
    expect(renderProgress(meter)).toMatch(/^pending  /);
    at(1_000, { bytesDone: 0 });
    at(2_000, { state: "succeeded", bytesDone: GiB, finished: true });
    const line = renderProgress(meter, 100);
    expect(line).toMatch(/^succeeded fetch  \[#{30}\]  100%  +1\.0 GiB \/ 1\.0 GiB$/);
  });
});

describe("enums and tables", () => {
  it("accepts short and full enum names in any case", () => {
    expect(parseEnum(TaskStateSchema, "Running", "state")).toBe(2);
    expect(parseEnum(TaskStateSchema, "TASK_STATE_FAILED", "state")).toBe(4);
    expect(() => parseEnum(TaskStateSchema, "unspecified", "state")).toThrow(/valid: pending, running, succeeded, failed, canceled/);
    expect(() => parseEnum(TaskStateSchema, "bogus", "state")).toThrow(/unknown state "bogus"/);
    expect(enumName(TaskStateSchema, 3)).toBe("succeeded");
  });

  it("aligns table columns under a header row", () => {
    const table = formatTable(
      [
        { header: "NAME", value: (r: { name: string; size: number }) => r.name },
        { header: "SIZE", value: (r) => formatBytes(r.size), right: true },
        { header: "NOTE", value: () => "x" },
      ],
      [
        { name: "a", size: 1 },
        { name: "longer", size: 2 * GiB },
      ],
    );
    expect(table).toBe("NAME       SIZE  NOTE\na           1 B  x\nlonger  2.0 GiB  x\n");
  });
});
