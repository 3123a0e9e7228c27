/**
 * The address classifier of the web-download store: every range it refuses, the IPv6
 * forms that embed an IPv4 address, and the address blocks operators write in allowCidrs.
 */
import { describe, expect, it } from "vitest";
import { forbiddenReason, inCidrs, parseCidr, type Cidr } from "../../plugins/store-http/address.js";

describe("forbiddenReason", () => {
  it.each([
    ["0.0.0.0", /unspecified/],
    ["0.255.255.255", /unspecified/],
    ["127.0.0.1", /loopback/],
    ["127.255.255.254", /loopback/],
    ["169.254.169.254", /link-local/],
    ["10.0.0.5", /private address \(RFC 1918\)/],
    ["172.16.0.1", /private address \(RFC 1918\)/],
    ["172.31.255.255", /private address \(RFC 1918\)/],
    ["192.168.1.1", /private address \(RFC 1918\)/],
    ["100.64.0.1", /carrier-grade NAT/],
    ["100.127.255.255", /carrier-grade NAT/],
    ["224.0.0.1", /multicast/],
    ["239.255.255.250", /multicast/],
    ["255.255.255.255", /broadcast/],
    ["240.0.0.1", /reserved/],
    ["192.0.0.8", /reserved/],
    ["192.0.2.1", /documentation/],
    ["198.51.100.7", /documentation/],
    ["203.0.113.9", /documentation/],
    ["198.18.0.1", /benchmarking/],
    ["::", /unspecified/],
    ["0:0:0:0:0:0:0:0", /unspecified/],
    ["::1", /loopback/],
    ["0:0:0:0:0:0:0:1", /loopback/],
    ["fe80::1", /link-local/],
    ["febf:ffff::1", /link-local/],
    ["fe80::1%eth0", /link-local/],
    ["fc00::1", /unique local/],
    ["fd12:3456:789a::1", /unique local/],
    ["fec0::1", /site-local/],
    ["ff02::1", /multicast/],
    ["FF05::2", /multicast/],
    ["64:ff9b:1::a", /local-use NAT64/],
    ["100::1", /discard-only/],
    ["2001:db8::1", /documentation/],
  ])("refuses %s", (address, reason) => {
    expect(forbiddenReason(address)).toMatch(reason);
  });

  it.each([
    ["::ffff:127.0.0.1", "an IPv4-mapped form of 127.0.0.1, a loopback address"],
    ["::ffff:7f00:1", "an IPv4-mapped form of 127.0.0.1, a loopback address"],
    ["0:0:0:0:0:ffff:7f00:0001", "an IPv4-mapped form of 127.0.0.1, a loopback address"],
    ["::FFFF:A9FE:A9FE", "an IPv4-mapped form of 169.254.169.254, a link-local address"],
    ["::ffff:10.1.2.3", "an IPv4-mapped form of 10.1.2.3, a private address (RFC 1918)"],
    ["::ffff:0.0.0.0", "an IPv4-mapped form of 0.0.0.0, an unspecified address ('this network', RFC 1122)"],
    ["::127.0.0.1", "an IPv4-compatible form of 127.0.0.1, a loopback address"],
    ["::c0a8:101", "an IPv4-compatible form of 192.168.1.1, a private address (RFC 1918)"],
    ["64:ff9b::7f00:1", "a NAT64 form (RFC 6052) of 127.0.0.1, a loopback address"],
    ["64:ff9b::192.168.0.1", "a NAT64 form (RFC 6052) of 192.168.0.1, a private address (RFC 1918)"],
    ["2002:7f00:1::", "a 6to4 form (RFC 3056) of 127.0.0.1, a loopback address"],
    ["2002:a00:5:1::1", "a 6to4 form (RFC 3056) of 10.0.0.5, a private address (RFC 1918)"],
  ])("refuses %s, which reaches an IPv4 address it embeds", (address, reason) => {
    expect(forbiddenReason(address)).toBe(reason);
  });

  it.each([
    "8.8.8.8",
    "1.1.1.1",
    "100.63.255.255", // just below CGNAT
    "100.128.0.0", // just above it
    "172.15.255.255",
    "172.32.0.0",
    "169.253.255.255",
    "223.255.255.255",
    "2606:4700:4700::1111",
    "2a00:1450:4001:80b::200e",
    "::ffff:8.8.8.8",
    "64:ff9b::808:808",
    "2002:808:808::1",
    "fe7f:ffff::1", // just below link-local
    "fbff::1", // just below unique local
  ])("lets the public address %s through", (address) => {
    expect(forbiddenReason(address)).toBeUndefined();
  });

  it.each(["", "localhost", "127.1", "2130706433", "0x7f.0.0.1", "1.2.3", "::g", "1.2.3.4.5"])(
    "refuses %j, which is not an address as the resolver and URL parser write them",
    (text) => {
      expect(forbiddenReason(text)).toBe("not an IP address");
    },
  );
});

describe("parseCidr and inCidrs", () => {
  const cidrs = (...texts: string[]): Cidr[] => texts.map((t) => parseCidr(t)!);

  it("matches addresses inside a block and not outside", () => {
    const blocks = cidrs("127.0.0.0/8", "10.20.0.0/15", "fd00:1::/32");
    for (const address of ["127.0.0.1", "127.255.0.9", "10.20.0.1", "10.21.255.255", "fd00:1::5", "fd00:1:ffff::1"]) {
      expect(inCidrs(blocks, address), address).toBe(true);
    }
    for (const address of ["128.0.0.1", "10.22.0.0", "10.19.255.255", "fd00:2::1", "::1"]) {
      expect(inCidrs(blocks, address), address).toBe(false);
    }
  });

  it("treats a bare address as a single-address block", () => {
    const blocks = cidrs("127.0.0.1", "::1");
    expect(inCidrs(blocks, "127.0.0.1")).toBe(true);
    expect(inCidrs(blocks, "127.0.0.2")).toBe(false);
    expect(inCidrs(blocks, "::1")).toBe(true);
    expect(inCidrs(blocks, "::2")).toBe(false);
  });

  it("matches the IPv4-mapped form of an allowed IPv4 address, and /0 matches its whole family", () => {
    expect(inCidrs(cidrs("127.0.0.0/8"), "::ffff:127.0.0.1")).toBe(true);
    expect(inCidrs(cidrs("0.0.0.0/0"), "203.0.113.1")).toBe(true);
    expect(inCidrs(cidrs("0.0.0.0/0"), "2001:db8::1")).toBe(false);
    expect(inCidrs(cidrs("::/0"), "2001:db8::1")).toBe(true);
  });

  it.each(["10.0.0.0/33", "::/129", "10.0.0.0/", "10.0.0.0/8/8", "10.0.0/8", "example.com/8", "fe80::1%eth0/64", "10.0.0.0/-1", "10.0.0.0/ 8"])(
    "rejects the malformed block %j",
    (text) => {
      expect(parseCidr(text)).toBeUndefined();
    },
  );
});
