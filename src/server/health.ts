import { ConnectError, Code, type ServiceImpl } from "@connectrpc/connect";
import { Health, HealthCheckResponse_ServingStatus as Status } from "../gen/grpc/health/v1/health_pb.js";

/** How often Watch re-checks and how long one check may take. */
const WATCH_INTERVAL_MS = 5_000;

/**
 * grpc.health.v1: each service is SERVING while its probe succeeds (the database
 * answers; for data transfers, a store is usable too), and the overall status ("") while
 * every probe does. `probes` maps service names to probes; services not in it use "".
 */
export function createHealthService(serviceNames: string[], probes: Record<string, () => Promise<void>>): ServiceImpl<typeof Health> {
  const known = new Set(["", ...serviceNames]);
  const status = async (service: string): Promise<Status> => {
    if (!known.has(service)) return Status.SERVICE_UNKNOWN;
    const checks = service === "" ? Object.values(probes) : [probes[service] ?? probes[""]!];
    try {
      await Promise.all(checks.map((probe) => probe()));
      return Status.SERVING;
    } catch {
      return Status.NOT_SERVING;
    }
  };
  return {
    async check(req) {
      if (!known.has(req.service)) throw new ConnectError(`unknown service "${req.service}"`, Code.NotFound);
      return { status: await status(req.service) };
    },
    async *watch(req, ctx) {
      let last: Status | undefined;
      while (!ctx.signal.aborted) {
        const current = await status(req.service);
        if (current !== last) yield { status: current };
        last = current;
        await new Promise((resolve) => {
          const timer = setTimeout(resolve, WATCH_INTERVAL_MS);
          ctx.signal.addEventListener("abort", () => (clearTimeout(timer), resolve(undefined)), { once: true });
        });
      }
    },
  };
}
