import { randomBytes } from "node:crypto";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";

/** The local admin API key's file in the data dir, made on the first start without auth settings. */
export const LOCAL_KEY_FILE = "admin-api-key";

export function localKeyPath(dataDir: string): string {
  return join(dataDir, LOCAL_KEY_FILE);
}

/**
 * The local admin key, created (readable by its owner only) if the data dir has none.
 * `itx` finds it in the same data dir, so a one-command start needs no set-up.
 */
export async function ensureLocalAdminKey(dataDir: string): Promise<{ token: string; file: string; created: boolean }> {
  const file = localKeyPath(dataDir);
  const existing = await readLocalAdminKey(dataDir);
  if (existing) return { token: existing, file, created: false };
  await mkdir(dataDir, { recursive: true });
  const token = `itx_${randomBytes(32).toString("base64url")}`;
  try {
    // "wx": of two processes starting at once on one data dir, the second reads the first's key.
    await writeFile(file, `${token}\n`, { mode: 0o600, flag: "wx" });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
    return { token: (await readLocalAdminKey(dataDir))!, file, created: false };
  }
  return { token, file, created: true };
}

/** The local admin key of a data dir, if it has one. */
export async function readLocalAdminKey(dataDir: string): Promise<string | undefined> {
  try {
    return (await readFile(localKeyPath(dataDir), "utf8")).trim() || undefined;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw err;
  }
}
