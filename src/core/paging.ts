import { createHash } from "node:crypto";
import { invalidArgument } from "./errors.js";

export const DEFAULT_PAGE_SIZE = 100;
export const MAX_PAGE_SIZE = 1000;

/** Lists run in creation order; a cursor is the last item returned. */
export interface Cursor {
  createTime: number;
  id: string;
}

export interface PageRequest<F> {
  filter: F;
  limit: number;
  after?: Cursor;
}

export interface Page<T> {
  items: T[];
  /** Set when more items follow the last one. */
  next?: Cursor;
}

export function parsePageSize(pageSize: number): number {
  if (pageSize === 0) return DEFAULT_PAGE_SIZE;
  if (!Number.isInteger(pageSize) || pageSize < 1 || pageSize > MAX_PAGE_SIZE) {
    throw invalidArgument(`page_size must be between 1 and ${MAX_PAGE_SIZE}, got ${pageSize}`);
  }
  return pageSize;
}

/**
 * Page tokens are opaque to clients: the cursor plus a fingerprint of the filter, so a
 * token replayed with other filters is refused instead of silently skipping items.
 */
export function encodePageToken(cursor: Cursor, filter: unknown): string {
  const body = JSON.stringify({ t: cursor.createTime, i: cursor.id, f: fingerprint(filter) });
  return Buffer.from(body).toString("base64url");
}

export function decodePageToken(token: string, filter: unknown): Cursor | undefined {
  if (token === "") return undefined;
  let body: unknown;
  try {
    body = JSON.parse(Buffer.from(token, "base64url").toString("utf8"));
  } catch {
    throw invalidArgument("page_token is not a token this service issued");
  }
  const { t, i, f } = (body ?? {}) as Record<string, unknown>;
  if (typeof t !== "number" || typeof i !== "string" || typeof f !== "string") {
    throw invalidArgument("page_token is not a token this service issued");
  }
  if (f !== fingerprint(filter)) {
    throw invalidArgument("page_token was issued for other filters; repeat the request with the same filters");
  }
  return { createTime: t, id: i };
}

function fingerprint(filter: unknown): string {
  return createHash("sha256").update(JSON.stringify(filter ?? null)).digest("base64url").slice(0, 12);
}
