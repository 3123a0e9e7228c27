import type { Config } from "../config/config.js";
import type { QuotaLimits, Repository, Usage } from "../persistence/repository.js";

/** A project's limits: its own entries, else the default ones. */
export function quotaFor(config: Config, project: string): QuotaLimits {
  return { ...config.quotas.default, ...config.quotas.projects[project] };
}

/**
 * Reserves `delta` of the project's quota (atomically, RESOURCE_EXHAUSTED when over),
 * then creates what it is for; if creating fails, the reservation is given back.
 */
export async function withinQuota<T>(repository: Repository, config: Config, owner: string, delta: Partial<Usage>, create: () => Promise<T>): Promise<T> {
  const limits = quotaFor(config, owner);
  // Without a quota nothing is reserved: racing reservations cost a shared database round trips
  // for nothing. Usage is therefore counted from when a project has a quota (see docs/security.md).
  if (Object.values(limits).every((limit) => limit === undefined)) return create();
  await repository.changeUsage(owner, delta, limits);
  try {
    return await create();
  } catch (err) {
    const back = Object.fromEntries(Object.entries(delta).map(([k, v]) => [k, -v]));
    await repository.changeUsage(owner, back).catch(() => undefined);
    throw err;
  }
}
