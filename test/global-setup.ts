/**
 * Vitest global setup: a real Swift for the tests that need one (and for the S3 plugin,
 * through Swift's s3api, unless S3_ENDPOINT names another endpoint). Unless SWIFT_AUTH_URL
 * already points at one, scripts/swift.sh starts an all-in-one on loopback (installing its
 * Debian packages on a fresh machine), and its settings go into process.env, which the
 * test workers inherit. Teardown
 * releases it: a Swift that test runs started stops when the last run using it ends (so
 * two runs sharing a machine do not pull it from under each other); one started by hand
 * keeps running.
 */
import { execFile } from "node:child_process";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

const run = promisify(execFile);
const script = fileURLToPath(new URL("../scripts/swift.sh", import.meta.url));

export default async function setup(): Promise<(() => Promise<void>) | undefined> {
  if (process.env.SWIFT_AUTH_URL) return undefined;
  try {
    await run("bash", [script, "start", "--for", String(process.pid)], { timeout: 600_000 });
  } catch (err) {
    const { stderr } = err as { stderr?: string };
    throw new Error(`scripts/swift.sh start failed; the Swift tests cannot run:\n${stderr ?? String(err)}`);
  }
  const { stdout } = await run("bash", [script, "env"]);
  // An S3 endpoint named by S3_ENDPOINT stays the S3 tests' endpoint.
  const ownS3 = process.env.S3_ENDPOINT !== undefined;
  for (const line of stdout.split("\n")) {
    const match = /^export ([A-Z0-9_]+)=(.*)$/.exec(line);
    if (match && !(ownS3 && match[1]!.startsWith("S3_"))) process.env[match[1]!] = match[2]!;
  }
  return async () => {
    await run("bash", [script, "release", String(process.pid)], { timeout: 60_000 });
  };
}
