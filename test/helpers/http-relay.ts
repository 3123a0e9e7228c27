import { createServer, request, type IncomingHttpHeaders } from "node:http";

/** One exchange an HTTP relay passed on: the request as it came, and the answer's status and headers. */
export interface Relayed {
  method: string;
  /** As sent: path and query. */
  path: string;
  headers: IncomingHttpHeaders;
  status: number;
  answerHeaders: IncomingHttpHeaders;
}

export interface HttpRelay {
  url: string;
  /** Every exchange so far, in the order the answers came. */
  relayed: Relayed[];
  close(): Promise<void>;
}

/**
 * An HTTP server on a loopback port that forwards every request to `target`'s origin,
 * streaming bodies both ways, and notes each exchange: a real server seen from the wire.
 * The Host header becomes the target's, unless `keepHost` (a signed request, such as
 * S3's SigV4, must arrive with the Host it was signed for).
 */
export async function startHttpRelay(target: URL, { keepHost = false } = {}): Promise<HttpRelay> {
  const relayed: Relayed[] = [];
  const server = createServer((incoming, outgoing) => {
    // Hop-by-hop: this server answered any "100 Continue" itself, and the connection is its own.
    const { expect: _expect, connection: _connection, ...headers } = incoming.headers;
    const upstream = request(
      { host: target.hostname, port: target.port, method: incoming.method, path: incoming.url, headers: keepHost ? headers : { ...headers, host: target.host } },
      (answer) => {
        relayed.push({ method: incoming.method!, path: incoming.url!, headers: incoming.headers, status: answer.statusCode!, answerHeaders: answer.headers });
        outgoing.writeHead(answer.statusCode!, answer.headers);
        answer.pipe(outgoing);
      },
    );
    upstream.on("error", () => outgoing.destroy());
    incoming.pipe(upstream);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as { port: number }).port}`,
    relayed,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
