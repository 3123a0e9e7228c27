import { stringify as stringifyYaml } from "yaml";
import { toJson, type DescEnum, type DescMessage, type MessageShape } from "@bufbuild/protobuf";
import { timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { InvalidArgumentError } from "commander";

/** Exit codes of `itx`; described in `itx --help`. */
export const ExitCode = {
  ok: 0,
  /** The server answered with an error, or could not be reached. */
  rpc: 1,
  /** The command line was wrong. */
  usage: 2,
  /** `tasks watch` or `--wait`: the task ended FAILED. */
  taskFailed: 3,
  /** `tasks watch` or `--wait`: the task ended CANCELED. */
  taskCanceled: 4,
  /** `tasks watch` or `--wait` stopped by Ctrl-C; the task keeps running. */
  interrupted: 130,
} as const;

export const exitCodesHelp = `
Exit codes:
  0    success; for "tasks watch" and --wait, the task SUCCEEDED
  1    the server answered with an error or could not be reached; an upload or
       download URL answered with an HTTP error
  2    usage error (unknown command or option, invalid value)
  3    "tasks watch", --wait: the task FAILED (its reason and message go to stderr)
  4    "tasks watch", --wait: the task was CANCELED
  130  "tasks watch", --wait: stopped by Ctrl-C (the task itself is not canceled)

Errors are one line on stderr: "itx: <code>: <message>", e.g. "itx: not_found: image ... not found".
With --json, stdout carries only the response as protobuf JSON.`;

/** A mistake on the command line: exit code 2. */
export class UsageError extends Error {
  override readonly name = "UsageError";
}

/**
 * An expected failure outside RPCs, such as an HTTP error from an upload or download
 * URL: reported as "itx: <code>: <message>", exit code 1.
 */
export class CliError extends Error {
  override readonly name = "CliError";
  constructor(
    readonly code: string,
    message: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

/** Options every client command accepts. */
export interface ClientOptions {
  server?: string;
  json?: boolean;
  /** --output table|json|yaml, where the command has it. */
  output?: string;
}

// ---------------------------------------------------------------------------
// Enums

/** IMAGE_STATUS_ACTIVE -> "active"; unknown numbers print as the number. */
export function enumName(schema: DescEnum, value: number): string {
  const v = schema.value[value];
  return v ? v.localName.toLowerCase() : String(value);
}

/** The short names a user may type for an enum, UNSPECIFIED excluded. */
export function enumChoices(schema: DescEnum): string[] {
  return schema.values.filter((v) => v.number !== 0).map((v) => v.localName.toLowerCase());
}

/**
 * Parses an enum given on the command line: the short name in any case ("running",
 * "QCOW2"), or the full proto name ("TASK_STATE_RUNNING"). Anything else is a usage
 * error that lists the valid values.
 */
export function parseEnum(schema: DescEnum, input: string, what: string): number {
  const wanted = input.trim().toLowerCase();
  const match = schema.values.find(
    (v) => v.number !== 0 && (v.localName.toLowerCase() === wanted || v.name.toLowerCase() === wanted),
  );
  if (!match) throw new InvalidArgumentError(`unknown ${what} "${input}"; valid: ${enumChoices(schema).join(", ")}`);
  return match.number;
}

/** A commander option parser for an enum; its errors are usage errors. */
export function enumOption(schema: DescEnum, what: string): (value: string) => number {
  return (value) => parseEnum(schema, value, what);
}

/** A commander option parser for a positive integer. */
export function positiveInt(what: string): (value: string) => number {
  return (value) => {
    if (!/^\d+$/.test(value.trim()) || Number(value) < 1 || !Number.isSafeInteger(Number(value))) {
      throw new InvalidArgumentError(`${what} must be a positive integer`);
    }
    return Number(value);
  };
}

// ---------------------------------------------------------------------------
// Values for people

const iecUnits = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];

/** 1536 -> "1.5 KiB"; bytes are whole, larger units get one decimal. */
export function formatBytes(value: bigint | number): string {
  let n = Number(value);
  if (!Number.isFinite(n) || n < 0) return String(value);
  let unit = 0;
  while (n >= 1024 && unit < iecUnits.length - 1) {
    n /= 1024;
    unit++;
  }
  return unit === 0 ? `${n} B` : `${n.toFixed(1)} ${iecUnits[unit]}`;
}

/** Seconds as "45s", "3m05s", "2h07m"; undefined when unknown. */
export function formatDuration(seconds: number | undefined): string | undefined {
  if (seconds === undefined || !Number.isFinite(seconds) || seconds < 0) return undefined;
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  const h = Math.floor(s / 3600);
  if (h < 100) return `${h}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
  return `${Math.floor(h / 24)}d`;
}

/** An ISO time, or "-" when unset. */
export function formatTime(ts: Timestamp | undefined): string {
  return ts ? timestampDate(ts).toISOString() : "-";
}

export function orDash(value: string | undefined): string {
  return value === undefined || value === "" ? "-" : value;
}

// ---------------------------------------------------------------------------
// Tables

export interface Column<T> {
  header: string;
  value: (row: T) => string;
  /** Right-align, for numbers and sizes. */
  right?: boolean;
}

/**
 * A compact table: a header row, then one line per row, columns separated by two
 * spaces and padded to the widest cell. The last column is not padded.
 */
export function formatTable<T>(columns: Column<T>[], rows: T[]): string {
  const cells = [columns.map((c) => c.header), ...rows.map((r) => columns.map((c) => clean(c.value(r))))];
  const widths = columns.map((_, i) => Math.max(...cells.map((line) => line[i]!.length)));
  return cells
    .map((line) =>
      line
        .map((cell, i) => {
          if (columns[i]!.right) return cell.padStart(widths[i]!);
          return i === line.length - 1 ? cell : cell.padEnd(widths[i]!);
        })
        .join("  ")
        .trimEnd(),
    )
    .map((line) => `${line}\n`)
    .join("");
}

/** Key-value lines for one record, keys aligned. */
export function formatFields(fields: Array<[string, string]>): string {
  const width = Math.max(0, ...fields.map(([k]) => k.length)) + 1;
  return fields.map(([k, v]) => `${`${k}:`.padEnd(width)} ${clean(v)}\n`).join("");
}

/** Keeps one record on one line: control characters from the server are shown escaped. */
function clean(value: string): string {
  // eslint-disable-next-line no-control-regex
  return value.replace(/[\u0000-\u001f\u007f]/g, (c) => (c === "\t" ? " " : `\\x${c.charCodeAt(0).toString(16).padStart(2, "0")}`));
}

// ---------------------------------------------------------------------------
// Printing

/** Protobuf JSON as --json prints it: lowerCamelCase names, enum names, every field present. */
export function messageToJson<Desc extends DescMessage>(schema: Desc, message: MessageShape<Desc>) {
  return toJson(schema, message, { alwaysEmitImplicit: true });
}

/** The response message as pretty protobuf JSON on stdout. */
/** How printJson writes a whole response: JSON, or the same document as YAML (--output yaml). */
let documentFormat: "json" | "yaml" = "json";

export function setDocumentFormat(format: "json" | "yaml"): void {
  documentFormat = format;
}

/** Prints a response as protobuf JSON (or YAML of the same document); nothing else goes to stdout in that mode. */
export function printJson<Desc extends DescMessage>(schema: Desc, message: MessageShape<Desc>): void {
  const document = messageToJson(schema, message);
  process.stdout.write(documentFormat === "yaml" ? stringifyYaml(document) : `${JSON.stringify(document, null, 2)}\n`);
}

/**
 * A list command's answer: the response as pretty protobuf JSON on stdout with --json;
 * otherwise the rows as a table on stdout and, when there is a next page, how to get it on
 * stderr ("more images: add --page-token T (or --all)", `noun` being "images").
 */
export function printList<Desc extends DescMessage, T>(
  json: boolean | undefined,
  schema: Desc,
  response: MessageShape<Desc>,
  columns: Column<T>[],
  rows: T[],
  nextPageToken: string,
  noun: string,
): void {
  if (json) return printJson(schema, response);
  process.stdout.write(formatTable(columns, rows));
  if (nextPageToken !== "") process.stderr.write(`more ${noun}: add --page-token ${nextPageToken} (or --all)\n`);
}

/** One compact JSON line (JSON Lines), for streams. */
export function printJsonLine<Desc extends DescMessage>(schema: Desc, message: MessageShape<Desc>): void {
  process.stdout.write(`${JSON.stringify(messageToJson(schema, message))}\n`);
}

/** The one-line error report on stderr. */
export function printError(code: string, message: string): void {
  process.stderr.write(`itx: ${code}: ${message.replace(/\s*\n\s*/g, " ")}\n`);
}

/** Connect's Code.NotFound -> "not_found", as the Connect protocol spells it. */
export function codeName(code: Code): string {
  return (Code[code] ?? "unknown").replace(/([a-z])([A-Z])/g, "$1_$2").toLowerCase();
}

/** Node error codes that mean no connection could be made, and those that mean it broke. */
const unreachableCodes = new Set(["ECONNREFUSED", "ENOTFOUND", "EAI_AGAIN", "ETIMEDOUT", "EHOSTUNREACH", "ENETUNREACH"]);
const brokenCodes = new Set(["ECONNRESET", "EPIPE"]);

/** The Node error codes along an error's cause chain, outermost first. */
function nodeErrorChain(err: unknown): Array<{ code?: string; message: string }> {
  const chain: Array<{ code?: string; message: string }> = [];
  const seen = new Set<unknown>();
  while (err instanceof Error && !seen.has(err)) {
    seen.add(err);
    const code = (err as NodeJS.ErrnoException).code;
    chain.push({ code: typeof code === "string" ? code : undefined, message: err.message });
    err = err.cause;
  }
  return chain;
}

/**
 * Reports an error as one line on stderr and returns the exit code. Expected errors
 * (RPC errors, an unreachable server, usage errors) never print a stack trace.
 */
export function reportError(err: unknown, server?: string): number {
  if (err instanceof UsageError) {
    printError("usage", err.message);
    return ExitCode.usage;
  }
  if (err instanceof CliError) {
    printError(err.code, err.message);
    return ExitCode.rpc;
  }
  if (err instanceof ConnectError) {
    const chain = nodeErrorChain(err.cause);
    const network = chain.find((e) => e.code !== undefined && unreachableCodes.has(e.code));
    if (network && server) {
      printError("unavailable", `the server at ${server} is unreachable (${network.message})`);
      return ExitCode.rpc;
    }
    const broken = chain.find((e) => e.code !== undefined && brokenCodes.has(e.code));
    if (broken && server) {
      printError("unavailable", `lost the connection to the server at ${server} (${broken.message})`);
      return ExitCode.rpc;
    }
    const tls = chain.find((e) => e.code !== undefined && /CERT|SELF_SIGNED|TLS|SSL|EPROTO/.test(e.code));
    if (tls && server) {
      const detail = /wrong version number|packet length too long/.test(tls.message)
        ? "the server does not speak TLS; try http://"
        : /CERT|SELF_SIGNED/.test(tls.code!)
          ? `${tls.message}; NODE_EXTRA_CA_CERTS=FILE trusts a private CA`
          : tls.message.split("\n")[0]!.replace(/:[^:]*\.c:\d+:?$/, "");
      printError("unavailable", `TLS connection to ${server} failed: ${detail}`);
      return ExitCode.rpc;
    }
    printError(codeName(err.code), err.rawMessage || codeName(err.code).replace(/_/g, " "));
    return ExitCode.rpc;
  }
  // Anything else is a bug in itx: one line too, with the stack when ITX_DEBUG is set.
  const detail = err instanceof Error ? (process.env.ITX_DEBUG ? (err.stack ?? err.message) : err.message) : String(err);
  printError("internal", detail);
  return ExitCode.rpc;
}

// ---------------------------------------------------------------------------
// Progress

export interface ProgressSample {
  state: string;
  stage: string;
  bytesDone: number;
  bytesTotal: number;
  /** The task has ended: no rate or ETA is shown. */
  finished?: boolean;
}

/**
 * Turns progress snapshots into a rate (bytes per second over a sliding window) and
 * an ETA. The clock is injected so that rendering can be tested with fixed times.
 */
export class ProgressMeter {
  private samples: Array<{ t: number; bytes: number }> = [];
  private stage = "";
  private latest?: ProgressSample;

  constructor(
    private readonly now: () => number = Date.now,
    private readonly windowMs = 5_000,
  ) {}

  update(sample: ProgressSample): void {
    const t = this.now();
    const last = this.samples.at(-1);
    // A new stage counts its own bytes; so does a restart (fewer bytes than before).
    if (sample.stage !== this.stage || (last && sample.bytesDone < last.bytes)) this.samples = [];
    this.stage = sample.stage;
    this.latest = sample;
    this.samples.push({ t, bytes: sample.bytesDone });
    this.trim(t);
  }

  /** Bytes per second over the window, undefined until two samples span some time. */
  rate(): number | undefined {
    const t = this.now();
    this.trim(t);
    const first = this.samples[0];
    const last = this.samples.at(-1);
    if (!first || !last) return undefined;
    // Time since the last sample counts too, so a stalled transfer's rate decays.
    const span = t - first.t;
    if (span <= 0 || (this.samples.length < 2 && span < this.windowMs)) return undefined;
    return ((last.bytes - first.bytes) * 1000) / span;
  }

  /** Seconds left at the current rate, undefined when the total or the rate is unknown. */
  eta(): number | undefined {
    const rate = this.rate();
    const s = this.latest;
    if (!s || s.bytesTotal <= 0 || rate === undefined || rate <= 0) return undefined;
    return Math.max(0, s.bytesTotal - s.bytesDone) / rate;
  }

  get current(): ProgressSample | undefined {
    return this.latest;
  }

  /** Keeps samples within the window, but always the newest, and one before it if that is all there is. */
  private trim(t: number): void {
    while (this.samples.length > 2 && this.samples[1]!.t <= t - this.windowMs) this.samples.shift();
  }
}

/**
 * One line of the live progress display, at most `width` characters, e.g.
 * "fetch  [######--------------]   35%  350.0 MiB / 1.0 GiB  50.0 MiB/s  ETA 13s".
 * The stage stands alone while the task runs; other states are named before it
 * ("pending", "succeeded convert"). The fields after the bar are padded, so the bar
 * keeps its place as the numbers change. A finished task shows no rate or ETA; an
 * unknown total shows no bar and no percentage.
 */
export function renderProgress(meter: ProgressMeter, width = 80): string {
  const s = meter.current;
  if (!s) return "waiting for the task...".slice(0, width);
  const known = s.bytesTotal > 0;
  const fraction = known ? Math.min(1, s.bytesDone / s.bytesTotal) : 0;
  const head = s.state === "running" ? s.stage || "running" : [s.state, s.stage].filter(Boolean).join(" ");
  const parts: string[] = [];
  if (known) parts.push(`${Math.floor(fraction * 100)}%`.padStart(4), `${formatBytes(s.bytesDone)} / ${formatBytes(s.bytesTotal)}`.padStart(20));
  else parts.push(formatBytes(s.bytesDone).padStart(10));
  if (!s.finished) {
    const rate = meter.rate();
    parts.push((rate === undefined ? "-- B/s" : `${formatBytes(Math.round(rate))}/s`).padStart(11), `ETA ${formatDuration(meter.eta()) ?? "--"}`.padEnd(9));
  }
  const tail = parts.join("  ");
  // The bar takes what is left, 8 to 30 columns; it is dropped on narrow terminals.
  const room = width - head.length - tail.length - 6;
  if (known && room >= 8) {
    const barWidth = Math.min(30, room);
    const filled = Math.round(fraction * barWidth);
    return `${head}  [${"#".repeat(filled)}${"-".repeat(barWidth - filled)}]  ${tail}`;
  }
  return `${head}  ${tail}`.slice(0, width);
}

/**
 * The live progress line on a terminal, redrawn in place on every update and every
 * second (so the rate decays while nothing moves). `stop()` leaves the last drawing on
 * screen and moves to the next line.
 */
export class LiveProgress {
  private readonly meter: ProgressMeter;
  private readonly timer: NodeJS.Timeout;
  private stopped = false;

  constructor(
    private readonly stream: NodeJS.WriteStream,
    initial?: ProgressSample,
    now: () => number = Date.now,
  ) {
    this.meter = new ProgressMeter(now);
    if (initial) this.meter.update(initial);
    this.timer = setInterval(() => this.draw(), 1_000);
    this.timer.unref();
    this.draw();
  }

  update(sample: ProgressSample): void {
    this.meter.update(sample);
    this.draw();
  }

  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    clearInterval(this.timer);
    this.draw();
    this.stream.write("\n");
  }

  private draw(): void {
    const width = Math.max(20, (this.stream.columns || 80) - 1);
    this.stream.write(`\r\x1b[2K${renderProgress(this.meter, width)}`);
  }
}
