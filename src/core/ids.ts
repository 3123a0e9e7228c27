import { randomUUID } from "node:crypto";
import { invalidArgument } from "./errors.js";

const uuidPattern = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

export function newId(): string {
  return randomUUID();
}

/** Checks a caller-supplied id; `field` names the request field in the error. */
export function parseId(field: string, value: string): string {
  const id = value.trim().toLowerCase();
  if (id === "") throw invalidArgument(`${field} is required`);
  if (!uuidPattern.test(id)) throw invalidArgument(`${field} must be a UUID, got "${truncate(value)}"`);
  return id;
}

function truncate(s: string): string {
  return s.length > 64 ? `${s.slice(0, 64)}...` : s;
}
