#!/usr/bin/env node
/**
 * `npm run bench`: every benchmark of issue 8, one after the other, each in its own process.
 *
 *   npm run bench [-- --quick] [--only B1,B5] [--out-dir DIR]
 *   npm run bench:quick                       (the same as -- --quick: about 5 minutes)
 *
 * Each script runs as `node bench/<script> --json [--quick]`; its stderr (progress) streams
 * through, its stdout is one JSON object in the shared result shape (bench/common.mjs). --only keeps the
 * scripts that cover any of the named benchmarks (B1..B7, SWIFT). A script that is missing,
 * fails or prints no result is a row in the table with its status, and the others still run.
 * B7 (Glance) runs only where glance.mjs finds Glance; it says so itself (`available: false`
 * or `skipped`).
 *
 * Writes bench/results/<YYYY-MM-DD>.json (every script's output, status and time, plus git
 * commit, node version, cpu count, load average before and after, mode) and the chart
 * bench/results/<YYYY-MM-DD>.svg (bench/chart.mjs), and prints a table: benchmark, result,
 * product median, baseline median, ratio, target, met.
 *
 * Exit status: 130 interrupted; else 1 if any script reported a correctness problem (exit 1
 * or a non-empty `problems`); else 2 if a script failed (exit 2, no output); else 0. Targets
 * missed are reported, never an error.
 */
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import { cpus, loadavg } from "node:os";
import { join, resolve } from "node:path";
import { repoRoot } from "../scripts/ensure-built.mjs";
import { checkSvg, num, renderChart, rowsOf, targetText } from "./chart.mjs";
import { BenchError, parseBenchArgs, say, track } from "./common.mjs";

/** The scripts in the order they run, and the benchmarks each covers. */
const SCRIPTS = [
  { id: "B1", script: "run.mjs", covers: ["B1", "B4"] },
  { id: "B2", script: "download.mjs", covers: ["B2", "B3"] },
  { id: "B5", script: "control-plane.mjs", covers: ["B5"] },
  { id: "B6", script: "concurrency.mjs", covers: ["B6"] },
  { id: "SWIFT", script: "swift.mjs", covers: ["SWIFT"] },
  { id: "B7", script: "glance.mjs", covers: ["B7"] },
];

/** The flags of the header comment. */
function parseArgs() {
  const known = SCRIPTS.flatMap((s) => s.covers);
  const only = (value) => {
    const ids = value.split(",").map((s) => s.trim().toUpperCase()).filter(Boolean);
    const unknown = ids.filter((id) => !known.includes(id));
    if (unknown.length > 0) throw new BenchError(`--only: unknown benchmark ${unknown.join(", ")}; known: ${known.join(", ")}`);
    return ids;
  };
  return parseBenchArgs(import.meta.url, {
    only: { type: "string", parse: only },
    "out-dir": { type: "string", default: join(repoRoot, "bench", "results"), parse: (v) => resolve(v) },
  });
}

/** The one JSON object (or array of them) a script printed; npm banners or stray lines around it are ignored. */
function parseOutput(stdout) {
  const text = stdout.trim();
  if (text === "") return undefined;
  const candidates = [text, ...text.split("\n").reverse()];
  for (const candidate of candidates) {
    try {
      const value = JSON.parse(candidate);
      if (value && typeof value === "object") return value;
    } catch {
      // Not JSON: try the next line.
    }
  }
  return undefined;
}

/** Runs one script to its end; never rejects. */
function runScript(entry, quick) {
  const path = join(repoRoot, "bench", entry.script);
  if (!existsSync(path)) return Promise.resolve({ status: "missing", exitCode: null, seconds: 0, outputs: [] });
  const args = [path, "--json", ...(quick ? ["--quick"] : [])];
  say(`=== ${entry.covers.join("+")}: node bench/${entry.script} ${args.slice(1).join(" ")}`);
  const started = performance.now();
  return new Promise((resolvePromise) => {
    const child = track(spawn(process.execPath, args, { cwd: repoRoot, stdio: ["ignore", "pipe", "inherit"] }));
    let stdout = "";
    child.stdout.on("data", (d) => (stdout += d));
    child.once("error", (err) => resolvePromise({ status: "failed", exitCode: null, seconds: 0, outputs: [], error: err.message }));
    child.once("close", (code, signal) => {
      const seconds = Math.round((performance.now() - started) / 100) / 10;
      const parsed = parseOutput(stdout);
      const outputs = parsed === undefined ? [] : Array.isArray(parsed) ? parsed : Array.isArray(parsed.benchmarks) ? parsed.benchmarks : [parsed];
      const withResults = outputs.filter((o) => Array.isArray(o.results));
      const skipped = outputs.find((o) => o.available === false || o.skipped);
      let status;
      const anyResults = withResults.some((o) => o.results.length > 0);
      if (signal || code === 130) status = "interrupted";
      else if (skipped && !anyResults) status = `skipped${typeof skipped.skipped === "string" ? `: ${skipped.skipped}` : skipped.reason ? `: ${skipped.reason}` : ""}`;
      else if (code === 2 || (code !== 0 && code !== 1) || (!anyResults && code !== 1)) status = code === 0 ? "no results in the shared format" : `failed (exit ${code})`;
      else if (code === 1 || withResults.some((o) => (o.problems ?? []).length > 0)) status = "problems";
      else status = "ok";
      const error = status.startsWith("failed") || status.startsWith("no results") ? outputs.map((o) => o.error).filter(Boolean).join("; ") || undefined : undefined;
      resolvePromise({ status, exitCode: code, signal, seconds, outputs: withResults.length > 0 ? withResults : outputs, error });
    });
  });
}

function gitInfo() {
  const git = (...args) => spawnSync("git", args, { cwd: repoRoot, encoding: "utf8" }).stdout?.trim() ?? "";
  return { commit: git("rev-parse", "HEAD"), dirty: git("status", "--porcelain", "--untracked-files=no") !== "" };
}

/** The table, as fixed-width text. */
function table(report) {
  const header = ["benchmark", "result", "product", "baseline", "ratio", "target", "met"];
  const lines = rowsOf(report).map((row) => {
    if (!row.result) return [row.benchmark, `(${row.script}: ${row.status})`, "", "", "", "", ""];
    const r = row.result;
    return [
      row.benchmark,
      r.name,
      `${num(r.product?.median)} ${r.unit}`,
      r.baseline ? `${num(r.baseline.median)} ${r.unit}` : "-",
      num(r.ratio),
      targetText(r),
      r.met === true ? "yes" : r.met === false ? "NO" : "-",
    ];
  });
  const widths = header.map((h, i) => Math.min(i === 1 ? 70 : 40, Math.max(h.length, ...lines.map((l) => String(l[i]).length))));
  const fmt = (cells) => cells.map((c, i) => String(c).slice(0, widths[i]).padEnd(widths[i])).join("  ").trimEnd();
  return [fmt(header), fmt(widths.map((w) => "-".repeat(w))), ...lines.map(fmt)].join("\n");
}

async function main() {
  const opts = parseArgs();
  const selected = SCRIPTS.filter((s) => !opts.only || s.covers.some((id) => opts.only.includes(id)));
  const startedAt = new Date();
  const report = {
    date: startedAt.toISOString().slice(0, 10),
    startedAt: startedAt.toISOString(),
    mode: opts.quick ? "quick" : "full",
    only: opts.only ?? null,
    git: gitInfo(),
    node: process.version,
    machine: { cpus: cpus().length, loadavgStart: loadavg().map((v) => Math.round(v * 100) / 100) },
    benches: [],
  };
  for (const entry of selected) {
    const outcome = await runScript(entry, opts.quick);
    report.benches.push({ id: entry.id, script: entry.script, covers: entry.covers, ...outcome });
    say(`=== ${entry.script}: ${outcome.status} (${outcome.seconds} s)`);
    if (outcome.status === "interrupted") break;
  }
  report.machine.loadavgEnd = loadavg().map((v) => Math.round(v * 100) / 100);
  report.seconds = Math.round((Date.now() - startedAt.getTime()) / 1000);

  mkdirSync(opts.outDir, { recursive: true });
  const jsonPath = join(opts.outDir, `${report.date}.json`);
  const svgPath = join(opts.outDir, `${report.date}.svg`);
  writeFileSync(jsonPath, JSON.stringify(report, null, 2) + "\n");
  const svg = renderChart(report);
  checkSvg(svg);
  writeFileSync(svgPath, svg);

  process.stdout.write(`\n${table(report)}\n\n`);
  for (const bench of report.benches) for (const o of bench.outputs) for (const p of o.problems ?? []) process.stdout.write(`problem (${o.benchmark ?? bench.id}): ${p}\n`);
  for (const bench of report.benches) if (bench.error) process.stdout.write(`${bench.script} ${bench.status}: ${bench.error}\n`);
  process.stdout.write(`results: ${jsonPath}\nchart:   ${svgPath}\n`);

  if (report.benches.some((b) => b.status === "interrupted")) return 130;
  if (report.benches.some((b) => b.status === "problems")) return 1;
  if (report.benches.some((b) => b.status.startsWith("failed") || b.status.startsWith("no results"))) return 2;
  return 0;
}

main().then(
  (code) => process.exit(code),
  (err) => {
    process.stderr.write(`bench: ${err instanceof BenchError ? err.message : err.stack}\n`);
    process.exit(2);
  },
);
