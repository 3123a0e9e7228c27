import { setTimeout as sleep } from "node:timers/promises";
import { isDomainError } from "./errors.js";

/**
 * Runs `fn` until it stops failing with UNAVAILABLE, backing off up to 5 s between
 * tries: for writes a transfer must not lose when the database is briefly away (a
 * final state, an image becoming active). Other errors, and an abort, end it.
 */
export async function whileUnavailable<T>(fn: () => Promise<T>, signal?: AbortSignal, onWait?: () => void): Promise<T> {
  for (let delay = 250; ; delay = Math.min(delay * 2, 5_000)) {
    try {
      return await fn();
    } catch (err) {
      if (!isDomainError(err) || err.kind !== "unavailable" || signal?.aborted) throw err;
      onWait?.();
      await sleep(delay * (0.5 + Math.random()), undefined, { signal });
    }
  }
}
