import { createHmac } from "node:crypto";

export type TempUrlDigest = "sha256" | "sha512";

/**
 * A Swift TempURL signature: the hex HMAC, keyed with the account's Temp-URL-Key, of
 * "METHOD\nEXPIRES\nPATH", where PATH is the object's path as Swift sees it after
 * decoding (/v1/AUTH_account/container/object). Swift tells SHA-256 from SHA-512 by the
 * length of the hex digest; SHA-1 is never used.
 */
export function tempUrlSignature(digest: TempUrlDigest, key: string, method: string, expires: number, path: string): string {
  return createHmac(digest, key).update(`${method}\n${expires}\n${path}`).digest("hex");
}

/** The object's URL: each path segment percent-encoded, the signature and expiry as query parameters. */
export function tempUrl(storageUrl: string, objectPath: string, signature: string, expires: number): string {
  const { origin } = new URL(storageUrl);
  const encoded = objectPath.split("/").map(encodeURIComponent).join("/");
  return `${origin}${encoded}?temp_url_sig=${signature}&temp_url_expires=${expires}`;
}
