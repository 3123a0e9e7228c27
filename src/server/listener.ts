import { readFileSync } from "node:fs";
import http from "node:http";
import http2 from "node:http2";
import net from "node:net";
import type { AddressInfo } from "node:net";

type Handler = (req: http.IncomingMessage | http2.Http2ServerRequest, res: http.ServerResponse | http2.Http2ServerResponse) => void;

export interface Listener {
  /** Base URL clients use, e.g. http://127.0.0.1:50051. */
  url: string;
  port: number;
  close(): Promise<void>;
}

/** Large windows keep gRPC streams of image data from stalling on flow control. */
const http2Settings: http2.Settings = { initialWindowSize: 16 * 1024 * 1024 };
const PREFACE = Buffer.from("PRI * HTTP/2.0\r\n");

/**
 * Serves every protocol on one port. Cleartext: Node cannot serve HTTP/1.1 and h2c on
 * one http2 server, so a plain TCP server peeks at each connection's first bytes and
 * hands it to the HTTP/2 server if they are the HTTP/2 preface (gRPC, h2c Connect)
 * and to the HTTP/1.1 server otherwise (Connect JSON with curl, gRPC-Web). With TLS,
 * ALPN makes the same choice.
 */
export async function listen(handler: Handler, options: { address: string; tls?: { cert: string; key: string } }): Promise<Listener> {
  const { host, port } = splitAddress(options.address);
  const h2 = options.tls
    ? http2.createSecureServer(
        { cert: readFileSync(options.tls.cert), key: readFileSync(options.tls.key), allowHTTP1: true, settings: http2Settings },
        handler,
      )
    : http2.createServer({ settings: http2Settings }, handler);
  const h1 = http.createServer(handler as http.RequestListener);
  h1.keepAliveTimeout = 65_000;
  // An image upload may take hours: no limit on a whole request, but a stalled one is cut.
  h1.requestTimeout = 0;
  h1.timeout = 120_000;
  // h1 never listens itself (it gets sockets from the sniffer); "listening" is what starts
  // Node's connection tracking, which idle-connection closing and header timeouts need.
  h1.emit("listening");

  const front = options.tls ? (h2 as unknown as net.Server) : net.createServer((socket) => sniff(socket, h1, h2));
  await new Promise<void>((resolve, reject) => {
    front.once("error", reject);
    front.listen(port, host, () => resolve());
  });
  const bound = (front.address() as AddressInfo).port;
  const sockets = new Set<net.Socket>();
  front.on("connection", (socket: net.Socket) => {
    sockets.add(socket);
    socket.once("close", () => sockets.delete(socket));
  });
  const sessions = new Set<http2.Http2Session>();
  h2.on("session", (session: http2.Http2Session) => {
    sessions.add(session);
    // initialWindowSize covers each stream; the connection's own window stays at 64 KiB unless raised here.
    session.once("connect", () => session.setLocalWindowSize(http2Settings.initialWindowSize!));
    session.once("close", () => sessions.delete(session));
  });
  const scheme = options.tls ? "https" : "http";
  return {
    url: `${scheme}://${host.includes(":") ? `[${host}]` : host}:${bound}`,
    port: bound,
    close: () =>
      new Promise<void>((resolve) => {
        front.close(() => resolve());
        // Idle connections go now, busy ones after their calls; streams that outlive the
        // grace period (watchers) are cut.
        h1.close();
        for (const session of sessions) session.close();
        setTimeout(() => sockets.forEach((s) => s.destroy()), 2_000).unref();
      }),
  };
}

/** A connection that sends nothing to tell its protocol by is dropped after this. */
const SNIFF_TIMEOUT_MS = 30_000;

function sniff(socket: net.Socket, h1: http.Server, h2: http2.Http2Server): void {
  let seen = Buffer.alloc(0);
  socket.setTimeout(SNIFF_TIMEOUT_MS, () => socket.destroy());
  const onData = (chunk: Buffer) => {
    seen = Buffer.concat([seen, chunk]);
    const n = Math.min(seen.length, PREFACE.length);
    const isH2 = seen.subarray(0, n).equals(PREFACE.subarray(0, n));
    // Wait until the bytes tell the two apart (an HTTP/1 "PRI..." request line is not legal).
    if (isH2 && n < PREFACE.length) return;
    socket.off("data", onData);
    socket.setTimeout(0);
    socket.pause();
    socket.unshift(seen);
    // Both servers take the unshifted bytes from the socket's buffer. HTTP/2 then reads
    // the socket natively, so it must stay paused in JS; HTTP/1.1 reads through JS.
    if (isH2) {
      h2.emit("connection", socket);
    } else {
      h1.emit("connection", socket);
      socket.resume();
    }
  };
  socket.on("data", onData);
  socket.on("error", () => socket.destroy());
}

function splitAddress(address: string): { host: string; port: number } {
  const at = address.lastIndexOf(":");
  return { host: address.slice(0, at).replace(/^\[|\]$/g, ""), port: Number(address.slice(at + 1)) };
}
