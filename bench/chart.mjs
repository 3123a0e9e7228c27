#!/usr/bin/env node
/**
 * The chart of a bench run: one SVG, no dependencies, one horizontal bar per result.
 *
 *   node bench/chart.mjs bench/results/2026-11-27.json [out.svg]    (default: the .json's name, .svg)
 *
 * A ratio result (product against its baseline, normalised so that more is better) is a bar
 * of its ratio, with the target as a vertical line; an absolute result (MiB, tasks/s, ms) is a
 * bar of its median with its limit as the line. Each row has its own scale (0 to a little past
 * the larger of value and target), so the bar's end against the line tells met or not; the
 * labels carry the numbers. Green: target met; red: not met; grey: no target. A bench script
 * that failed, was missing or was skipped gets a grey row saying so.
 *
 * bench/all.mjs calls renderChart() after a run; this CLI redraws one from a results file.
 */
import { readFileSync, writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

const WIDTH = 1100;
const LABEL_W = 430;
const BAR_X = LABEL_W + 10;
const BAR_W = 330;
const ROW_H = 34;
const COLORS = { met: "#2e7d32", missed: "#c62828", none: "#9e9e9e", line: "#212121", text: "#212121", faint: "#616161" };

/** One row per result, and one per bench script that produced none (failed, missing, skipped). */
export function rowsOf(report) {
  const rows = [];
  for (const bench of report.benches ?? []) {
    const outputs = bench.outputs ?? [];
    // A script may cover several benchmarks and name each result's own (run.mjs: B1 and B4).
    const results = outputs.flatMap((o) => (o.results ?? []).map((r) => ({ benchmark: r.benchmark ?? o.benchmark ?? bench.id, result: r })));
    if (results.length === 0) rows.push({ benchmark: bench.id, status: bench.status, script: bench.script, detail: bench.error ?? "" });
    for (const { benchmark, result } of results) rows.push({ benchmark, result, status: bench.status, script: bench.script });
  }
  return rows;
}

/** "1234.5", "0.62", "12" : about three significant digits, no exponent. */
export function num(v) {
  if (v === null || v === undefined || Number.isNaN(v)) return "-";
  const a = Math.abs(v);
  if (a >= 100) return String(Math.round(v));
  if (a >= 10) return v.toFixed(1);
  return v.toFixed(2);
}

/** The target as a person reads it: ">= 0.8x", "<= 300 MiB", ">= 1000 tasks/s". */
export function targetText(result) {
  const t = result.target;
  if (!t) return "none";
  if (t.ratio !== undefined) return `ratio >= ${t.ratio}`;
  if (t.min !== undefined) return `>= ${t.min} ${result.unit}`;
  if (t.max !== undefined) return `<= ${t.max} ${result.unit}`;
  return "none";
}

const escape = (s) => String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
const clip = (s, n) => (s.length > n ? `${s.slice(0, n - 1)}…` : s);

function resultRow(row, y) {
  const r = row.result;
  const hasRatio = r.target?.ratio !== undefined || (r.ratio !== null && r.ratio !== undefined && r.baseline);
  const value = hasRatio ? r.ratio : r.product?.median;
  const goal = hasRatio ? r.target?.ratio : (r.target?.min ?? r.target?.max);
  const colour = r.met === true ? COLORS.met : r.met === false ? COLORS.missed : COLORS.none;
  const domain = Math.max(value ?? 0, goal ?? 0, hasRatio ? 1 : 0) * 1.2 || 1;
  const x = (v) => BAR_X + (Math.max(0, v) / domain) * BAR_W;
  const parts = [];
  parts.push(`<text x="10" y="${y + 14}" font-weight="bold">${escape(row.benchmark)}</text>`);
  parts.push(`<text x="60" y="${y + 14}">${escape(clip(r.name, 62))}</text>`);
  const sub = hasRatio && r.baseline
    ? `${r.product.label}: ${num(r.product.median)} ${r.unit} / ${r.baseline.label}: ${num(r.baseline.median)} ${r.unit}`
    : `${r.product?.label ?? "product"} (min ${num(r.product?.min)}, max ${num(r.product?.max)})`;
  parts.push(`<text x="60" y="${y + 28}" font-size="10" fill="${COLORS.faint}">${escape(clip(sub, 80))}</text>`);
  parts.push(`<rect x="${BAR_X}" y="${y + 6}" width="${BAR_W}" height="18" fill="#f5f5f5"/>`);
  if (value !== null && value !== undefined) parts.push(`<rect x="${BAR_X}" y="${y + 6}" width="${(x(value) - BAR_X).toFixed(1)}" height="18" fill="${colour}"/>`);
  if (goal !== undefined && goal !== null) parts.push(`<line x1="${x(goal).toFixed(1)}" x2="${x(goal).toFixed(1)}" y1="${y + 2}" y2="${y + 28}" stroke="${COLORS.line}" stroke-width="2"/>`);
  const verdict = r.met === true ? "met" : r.met === false ? "NOT met" : "no target";
  const shown = hasRatio ? `ratio ${num(value)}` : `${num(value)} ${r.unit}`;
  parts.push(`<text x="${BAR_X + BAR_W + 10}" y="${y + 14}" font-weight="bold" fill="${colour}">${escape(`${shown} — ${verdict}`)}</text>`);
  parts.push(`<text x="${BAR_X + BAR_W + 10}" y="${y + 28}" font-size="10" fill="${COLORS.faint}">${escape(`target ${targetText(r)}${r.better ? `, ${r.better} is better` : ""}`)}</text>`);
  return parts.join("");
}

function statusRow(row, y) {
  return (
    `<text x="10" y="${y + 14}" font-weight="bold">${escape(row.benchmark)}</text>` +
    `<text x="60" y="${y + 14}" fill="${COLORS.faint}">${escape(clip(`${row.script}: ${row.status}${row.detail ? ` — ${row.detail.split("\n")[0]}` : ""}`, 150))}</text>`
  );
}

/** The SVG text of a run report (the object bench/all.mjs writes). */
export function renderChart(report) {
  const rows = rowsOf(report);
  const top = 70;
  const height = top + rows.length * ROW_H + 40;
  const m = report.machine ?? {};
  const subtitle = `${report.date ?? ""} · ${report.mode ?? ""} mode · commit ${String(report.git?.commit ?? "?").slice(0, 10)}${report.git?.dirty ? "+dirty" : ""} · node ${report.node ?? "?"} · ${m.cpus ?? "?"} cpus · load ${(m.loadavgStart ?? m.loadavg ?? []).join(" ")}`;
  const body = rows.map((row, i) => (row.result ? resultRow(row, top + i * ROW_H) : statusRow(row, top + i * ROW_H))).join("\n");
  const legendY = height - 18;
  return `<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${height}" viewBox="0 0 ${WIDTH} ${height}" font-family="sans-serif" font-size="12" fill="${COLORS.text}">
<rect width="${WIDTH}" height="${height}" fill="#ffffff"/>
<text x="10" y="24" font-size="18" font-weight="bold">ImageTransfer benchmarks (issue 8)</text>
<text x="10" y="44" font-size="11" fill="${COLORS.faint}">${escape(subtitle)}</text>
<text x="${BAR_X}" y="62" font-size="10" fill="${COLORS.faint}">bar: ratio to baseline (1 = as good) or absolute value; black line: target</text>
${body}
<rect x="10" y="${legendY - 10}" width="12" height="12" fill="${COLORS.met}"/><text x="26" y="${legendY}">target met</text>
<rect x="110" y="${legendY - 10}" width="12" height="12" fill="${COLORS.missed}"/><text x="126" y="${legendY}">not met</text>
<rect x="200" y="${legendY - 10}" width="12" height="12" fill="${COLORS.none}"/><text x="216" y="${legendY}">no target</text>
</svg>
`;
}

/** A cheap well-formedness check (no XML parser here): balanced tags, no stray '<' or '&'. */
export function checkSvg(svg) {
  const stack = [];
  const text = svg.replace(/^<\?xml[^>]*\?>\s*/, "");
  const tag = /<(\/?)([a-zA-Z][\w:-]*)((?:\s+[\w:-]+="[^"<]*")*)\s*(\/?)>/g;
  let at = 0;
  for (let m; (m = tag.exec(text)); ) {
    const between = text.slice(at, m.index);
    if (/[<>]/.test(between) || /&(?!(amp|lt|gt|quot|apos|#\d+);)/.test(between)) throw new Error(`bad text near offset ${at}: ${between.slice(0, 60)}`);
    at = tag.lastIndex;
    if (m[4]) continue;
    if (!m[1]) stack.push(m[2]);
    else if (stack.pop() !== m[2]) throw new Error(`unbalanced </${m[2]}> at offset ${m.index}`);
  }
  if (stack.length > 0 || text.slice(at).trim() !== "") throw new Error(`unclosed ${stack.join(", ") || "trailing text"}`);
  return true;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const [input, output] = process.argv.slice(2);
  if (!input) {
    process.stderr.write("usage: node bench/chart.mjs RESULTS.json [OUT.svg]\n");
    process.exit(2);
  }
  const svg = renderChart(JSON.parse(readFileSync(input, "utf8")));
  checkSvg(svg);
  const target = output ?? input.replace(/\.json$/, "") + ".svg";
  writeFileSync(target, svg);
  process.stderr.write(`chart: ${target}\n`);
}
