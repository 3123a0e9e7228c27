import { readFile } from "node:fs/promises";
import { extname } from "node:path";
import { parse as parseYaml } from "yaml";
import { PolicyError } from "./policy.js";

/** Reads a policy file: a YAML or JSON mapping of rule names to rule texts. `key` names the setting, for messages. */
export async function readPolicyFile(file: string, key: string): Promise<Record<string, string>> {
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (err) {
    throw new PolicyError(`${key}: cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
  let value: unknown;
  try {
    value = extname(file) === ".json" ? JSON.parse(text) : parseYaml(text);
  } catch (err) {
    throw new PolicyError(`${key}: ${file} is not valid ${extname(file) === ".json" ? "JSON" : "YAML"}: ${(err as Error).message}`);
  }
  if (value === null || value === undefined) return {};
  if (typeof value !== "object" || Array.isArray(value)) throw new PolicyError(`${key}: ${file} must map rule names to rules`);
  for (const [name, rule] of Object.entries(value)) {
    if (typeof rule !== "string") throw new PolicyError(`${key}: ${file}: policy rule "${name}" must be a string`);
  }
  return value as Record<string, string>;
}
