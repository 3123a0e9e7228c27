/**
 * The web-download store's options and the URL rules they make: schemes, ports,
 * credentials, host lists, and literal addresses in any spelling the URL parser accepts.
 * No network: only the checks made before a connection (connect-time checks are
 * exercised against a real server in test/integration/web-download.test.ts).
 */
import { describe, expect, it } from "vitest";
import definition from "../../plugins/store-http/index.js";
import { parseOptions } from "../../plugins/store-http/options.js";
import { DestinationPolicy } from "../../plugins/store-http/policy.js";
import { isStoreError, type StoreError } from "../../src/plugins/plugin-api.js";
import { registerPlugin } from "../helpers/register-plugin.js";

function policy(options: Record<string, unknown> = {}): DestinationPolicy {
  return new DestinationPolicy(parseOptions(options));
}

function refusal(check: () => void): StoreError {
  try {
    check();
  } catch (err) {
    expect(isStoreError(err), String(err)).toBe(true);
    return err as StoreError;
  }
  throw new Error("expected a refusal");
}

function optionError(options: Record<string, unknown>): string {
  return refusal(() => parseOptions(options)).message;
}

describe("registration", () => {
  it("serves http and https, is addressed by whole URIs, and only reads", async () => {
    const { stores, converters } = await registerPlugin(definition);
    expect(converters).toHaveLength(0);
    expect(stores).toHaveLength(1);
    expect(stores[0]!.schemes).toEqual(["http", "https"]);
    expect(stores[0]!.capabilities).toMatchObject({ uriKeys: true, readRanges: true, write: false, delete: false, list: false });
  });

  it("refuses to open with bad options, naming the option", async () => {
    const { stores } = await registerPlugin(definition);
    const open = () => stores[0]!.open({ name: "web", region: "local", options: { allowCidrs: ["10.0.0.0/99"] }, dataDir: "/tmp" });
    expect(() => open()).toThrow(/option allowCidrs\[0\]: "10.0.0.0\/99" is not an address block/);
  });
});

describe("options", () => {
  it("defaults to http and https on ports 80 and 443, any public host, five redirects", () => {
    expect(parseOptions({})).toEqual({
      allowedSchemes: ["http", "https"],
      allowedPorts: [80, 443],
      allowHosts: [],
      denyHosts: [],
      allowCidrs: [],
      connectTimeoutMs: 10_000,
      idleTimeoutMs: 60_000,
      maxRedirects: 5,
    });
  });

  it.each([
    [{ allowedSchemes: ["ftp"] }, /option allowedSchemes\[0\]: .*"http"\|"https"/],
    [{ allowedSchemes: [] }, /option allowedSchemes: /],
    [{ allowedPorts: [0] }, /option allowedPorts\[0\]: /],
    [{ allowedPorts: [65536] }, /option allowedPorts\[0\]: /],
    [{ allowedPorts: ["443"] }, /option allowedPorts\[0\]: /],
    [{ allowHosts: ["exa mple.com"] }, /option allowHosts\[0\]: "exa mple.com" is not a host name/],
    [{ denyHosts: ["http://example.com"] }, /option denyHosts\[0\]: "http:\/\/example.com" is not a host name/],
    [{ denyHosts: ["user@example.com"] }, /option denyHosts\[0\]: /],
    [{ denyHosts: [""] }, /option denyHosts\[0\]: /],
    [{ allowCidrs: ["10.0.0.0/33"] }, /option allowCidrs\[0\]: "10.0.0.0\/33" is not an address block such as/],
    [{ allowCidrs: ["localhost"] }, /option allowCidrs\[0\]: /],
    [{ maxRedirects: 6 }, /option maxRedirects: must be at most 5/],
    [{ maxRedirects: -1 }, /option maxRedirects: /],
    [{ connectTimeoutMs: 0 }, /option connectTimeoutMs: /],
    [{ idleTimeoutMs: 1.5 }, /option idleTimeoutMs: /],
    [{ allowCIDRs: ["10.0.0.0/8"] }, /unknown option "allowCIDRs"/],
  ])("refuses %j", (options, message) => {
    expect(optionError(options)).toMatch(message);
  });

  it("writes hosts as URLs do: lower case, punycode, IPv6 without brackets, no trailing dot", () => {
    const { allowHosts } = parseOptions({ allowHosts: ["Images.Example.COM.", "*.Mirror.Example", "bücher.example", "[::1]", "2001:db8::1", "2130706433"] });
    expect(allowHosts).toEqual(["images.example.com", "*.mirror.example", "xn--bcher-kva.example", "::1", "2001:db8::1", "127.0.0.1"]);
  });
});

describe("checkUrl", () => {
  const web = policy();

  it("lets an ordinary public URL through", () => {
    expect(() => web.checkUrl(new URL("https://images.example.com/cirros.qcow2?sig=abc"))).not.toThrow();
    expect(() => web.checkUrl(new URL("http://93.184.215.14/disk.raw"))).not.toThrow();
    expect(() => web.checkUrl(new URL("https://[2606:4700::1111]/disk.raw"))).not.toThrow();
  });

  it("refuses schemes, ports and credentials the options do not allow, naming the rule", () => {
    expect(refusal(() => web.checkUrl(new URL("ftp://example.com/x"))).message).toBe(
      'web download refused: scheme "ftp" is not allowed (allowedSchemes: http, https)',
    );
    expect(refusal(() => policy({ allowedSchemes: ["https"] }).checkUrl(new URL("http://example.com/x"))).message).toMatch(/scheme "http" is not allowed \(allowedSchemes: https\)/);
    expect(refusal(() => web.checkUrl(new URL("http://example.com:8080/x"))).message).toBe(
      "web download refused: port 8080 is not allowed (allowedPorts: 80, 443)",
    );
    expect(refusal(() => policy({ allowedPorts: [443] }).checkUrl(new URL("http://example.com/x"))).message).toMatch(/port 80 is not allowed/);
    expect(() => policy({ allowedPorts: [8443] }).checkUrl(new URL("https://example.com:8443/x"))).not.toThrow();
    for (const url of ["https://user:secret@example.com/x", "https://user@example.com/x", "https://:secret@example.com/x"]) {
      const err = refusal(() => web.checkUrl(new URL(url)));
      expect(err.kind).toBe("permission");
      expect(err.message).toMatch(/carries credentials/);
      expect(err.message).not.toMatch(/secret/);
    }
  });

  it("applies denyHosts before allowHosts, exact names and *.suffix alike", () => {
    const lists = policy({ allowHosts: ["images.example.com", "*.mirror.example"], denyHosts: ["bad.mirror.example"] });
    for (const url of ["https://images.example.com/a", "https://IMAGES.example.com./a", "https://eu.mirror.example/a", "https://a.b.mirror.example/a"]) {
      expect(() => lists.checkUrl(new URL(url)), url).not.toThrow();
    }
    expect(refusal(() => lists.checkUrl(new URL("https://bad.mirror.example/a"))).message).toBe(
      "web download refused: host bad.mirror.example is on denyHosts (bad.mirror.example)",
    );
    for (const url of ["https://mirror.example/a", "https://evilmirror.example/a", "https://images.example.com.evil.net/a", "https://example.com/a"]) {
      expect(refusal(() => lists.checkUrl(new URL(url))).message, url).toMatch(/is not on allowHosts/);
    }
    expect(refusal(() => policy({ denyHosts: ["*.example.com"] }).checkUrl(new URL("https://x.example.com/a"))).message).toMatch(/on denyHosts \(\*\.example\.com\)/);
  });

  it.each([
    ["http://127.0.0.1/", "127.0.0.1 is a loopback address"],
    ["http://2130706433/", "127.0.0.1 is a loopback address"], // decimal
    ["http://017700000001/", "127.0.0.1 is a loopback address"], // octal
    ["http://0x7f000001/", "127.0.0.1 is a loopback address"], // hex
    ["http://0x7f.1/", "127.0.0.1 is a loopback address"],
    ["http://0177.0.0.01/", "127.0.0.1 is a loopback address"],
    ["http://127.1/", "127.0.0.1 is a loopback address"],
    ["http://0/", "0.0.0.0 is an unspecified address"],
    ["http://[::]/", ":: is the unspecified address"],
    ["http://[::1]/", "::1 is a loopback address"],
    ["http://[0:0:0:0:0:0:0:1]/", "::1 is a loopback address"],
    ["http://[::ffff:127.0.0.1]/", "::ffff:7f00:1 is an IPv4-mapped form of 127.0.0.1, a loopback address"],
    ["http://[::ffff:7f00:1]/", "::ffff:7f00:1 is an IPv4-mapped form of 127.0.0.1, a loopback address"],
    ["http://[::ffff:a9fe:a9fe]/", "::ffff:a9fe:a9fe is an IPv4-mapped form of 169.254.169.254, a link-local address"],
    ["http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local address"],
    ["http://0xa9.0xfe.0xa9.0xfe/", "169.254.169.254 is a link-local address"],
    ["http://10.0.0.5/", "10.0.0.5 is a private address (RFC 1918); allow it with allowCidrs"],
    ["http://167772165/", "10.0.0.5 is a private address (RFC 1918)"],
    ["http://192.168.0.1/", "192.168.0.1 is a private address (RFC 1918)"],
    ["http://100.64.0.1/", "100.64.0.1 is a shared address (carrier-grade NAT"],
    ["http://[fd00::1]/", "fd00::1 is a unique local address"],
    ["http://[fe80::1]/", "fe80::1 is a link-local address"],
    ["http://224.0.0.1/", "224.0.0.1 is a multicast address"],
    ["http://255.255.255.255/", "255.255.255.255 is the broadcast address"],
    ["http://[64:ff9b::10.0.0.1]/", "64:ff9b::a00:1 is a NAT64 form (RFC 6052) of 10.0.0.1"],
    ["http://[2002:c0a8:1::]/", "2002:c0a8:1:: is a 6to4 form (RFC 3056) of 192.168.0.1"],
  ])("refuses %s: %s", (url, reason) => {
    const err = refusal(() => web.checkUrl(new URL(url)));
    expect(err.kind).toBe("permission");
    expect(err.message).toContain(`web download refused: ${reason}`);
  });

  it("lets an operator allow address blocks with allowCidrs, and nothing beyond them", () => {
    const lab = policy({ allowCidrs: ["10.0.0.0/24", "127.0.0.1", "fd00::/64"] });
    for (const url of ["http://10.0.0.5/", "http://167772165/", "http://127.0.0.1/", "http://[::ffff:127.0.0.1]/", "http://[fd00::1]/"]) {
      expect(() => lab.checkUrl(new URL(url)), url).not.toThrow();
    }
    for (const url of ["http://10.0.1.5/", "http://127.0.0.2/", "http://[::1]/", "http://[fd00:0:0:1::1]/"]) {
      expect(() => lab.checkUrl(new URL(url)), url).toThrow(/web download refused/);
    }
  });

  it("names the host and the address it resolved to for connect-time refusals", () => {
    expect(refusal(() => web.checkAddress("127.0.0.1", "rebind.example")).message).toBe(
      "web download refused: rebind.example resolves to 127.0.0.1, a loopback address; allow it with allowCidrs",
    );
    expect(() => web.checkAddress("93.184.215.14", "example.com")).not.toThrow();
  });
});
