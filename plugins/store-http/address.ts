/**
 * Which IP addresses a web download may connect to. Pure functions on address text as
 * the resolver and the URL parser give it (dotted-quad IPv4, any IPv6 spelling); the
 * URL parser has already turned spellings such as 2130706433 or 0x7f.1 into dotted quads.
 */
import { isIPv4, isIPv6 } from "node:net";

/** A block of addresses: the first `prefix` bits of `bytes` (4 bytes for IPv4, 16 for IPv6). */
export interface Cidr {
  bytes: number[];
  prefix: number;
}

/** Ranges a web download never reaches unless the operator allows them with allowCidrs; the first match names the reason. */
const FORBIDDEN: ReadonlyArray<readonly [string, string]> = [
  ["0.0.0.0/8", "an unspecified address ('this network', RFC 1122)"],
  ["10.0.0.0/8", "a private address (RFC 1918)"],
  ["100.64.0.0/10", "a shared address (carrier-grade NAT, RFC 6598)"],
  ["127.0.0.0/8", "a loopback address"],
  ["169.254.0.0/16", "a link-local address"],
  ["172.16.0.0/12", "a private address (RFC 1918)"],
  ["192.0.0.0/24", "a reserved address (IETF protocol assignments, RFC 6890)"],
  ["192.0.2.0/24", "a documentation address (RFC 5737)"],
  ["192.168.0.0/16", "a private address (RFC 1918)"],
  ["198.18.0.0/15", "a benchmarking address (RFC 2544)"],
  ["198.51.100.0/24", "a documentation address (RFC 5737)"],
  ["203.0.113.0/24", "a documentation address (RFC 5737)"],
  ["224.0.0.0/4", "a multicast address"],
  ["255.255.255.255/32", "the broadcast address"],
  ["240.0.0.0/4", "a reserved address (RFC 1112)"],
  ["::/128", "the unspecified address"],
  ["::1/128", "a loopback address"],
  ["fe80::/10", "a link-local address"],
  ["fec0::/10", "a site-local address (deprecated, RFC 3879)"],
  ["fc00::/7", "a unique local address (private, RFC 4193)"],
  ["ff00::/8", "a multicast address"],
  ["64:ff9b:1::/48", "a local-use NAT64 address (RFC 8215)"],
  ["100::/64", "a discard-only address (RFC 6666)"],
  ["2001:db8::/32", "a documentation address (RFC 3849)"],
];

/**
 * IPv6 ranges that carry an IPv4 address, and where: traffic to them reaches that IPv4
 * address (the host's own stack, a NAT64 gateway or a 6to4 relay), so they are judged by it.
 */
const EMBEDDING: ReadonlyArray<readonly [string, string, number]> = [
  ["::ffff:0:0/96", "an IPv4-mapped form", 12],
  ["::/96", "an IPv4-compatible form", 12],
  ["64:ff9b::/96", "a NAT64 form (RFC 6052)", 12],
  ["2002::/16", "a 6to4 form (RFC 3056)", 2],
];

const forbidden = FORBIDDEN.map(([cidr, reason]) => ({ cidr: parseCidr(cidr)!, reason }));
const embedding = EMBEDDING.map(([cidr, form, offset]) => ({ cidr: parseCidr(cidr)!, form, offset }));

/**
 * Why a web download must not connect to `address`, or undefined for an ordinary public
 * address; e.g. "a loopback address" or "an IPv4-mapped form of 10.0.0.5, a private
 * address (RFC 1918)". Text that is not an IP address is refused too.
 */
export function forbiddenReason(address: string): string | undefined {
  const bytes = addressBytes(address);
  if (!bytes) return "not an IP address";
  const range = forbidden.find((r) => contains(r.cidr, bytes));
  if (range) return range.reason;
  const embedded = embeddedIPv4(bytes);
  if (embedded) {
    const reason = forbiddenReason(embedded.address);
    if (reason) return `${embedded.form} of ${embedded.address}, ${reason}`;
  }
  return undefined;
}

/** Whether `address`, or the IPv4 address it embeds, lies in one of `cidrs`. */
export function inCidrs(cidrs: readonly Cidr[], address: string): boolean {
  const bytes = addressBytes(address);
  if (!bytes) return false;
  const embedded = embeddedIPv4(bytes);
  const candidates = embedded ? [bytes, addressBytes(embedded.address)!] : [bytes];
  return cidrs.some((cidr) => candidates.some((candidate) => contains(cidr, candidate)));
}

/** "10.0.0.0/8", "fd00::/8", or a single address (a /32 or /128); undefined if malformed. */
export function parseCidr(text: string): Cidr | undefined {
  const [address, prefixText, ...rest] = text.split("/");
  if (address === undefined || rest.length > 0 || address.includes("%")) return undefined;
  const bytes = addressBytes(address);
  if (!bytes) return undefined;
  const bits = bytes.length * 8;
  if (prefixText === undefined) return { bytes, prefix: bits };
  if (!/^\d{1,3}$/.test(prefixText) || Number(prefixText) > bits) return undefined;
  return { bytes, prefix: Number(prefixText) };
}

function contains(cidr: Cidr, bytes: number[]): boolean {
  if (cidr.bytes.length !== bytes.length) return false;
  for (let bit = 0; bit < cidr.prefix; bit += 8) {
    const mask = cidr.prefix - bit >= 8 ? 0xff : (0xff << (8 - (cidr.prefix - bit))) & 0xff;
    if ((cidr.bytes[bit / 8]! & mask) !== (bytes[bit / 8]! & mask)) return false;
  }
  return true;
}

function embeddedIPv4(bytes: number[]): { address: string; form: string } | undefined {
  if (bytes.length !== 16) return undefined;
  const found = embedding.find((e) => contains(e.cidr, bytes));
  return found && { address: bytes.slice(found.offset, found.offset + 4).join("."), form: found.form };
}

/** The address as bytes: 4 for dotted-quad IPv4, 16 for IPv6 (a zone such as %eth0 ignored). */
function addressBytes(address: string): number[] | undefined {
  if (isIPv4(address)) return address.split(".").map(Number);
  const unzoned = address.replace(/%.*$/s, "");
  if (!isIPv6(unzoned)) return undefined;
  // A trailing dotted quad (::ffff:1.2.3.4) becomes two 16-bit groups.
  const hex = unzoned.replace(/(\d+)\.(\d+)\.(\d+)\.(\d+)$/, (_, a, b, c, d) =>
    `${((+a << 8) | +b).toString(16)}:${((+c << 8) | +d).toString(16)}`,
  );
  const [head, tail] = hex.split("::") as [string, string | undefined];
  const groups = (part: string | undefined) => (part ? part.split(":") : []);
  const missing = 8 - groups(head).length - groups(tail).length;
  const all = tail === undefined ? groups(head) : [...groups(head), ...Array<string>(missing).fill("0"), ...groups(tail)];
  return all.flatMap((group) => {
    const value = parseInt(group, 16);
    return [value >> 8, value & 0xff];
  });
}
