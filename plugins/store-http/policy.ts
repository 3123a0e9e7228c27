/**
 * Where a web download may go. Every URL, the seed URI and each redirect alike, is checked
 * before its request: scheme, credentials, port, host lists and a literal IP address. Host
 * names are checked again on the addresses they resolve to, at connect time, through the
 * `lookup` the requests use: a name cannot resolve to a permitted address when checked and
 * to a forbidden one when connected (DNS rebinding).
 */
import { lookup as dnsLookup, type LookupAddress, type LookupOptions } from "node:dns";
import { isIP } from "node:net";
import { StoreError } from "../../src/plugins/plugin-api.js";
import { forbiddenReason, inCidrs } from "./address.js";
import { hostName, type WebStoreOptions } from "./options.js";

type LookupCallback = (err: NodeJS.ErrnoException | null, address: string | LookupAddress[], family?: number) => void;

export class DestinationPolicy {
  constructor(private readonly options: WebStoreOptions) {}

  /** Throws StoreError "permission" naming the rule the URL breaks. */
  checkUrl(url: URL): void {
    const scheme = url.protocol.replace(/:$/, "");
    if (!(this.options.allowedSchemes as string[]).includes(scheme)) {
      throw refused(`scheme "${scheme}" is not allowed (allowedSchemes: ${this.options.allowedSchemes.join(", ")})`);
    }
    if (url.username !== "" || url.password !== "") {
      throw refused("the URL carries credentials (user:password@host); use a URL that needs none, such as a temporary one");
    }
    const port = url.port === "" ? (scheme === "https" ? 443 : 80) : Number(url.port);
    if (!this.options.allowedPorts.includes(port)) {
      throw refused(`port ${port} is not allowed (allowedPorts: ${this.options.allowedPorts.join(", ")})`);
    }
    const host = hostName(url.hostname);
    const denied = this.options.denyHosts.find((pattern) => matches(pattern, host));
    if (denied) throw refused(`host ${host} is on denyHosts (${denied})`);
    if (this.options.allowHosts.length > 0 && !this.options.allowHosts.some((pattern) => matches(pattern, host))) {
      throw refused(`host ${host} is not on allowHosts`);
    }
    if (isIP(host)) this.checkAddress(host);
  }

  /** Throws StoreError "permission" for an address in a forbidden range the operator did not allow. */
  checkAddress(address: string, host?: string): void {
    const reason = forbiddenReason(address);
    if (reason === undefined || inCidrs(this.options.allowCidrs, address)) return;
    const subject = host === undefined ? `${address} is` : `${host} resolves to ${address},`;
    throw refused(`${subject} ${reason}; allow it with allowCidrs`);
  }

  /**
   * The name lookup for requests: resolves every address of the name and refuses the
   * connection if any of them is forbidden, before a single packet goes to it.
   */
  readonly lookup = (hostname: string, options: LookupOptions, callback: LookupCallback): void => {
    dnsLookup(hostname, { ...options, all: true }, (err, addresses) => {
      if (err) return callback(err, "");
      try {
        for (const { address } of addresses) this.checkAddress(address, hostname);
      } catch (refusal) {
        return callback(refusal as StoreError, "");
      }
      if (options.all) callback(null, addresses);
      else callback(null, addresses[0]!.address, addresses[0]!.family);
    });
  };
}

export function refused(rule: string): StoreError {
  return new StoreError("permission", `web download refused: ${rule}`);
}

function matches(pattern: string, host: string): boolean {
  return pattern.startsWith("*.") ? host.endsWith(pattern.slice(1)) : host === pattern;
}
