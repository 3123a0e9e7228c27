/**
 * OpenTelemetry tracing: a span for every RPC (continuing the caller's W3C trace context
 * from the request metadata), for every task run and each of its pipeline stages, and for
 * every store call, which also hands the trace context to the store plugin.
 *
 * Without tracing.otlpEndpoint nothing is registered: the API's no-op tracer and
 * propagator stay, so each span costs a function call and the SDK is never loaded.
 */
import { context, propagation, ROOT_CONTEXT, SpanKind, SpanStatusCode, trace, type Context, type Span, type TextMapGetter } from "@opentelemetry/api";
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import type { Logger } from "pino";
import type { CallOptions, StoreInstance } from "./plugins/plugin-api.js";
import { VERSION } from "./version.js";

const tracer = () => trace.getTracer("imagetransfer", VERSION);

export interface Tracing {
  /** Sends the spans still buffered and unregisters the exporter. */
  shutdown(): Promise<void>;
}

/** Registers an OTLP/HTTP exporter when an endpoint is configured. */
export async function startTracing(options: { otlpEndpoint?: string; serviceName: string }, logger: Logger): Promise<Tracing> {
  if (!options.otlpEndpoint) return { shutdown: async () => undefined };
  // Loaded only here, so a service without tracing never pays for the SDK.
  const [{ NodeTracerProvider, BatchSpanProcessor }, { OTLPTraceExporter }, { resourceFromAttributes }] = await Promise.all([
    import("@opentelemetry/sdk-trace-node"),
    import("@opentelemetry/exporter-trace-otlp-http"),
    import("@opentelemetry/resources"),
  ]);
  const provider = new NodeTracerProvider({
    resource: resourceFromAttributes({ "service.name": options.serviceName, "service.version": VERSION }),
    spanProcessors: [new BatchSpanProcessor(new OTLPTraceExporter({ url: options.otlpEndpoint }))],
  });
  // Also installs the W3C trace-context propagator and an AsyncLocalStorage context manager.
  provider.register();
  logger.info({ otlpEndpoint: options.otlpEndpoint }, "exporting traces");
  return {
    async shutdown() {
      await provider.shutdown().catch((err: unknown) => logger.warn({ err: String(err) }, "could not flush traces"));
      trace.disable();
      propagation.disable();
      context.disable();
    },
  };
}

const headerGetter: TextMapGetter<Headers> = {
  keys: (headers) => [...headers.keys()],
  get: (headers, key) => headers.get(key) ?? undefined,
};

/** The server span of each RPC, a child of the caller's span when its metadata carries `traceparent`. */
export const traceRpcs: Interceptor = (next) => async (req) => {
  const parent = propagation.extract(ROOT_CONTEXT, req.header, headerGetter);
  const span = tracer().startSpan(
    `${req.service.typeName}/${req.method.name}`,
    {
      kind: SpanKind.SERVER,
      attributes: { "rpc.system": "grpc", "rpc.service": req.service.typeName, "rpc.method": req.method.name },
    },
    parent,
  );
  const ended = (err?: unknown) => {
    const code = err === undefined ? 0 : ConnectError.from(err).code;
    span.setAttribute("rpc.grpc.status_code", code);
    if (code !== 0 && code !== Code.Canceled) span.setStatus({ code: SpanStatusCode.ERROR, message: Code[code] });
    span.end();
  };
  const active = trace.setSpan(parent, span);
  let res;
  try {
    res = await context.with(active, () => next(req));
  } catch (err) {
    ended(err);
    throw err;
  }
  if (!res.stream) {
    ended();
    return res;
  }
  // A streamed answer ends when its last message is sent.
  const messages = res.message;
  return {
    ...res,
    message: (async function* () {
      try {
        yield* messages;
        ended();
      } catch (err) {
        ended(err);
        throw err;
      }
    })(),
  };
};

/** The current trace context as a W3C `traceparent`, for work that continues elsewhere (a task). */
export function currentTraceParent(): string | undefined {
  const carrier: Record<string, string> = {};
  propagation.inject(context.active(), carrier);
  return carrier.traceparent;
}

/** Runs a task under its own span, a child of the RPC that created it (from its `traceparent`). */
export async function traceTask<T>(
  task: { id: string; type: string; imageId: string; attempts: number; traceParent?: string },
  run: (trace: TaskTrace) => Promise<T>,
): Promise<T> {
  const parent = task.traceParent ? propagation.extract(ROOT_CONTEXT, { traceparent: task.traceParent }) : ROOT_CONTEXT;
  const span = tracer().startSpan(
    `task ${task.type}`,
    { kind: SpanKind.INTERNAL, attributes: { "task.id": task.id, "task.type": task.type, "image.id": task.imageId, "task.attempt": task.attempts } },
    parent,
  );
  const active = trace.setSpan(parent, span);
  const taskTrace = new TaskTrace(span, active);
  try {
    return await context.with(active, () => run(taskTrace));
  } catch (err) {
    taskTrace.fail("INTERNAL", err instanceof Error ? err.message : String(err));
    throw err;
  } finally {
    taskTrace.endStage();
    span.end();
  }
}

/** A task run's span, with one child span per pipeline stage (fetching, inspecting, converting, storing...). */
export class TaskTrace {
  private stage?: { name: string; span: Span };
  constructor(
    private readonly span: Span,
    private readonly active: Context,
  ) {}

  enterStage(name: string): void {
    if (this.stage?.name === name) return;
    this.endStage();
    this.stage = { name, span: tracer().startSpan(name, { attributes: { "task.stage": name } }, this.active) };
  }

  endStage(): void {
    this.stage?.span.end();
    this.stage = undefined;
  }

  fail(reason: string, message: string): void {
    this.span.setAttribute("task.error.reason", reason);
    this.span.setStatus({ code: SpanStatusCode.ERROR, message });
  }
}

/**
 * A store instance whose calls are client spans, each handing the plugin the trace
 * context (CallOptions.traceContext) so that plugins may pass it to their backend.
 */
export function traceStore(store: string, instance: StoreInstance): StoreInstance {
  const call = <O extends CallOptions | undefined, T>(op: string, key: string | undefined, options: O, fn: (options: O) => Promise<T>, endWhen?: (result: T) => Promise<void>) => {
    const span = tracer().startSpan(`store.${op}`, {
      kind: SpanKind.CLIENT,
      attributes: { "store.name": store, "store.operation": op, ...(key === undefined ? {} : { "store.key": key }) },
    });
    const traceContext: Record<string, string> = {};
    propagation.inject(trace.setSpan(context.active(), span), traceContext);
    const failed = (err: unknown) => {
      span.setStatus({ code: SpanStatusCode.ERROR, message: err instanceof Error ? err.message : String(err) });
      span.end();
      throw err;
    };
    return fn({ ...options, traceContext } as O).then((result) => {
      if (endWhen) void endWhen(result).then(() => span.end(), failed).catch(() => undefined);
      else span.end();
      return result;
    }, failed);
  };
  return {
    stat: (key, options) => call("stat", key, options, (o) => instance.stat(key, o)),
    // A read's span lasts until its stream ends.
    read: (key, options) =>
      call("read", key, options, (o) => instance.read(key, o), (stream) => new Promise((resolve, reject) => stream.once("close", resolve).once("error", reject))),
    write: (key, source, options) => call("write", key, options, (o) => instance.write(key, source, o)),
    delete: (key, options) => call("delete", key, options, (o) => instance.delete(key, o)),
    list: (options) => call("list", undefined, options, (o) => instance.list(o)),
    removePartialWrites: instance.removePartialWrites?.bind(instance),
    adoptFile: instance.adoptFile && ((key, path, options) => call("adoptFile", key, options, (o) => instance.adoptFile!(key, path, o))),
    linkFile: instance.linkFile && ((key, path, options) => call("linkFile", key, options, (o) => instance.linkFile!(key, path, o))),
    openFile: instance.openFile && ((key, options) => call("openFile", key, options, (o) => instance.openFile!(key, o))),
    presign: instance.presign?.bind(instance),
    close: instance.close?.bind(instance),
  };
}
