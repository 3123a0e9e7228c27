/**
 * The options of a web-download store, as an operator writes them under stores[].options.
 * Anything wrong stops the store from opening with a message that names the option.
 */
import { isIPv6 } from "node:net";
import { z } from "zod";
import { StoreError } from "../../src/plugins/plugin-api.js";
import { parseCidr, type Cidr } from "./address.js";

/** At most this many redirects are followed, whatever the options say. */
const MAX_REDIRECTS = 5;

/**
 * A host as the URL parser writes it (lower case, punycode, IP literals normalised), so
 * lists and URLs compare alike; "*.example.com" stands for every name below example.com.
 */
const hostPattern = z.string().transform((text, ctx) => {
  const wildcard = text.startsWith("*.");
  const bare = wildcard ? text.slice(2) : text;
  const name = isIPv6(bare) ? `[${bare}]` : bare;
  let host: string | undefined;
  try {
    const plain = name.replace(/^\[[^\]]*\]$/s, "IPV6");
    host = plain === "" || /[/:@?#\s\\]/.test(plain) ? undefined : new URL(`http://${name}/`).hostname;
  } catch {
    host = undefined;
  }
  if (!host) {
    ctx.addIssue({ code: "custom", message: `"${text}" is not a host name, an IP address or *.domain` });
    return z.NEVER;
  }
  return (wildcard ? "*." : "") + hostName(host);
});

const cidr = z.string().transform((text, ctx): Cidr => {
  const parsed = parseCidr(text);
  if (!parsed) {
    ctx.addIssue({ code: "custom", message: `"${text}" is not an address block such as 203.0.113.0/24, fd00::/8 or 127.0.0.1` });
    return z.NEVER;
  }
  return parsed;
});

const optionsSchema = z.strictObject({
  /** URL schemes a seed URI and every redirect may use. */
  allowedSchemes: z.array(z.enum(["http", "https"])).min(1).default(["http", "https"]),
  /** Ports a seed URI and every redirect may name (the scheme's own when none is written). */
  allowedPorts: z.array(z.number().int().min(1).max(65535)).min(1).default([80, 443]),
  /** When not empty, only these hosts (exact names or *.suffix); otherwise any host. */
  allowHosts: z.array(hostPattern).default([]),
  /** Hosts never fetched from, even when allowHosts matches too. */
  denyHosts: z.array(hostPattern).default([]),
  /** Address blocks the operator trusts although they are loopback, private, link-local etc. */
  allowCidrs: z.array(cidr).default([]),
  /** From the request's start until its connection is made (name lookup included). */
  connectTimeoutMs: z.number().int().min(1).max(600_000).default(10_000),
  /** Longest silence from the server, waiting for its answer or for the next bytes of the body. */
  idleTimeoutMs: z.number().int().min(1).max(3_600_000).default(60_000),
  maxRedirects: z
    .number()
    .int()
    .min(0)
    .max(MAX_REDIRECTS, `must be at most ${MAX_REDIRECTS}`)
    .default(MAX_REDIRECTS),
});

export type WebStoreOptions = z.output<typeof optionsSchema>;

/** Validated options; throws StoreError "invalid" naming the first bad option. */
export function parseOptions(options: Record<string, unknown>): WebStoreOptions {
  const result = optionsSchema.safeParse(options);
  if (result.success) return result.data;
  const issue = result.error.issues[0]!;
  const where = issue.path.map((p) => (typeof p === "number" ? `[${p}]` : `.${String(p)}`)).join("").replace(/^\./, "");
  const message = issue.code === "unrecognized_keys" ? `unknown option ${issue.keys.map((k) => `"${k}"`).join(", ")}` : issue.message;
  throw new StoreError("invalid", where ? `option ${where}: ${message}` : message);
}

/** A URL host as lists compare it: IPv6 literals without brackets, no trailing dot. */
export function hostName(urlHost: string): string {
  return urlHost.replace(/^\[(.*)\]$/s, "$1").replace(/\.$/, "");
}
