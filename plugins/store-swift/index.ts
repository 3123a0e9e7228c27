/**
 * The built-in "swift" store: one OpenStack Swift container per store instance, spoken to
 * over Swift's object API with node:http(s) and keep-alive connections, no client library.
 *
 * Mapping. A store instance is one container (option "container") of one account, so a
 * key is the object name: the seed URI swift://STORE/uploads/ID names the object
 * "uploads/ID" in that container. Keys with "." or ".." segments, empty segments, a
 * leading "/", control characters or over 960 bytes are refused. The containers are
 * expected to exist, as Swift deployments usually create them; with "createContainer":
 * true a missing one is created at open. Large objects keep their segments in "CONTAINER_segments", which the
 * plugin creates when missing.
 *
 * Authentication: tempauth v1.0 ("authVersion": "1.0", "user": "account:user", "key") or
 * Keystone v3 password auth ("authVersion": "3", "authUrl" the /v3 root, "user", "key"
 * the password, "project", optional "userDomain", "projectDomain", "endpointRegion",
 * "endpointInterface"). The token is cached and renewed on expiry; a 401 logs in again once.
 *
 * Writes: a source that ends within its first MiB is one PUT; a longer one becomes a
 * Static Large Object of "segmentSize"-byte segments (default 1 GiB, 1 MiB to 5 GiB; at
 * most 1000 segments), visible only once its manifest is stored. Any failure or abort
 * deletes the segments written so far; removePartialWrites finds those of killed writers.
 *
 * Reads: one longer than "readPartSize" (default 16 MiB) is fetched as ranged GETs,
 * "parallelReads" (default 3) at once, streamed in order; an SLO's parts come from its
 * segments directly. An object replaced mid-read fails the read (not-found).
 *
 * Temporary URLs are Swift TempURLs signed with HMAC-SHA256 or -SHA512 ("tempUrlDigest"),
 * never SHA-1, with the account's Temp-URL-Key: option "tempUrlKey" (set on the account
 * at open if it has another; that needs an account admin) or the key the account has.
 * A TempURL PUT is one plain object, so uploads through it are limited to Swift's 5 GiB.
 *
 * Errors: 404 -> not-found; 401 after logging in again and 403 -> permission; 5xx, 408,
 * 429 and lost or refused connections -> unavailable (the host retries those); other
 * refusals -> invalid. Messages name the container and object, never a key or token.
 */
import { defineStorePlugin, type StoreConfig } from "../../src/plugins/plugin-api.js";
import { SwiftStore } from "./store.js";

export default defineStorePlugin({
  schemes: ["swift"],
  capabilities: {
    readRanges: true,
    write: true,
    delete: true,
    list: true,
    presignGet: true,
    presignPut: true,
    // Static Large Objects lift Swift's 5 GiB object limit (1000 segments of up to 5 GiB).
    maxObjectSize: 0,
  },
  open: (config: StoreConfig) => SwiftStore.open(config),
});
