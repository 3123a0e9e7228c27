import type { IncomingMessage } from "node:http";
import { Readable } from "node:stream";

/** One ranged GET of a larger read: `path` is the object itself or one of its SLO segments. */
export interface Part {
  path: string;
  /** Where the part starts within `path`. */
  offset: number;
  length: number;
}

/** Starts the GET of a part; rejects (with a StoreError) when Swift refuses it. */
export type FetchPart = (part: Part, signal: AbortSignal) => Promise<IncomingMessage>;

/** One part on its way, and what arrived of it that the consumer has not taken yet. */
interface InFlight {
  part: Part;
  chunks: Buffer[];
  received: number;
  ended: boolean;
  response?: IncomingMessage;
  /** The socket's idle timeout, suspended while the response is held back on purpose. */
  heldTimeoutMs?: number;
}

/**
 * The bytes of several ranged GETs, in order, with up to `window` of them running at once.
 * Swift serves one GET with one object-server green thread and one proxy worker, so a
 * single stream leaves most of a small Swift idle; parts started side by side keep it busy.
 * Only the part whose turn it is flows, and only while the consumer wants more: the others
 * are paused, so what they send ahead waits in the kernel's socket buffers, not in this
 * process. Holding it here (up to `window` parts of chunks) kept chunks alive long enough
 * to reach V8's old generation: a 2 GiB import then ran about 130 full garbage collections
 * instead of 3, and used 50% more CPU. Parts are not copied: the chunks the sockets deliver
 * are the chunks this stream emits.
 *
 * A part that comes back short, a lost connection or a refusal destroys the stream with
 * that error; the caller's retry resumes from the bytes it has.
 */
export class PartsReader extends Readable {
  private readonly queue: InFlight[] = [];
  private next = 0;
  private wanted = false;
  private readonly abort = new AbortController();
  private readonly signal: AbortSignal;

  constructor(
    first: { part: Part; response: IncomingMessage },
    private readonly parts: readonly Part[],
    private readonly fetchPart: FetchPart,
    private readonly window: number,
    private readonly describe: (err: unknown) => unknown,
    signal?: AbortSignal,
  ) {
    // One chunk at a time in the stream's own buffer: a reader that calls read() (an async
    // iterator does) would otherwise get every buffered chunk concatenated, a copy of each byte.
    // The parts' own chunk lists are the buffer.
    super({ highWaterMark: 1 });
    this.signal = signal ? AbortSignal.any([signal, this.abort.signal]) : this.abort.signal;
    const head = this.inFlight(first.part);
    this.queue.push(head);
    this.adopt(head, first.response);
    this.fill();
  }

  override _read(): void {
    this.wanted = true;
    // Not at once: a chunk pushed inside read() is joined to the one it returns (a copy).
    process.nextTick(() => this.drain());
  }

  override _destroy(err: Error | null, callback: (error?: Error | null) => void): void {
    this.abort.abort();
    for (const f of this.queue) f.response?.destroy();
    this.queue.length = 0;
    callback(err);
  }

  /** Starts parts until `window` are running or buffered. */
  private fill(): void {
    while (this.queue.length < this.window && this.next < this.parts.length) {
      const f = this.inFlight(this.parts[this.next++]!);
      this.queue.push(f);
      this.fetchPart(f.part, this.signal).then(
        (response) => (this.destroyed ? response.destroy() : this.adopt(f, response)),
        (err: unknown) => this.fail(err),
      );
    }
  }

  private inFlight(part: Part): InFlight {
    return { part, chunks: [], received: 0, ended: false };
  }

  private adopt(f: InFlight, response: IncomingMessage): void {
    f.response = response;
    response.on("data", (chunk: Buffer) => {
      f.chunks.push(chunk);
      f.received += chunk.length;
      if (f === this.queue[0]) this.drain();
    });
    // Flowing from here on is drain()'s call.
    if (f !== this.queue[0] || !this.wanted) hold(f);
    response.once("end", () => {
      f.ended = true;
      if (f.received !== f.part.length) {
        const err = Object.assign(new Error(`${f.part.path}: ${f.received} of ${f.part.length} bytes came`), { code: "ECONNRESET" });
        return this.fail(err);
      }
      if (f === this.queue[0]) this.drain();
    });
    response.once("error", (err) => this.fail(err));
  }

  /**
   * Hands the head part's chunks on while the consumer wants them, and moves to the next
   * part when it is done; the head's response flows exactly while the consumer wants more.
   */
  private drain(): void {
    while (this.wanted && !this.destroyed) {
      const head = this.queue[0];
      if (!head) {
        this.push(null);
        return;
      }
      if (head.chunks.length > 0) {
        this.wanted = this.push(head.chunks.shift());
        continue;
      }
      if (!head.ended) break;
      this.queue.shift();
      this.fill();
    }
    const head = this.queue[0];
    // An ended response's socket may already serve another request: it is not ours to touch.
    if (head?.response && !head.ended && !this.destroyed) {
      if (this.wanted) release(head);
      else hold(head);
    }
  }

  private fail(err: unknown): void {
    if (!this.destroyed) this.destroy(this.describe(err) as Error);
  }
}

/**
 * Stops a part's response from reading its socket. Its idle timeout stops too: a part may
 * wait its turn behind a slow consumer for longer than that, and the wait is ours, not a
 * silent server's.
 */
function hold(f: InFlight): void {
  const { response } = f;
  if (!response || f.heldTimeoutMs !== undefined) return;
  response.pause();
  f.heldTimeoutMs = response.socket?.timeout ?? 0;
  response.socket?.setTimeout(0);
}

/** Lets a held part's response read its socket again, with its idle timeout back. */
function release(f: InFlight): void {
  const { response } = f;
  if (!response || f.heldTimeoutMs === undefined) return;
  response.socket?.setTimeout(f.heldTimeoutMs);
  f.heldTimeoutMs = undefined;
  response.resume();
}

/** Splits `[offset, offset + length)` of `path` into parts of at most `size` bytes. */
export function split(path: string, offset: number, length: number, size: number): Part[] {
  const parts: Part[] = [];
  for (let at = offset; at < offset + length; at += size) parts.push({ path, offset: at, length: Math.min(size, offset + length - at) });
  return parts;
}

/** A segment of a Static Large Object as its manifest names it. */
export interface Segment {
  path: string;
  size: number;
}

/** The parts that read `[from, to)` of an object made of `segments`, each within one segment. */
export function segmentParts(segments: readonly Segment[], from: number, to: number, size: number): Part[] {
  const parts: Part[] = [];
  let start = 0;
  for (const segment of segments) {
    const end = start + segment.size;
    const a = Math.max(from, start);
    const b = Math.min(to, end);
    if (a < b) parts.push(...split(segment.path, a - start, b - a, size));
    start = end;
  }
  return parts;
}
