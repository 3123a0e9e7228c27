import { close, fsync, ftruncate, open, writev } from "node:fs";
import type { FileHandle } from "node:fs/promises";
import { Writable } from "node:stream";
import type { FileRange } from "./plugin-api.js";

/** Zeros compared against, a slice at a time. */
const ZEROS = Buffer.alloc(1024 * 1024);

/**
 * Holes listed at most (about 4 MiB of list): an image of millions of separate zero runs
 * must not grow it without bound. Holes past it are still left, just not listed; a reader
 * that skips the listed ones reads the others, which read as zeros all the same.
 */
const MAX_LISTED_HOLES = 65_536;

/**
 * Bytes buffered by default before the writer pushes back. Deep: with Node's 16 KiB every
 * 64 KiB network chunk waited for its own write before the socket was read again (an upload
 * ran at 200 MB/s, the disk idle); now several chunks go to disk in one writev.
 */
const BUFFER_BYTES = 4 * 1024 * 1024;

export interface SparseFileWriterOptions {
  /** fsync the file before it is closed, as a store must before it renames it into place. */
  sync?: boolean;
  /** Bytes buffered before the writer pushes back (default 4 MiB). */
  highWaterMark?: number;
}

/**
 * Writes a stream to a new file, leaving chunks of zeros as holes. Images are often half
 * zeros: a hole costs no disk and no page cache (writing fresh page-cache pages costs up to
 * 3 s per GiB on a VM whose idle memory the host reclaims), qemu-img skips it when it reads,
 * and the host hashes it without reading it. Give it a path (it creates the file) or an open
 * file handle of an empty file (it closes the handle when it ends or is destroyed).
 */
export class SparseFileWriter extends Writable {
  /** The holes left so far, ascending: each run of zero chunks is one (up to MAX_LISTED_HOLES of them). */
  readonly holes: FileRange[] = [];
  private fd = -1;
  private position = 0;
  private readonly sync: boolean;
  /** Set while a write, truncate or fsync is in flight: the file is closed only after it, never under it. */
  private busy = false;
  private afterIo?: () => void;

  constructor(
    private readonly target: string | FileHandle,
    options: SparseFileWriterOptions = {},
  ) {
    super({ highWaterMark: options.highWaterMark ?? BUFFER_BYTES });
    this.sync = options.sync ?? false;
  }

  override _construct(callback: (error?: Error | null) => void): void {
    if (typeof this.target !== "string") {
      this.fd = this.target.fd;
      return callback();
    }
    open(this.target, "w", (err, fd) => {
      this.fd = fd;
      callback(err);
    });
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    this._writev([{ chunk }], callback);
  }

  override _writev(chunks: { chunk: Buffer }[], callback: (error?: Error | null) => void): void {
    // Runs of data between zero chunks, each written where it belongs.
    const runs: { position: number; buffers: Buffer[] }[] = [];
    let run: { position: number; buffers: Buffer[] } | undefined;
    for (const { chunk } of chunks) {
      if (chunk.length === 0) continue;
      if (isZero(chunk)) {
        run = undefined;
        const last = this.holes.at(-1);
        if (last && last.offset + last.length === this.position) last.length += chunk.length;
        else if (this.holes.length < MAX_LISTED_HOLES) this.holes.push({ offset: this.position, length: chunk.length });
      } else {
        if (!run) runs.push((run = { position: this.position, buffers: [] }));
        run.buffers.push(chunk);
      }
      this.position += chunk.length;
    }
    const done = this.io(callback);
    const next = (i: number): void => {
      if (i === runs.length) return done(null);
      writeAll(this.fd, runs[i]!.buffers, runs[i]!.position, (err) => (err ? done(err) : next(i + 1)));
    };
    next(0);
  }

  override _final(callback: (error?: Error | null) => void): void {
    const done = this.io(callback);
    // Zeros at the end leave no hole unless the file is this long.
    ftruncate(this.fd, this.position, (err) => {
      if (err || !this.sync) return done(err);
      fsync(this.fd, done);
    });
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    const closeFile = () => {
      if (typeof this.target !== "string") {
        this.target.close().then(
          () => callback(error),
          (err: Error) => callback(error ?? err),
        );
      } else if (this.fd < 0) callback(error);
      else close(this.fd, (err) => callback(error ?? err));
    };
    // Closing under a write in flight could let another file reuse the descriptor it writes to.
    if (this.busy) this.afterIo = closeFile;
    else closeFile();
  }

  /** Marks I/O in flight until the returned callback runs, then closes the file if a destroy waits for that. */
  private io(callback: (error?: Error | null) => void): (error?: Error | null) => void {
    this.busy = true;
    return (error) => {
      this.busy = false;
      callback(error);
      this.afterIo?.();
    };
  }
}

function isZero(chunk: Buffer): boolean {
  for (let at = 0; at < chunk.length; at += ZEROS.length) {
    const part = chunk.subarray(at, at + ZEROS.length);
    if (!part.equals(ZEROS.subarray(0, part.length))) return false;
  }
  return true;
}

/** writev until every byte is written: a write may take fewer bytes than it was given. */
function writeAll(fd: number, buffers: Buffer[], position: number, callback: (error: Error | null) => void): void {
  writev(fd, buffers, position, (err, written) => {
    if (err) return callback(err);
    const rest: Buffer[] = [];
    let skip = written;
    for (const buffer of buffers) {
      if (skip >= buffer.length) skip -= buffer.length;
      else {
        rest.push(buffer.subarray(skip));
        skip = 0;
      }
    }
    if (rest.length === 0) return callback(null);
    writeAll(fd, rest, position + written, callback);
  });
}
