import type { NodeHttpHandler } from "@smithy/node-http-handler";

type HttpRequest = Parameters<NodeHttpHandler["handle"]>[0];
type HandlerOptions = NonNullable<Parameters<NodeHttpHandler["handle"]>[1]>;

/**
 * The HTTP requests of one write, sent through the store's shared handler (and so its
 * connection pool). lib-storage gives no way to cancel the part uploads it has in flight,
 * so this does: once the write is stopped (aborted, or a part failed for good), requests
 * in flight are cancelled and new ones refused, except those that clean up. A
 * CreateMultipartUpload in flight is let finish, so the upload it starts is known and
 * can be aborted; the AbortMultipartUpload that follows goes through.
 */
export class WriteRequests {
  readonly metadata: NodeHttpHandler["metadata"];
  private readonly inFlight = new Set<AbortController>();
  private stopReason: Error | undefined;

  constructor(private readonly shared: NodeHttpHandler) {
    this.metadata = shared.metadata;
  }

  /** Cancels the write's requests in flight and refuses further ones but clean-up. */
  stop(reason: Error): void {
    if (this.stopReason) return;
    this.stopReason = reason;
    for (const controller of this.inFlight) controller.abort(reason);
  }

  async handle(request: HttpRequest, options: HandlerOptions = {}) {
    if (this.stopReason && !abortsUpload(request)) throw this.stopReason;
    // lib-storage sends without a signal of its own, so this one is the only one.
    const controller = new AbortController();
    if (!startsUpload(request)) this.inFlight.add(controller);
    try {
      return await this.shared.handle(request, { ...options, abortSignal: controller.signal });
    } finally {
      this.inFlight.delete(controller);
    }
  }

  // The shared handler is configured by the store's own client; a write's client leaves it be.
  updateHttpClientConfig(): void {}

  httpHandlerConfigs() {
    return this.shared.httpHandlerConfigs();
  }
}

/** CreateMultipartUpload: POST /KEY?uploads */
function startsUpload(request: HttpRequest): boolean {
  return request.method === "POST" && request.query !== undefined && "uploads" in request.query;
}

/** AbortMultipartUpload: DELETE /KEY?uploadId=... */
function abortsUpload(request: HttpRequest): boolean {
  return request.method === "DELETE" && request.query !== undefined && "uploadId" in request.query;
}
