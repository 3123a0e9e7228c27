/**
 * The policy engine: one rule per action, in a small language modelled on oslo.policy's,
 * so operators who know OpenStack can read and override it.
 *
 *   @                   always          !                 never
 *   role:admin          the caller has the role
 *   project:%(owner)s   the caller's project is the target's owner (or a literal project)
 *   subject:NAME        the caller's subject
 *   rule:NAME           another rule of the same set
 *   not X, X and Y, X or Y, ( X )     with the usual precedence: not, and, or
 *
 * An empty rule means always, as in oslo.policy.
 */
import type { Principal } from "./principal.js";

/** What a rule is checked against: the record acted on, when there is one. */
export interface PolicyTarget {
  /** The project owning the image or task (for creation and listing: the caller's own). */
  owner: string;
}

/** Every action with a rule: one per RPC that needs authorisation, and the data endpoint's two. */
export const policyActions = [
  "create_image",
  "get_image",
  "list_images",
  "update_image",
  "delete_image",
  "create_upload_url",
  "import_image",
  "export_image",
  "create_download_url",
  "copy_image",
  "upload_image_data",
  "download_image_data",
  "get_task",
  "list_tasks",
  "watch_task",
  "cancel_task",
  "list_stores",
  "list_plugins",
  "get_status",
  "collect_garbage",
  // Requests to temporary URLs: they carry a signature instead of a principal, so only @ or ! make sense.
  "data_put",
  "data_get",
] as const;
export type PolicyAction = (typeof policyActions)[number];

/**
 * The rules in code: users act on their own project's images and tasks; services may
 * read any project's images and alone may stream image data; admins may do everything.
 */
export const defaultRules: Record<string, string> = {
  admin: "role:admin",
  service: "role:service",
  owner: "project:%(owner)s",
  admin_or_owner: "rule:admin or rule:owner",
  image_reader: "rule:admin_or_owner or rule:service",
  create_image: "rule:admin_or_owner",
  get_image: "rule:image_reader",
  list_images: "rule:image_reader",
  update_image: "rule:admin_or_owner",
  delete_image: "rule:admin_or_owner",
  create_upload_url: "rule:admin_or_owner",
  import_image: "rule:admin_or_owner",
  export_image: "rule:admin_or_owner",
  create_download_url: "rule:admin_or_owner",
  copy_image: "rule:admin_or_owner",
  upload_image_data: "rule:service or rule:admin",
  download_image_data: "rule:service or rule:admin",
  get_task: "rule:admin_or_owner",
  list_tasks: "rule:admin_or_owner",
  watch_task: "rule:admin_or_owner",
  cancel_task: "rule:admin_or_owner",
  list_stores: "rule:admin",
  list_plugins: "rule:admin",
  get_status: "rule:admin",
  collect_garbage: "rule:admin",
  data_put: "@",
  data_get: "@",
};

/** A rule or rule set that cannot be used; start-up fails with its message. */
export class PolicyError extends Error {
  override readonly name = "PolicyError";
}

type Node =
  | { kind: "always" }
  | { kind: "never" }
  | { kind: "not"; operand: Node }
  | { kind: "and" | "or"; operands: Node[] }
  | { kind: "check"; attribute: "role" | "project" | "subject"; value: Value }
  | { kind: "rule"; name: string };
type Value = { literal: string } | { target: keyof PolicyTarget };

const targetFields: ReadonlySet<string> = new Set<keyof PolicyTarget>(["owner"]);

/** A compiled rule set; `allows` answers whether a principal may take an action on a target. */
export class Policy {
  private constructor(private readonly rules: ReadonlyMap<string, Node>) {}

  /**
   * Compiles `defaultRules` overridden by each of `overrides` in turn. Bad syntax, unknown
   * references, cycles and unknown rule names fail with a message naming the rule.
   */
  static compile(...overrides: Array<Record<string, string>>): Policy {
    const texts: Record<string, string> = { ...defaultRules };
    for (const set of overrides) Object.assign(texts, set);
    const rules = new Map<string, Node>();
    for (const [name, text] of Object.entries(texts)) {
      if (!/^[a-z][a-z0-9_]*$/.test(name)) throw new PolicyError(`policy rule "${name}": names are lower-case letters, digits and _`);
      if (typeof text !== "string") throw new PolicyError(`policy rule "${name}": the rule must be a string`);
      rules.set(name, parseRule(name, text));
    }
    if (!rules.has("admin")) throw new PolicyError('policy rule "admin" is required');
    for (const name of rules.keys()) checkReferences(name, rules, []);
    return new Policy(rules);
  }

  /** An action without a rule (an RPC newer than the rule set) is for admins only. */
  allows(action: PolicyAction | string, principal: Principal, target: PolicyTarget): boolean {
    return evaluate(this.rules.get(action) ?? this.rules.get("admin")!, principal, target, this.rules);
  }
}

function checkReferences(name: string, rules: ReadonlyMap<string, Node>, path: string[]): void {
  if (path.includes(name)) throw new PolicyError(`policy rule "${path[0]}": rules refer to each other in a cycle: ${[...path, name].join(" -> ")}`);
  const visit = (node: Node): void => {
    if (node.kind === "not") visit(node.operand);
    else if (node.kind === "and" || node.kind === "or") node.operands.forEach(visit);
    else if (node.kind === "rule") {
      if (!rules.has(node.name)) throw new PolicyError(`policy rule "${name}": rule:${node.name} names no rule`);
      checkReferences(node.name, rules, [...path, name]);
    }
  };
  visit(rules.get(name)!);
}

function evaluate(node: Node, principal: Principal, target: PolicyTarget, rules: ReadonlyMap<string, Node>): boolean {
  switch (node.kind) {
    case "always":
      return true;
    case "never":
      return false;
    case "not":
      return !evaluate(node.operand, principal, target, rules);
    case "and":
      return node.operands.every((n) => evaluate(n, principal, target, rules));
    case "or":
      return node.operands.some((n) => evaluate(n, principal, target, rules));
    case "rule":
      return evaluate(rules.get(node.name)!, principal, target, rules);
    case "check": {
      const wanted = "literal" in node.value ? node.value.literal : target[node.value.target];
      if (node.attribute === "role") return principal.roles.includes(wanted);
      // An empty value never matches: a principal without a project owns nothing.
      const actual = node.attribute === "project" ? principal.project : principal.subject;
      return actual !== "" && actual === wanted;
    }
  }
}

/** Tokens: words separated by spaces, with parentheses split off their start and end (as oslo.policy does, so %(owner)s stays whole). */
function tokenize(text: string): Array<{ text: string; at: number }> {
  const tokens: Array<{ text: string; at: number }> = [];
  for (let m, pattern = /\S+/g; (m = pattern.exec(text)); ) {
    let word = m[0];
    let at = m.index + 1;
    while (word.startsWith("(")) {
      tokens.push({ text: "(", at });
      word = word.slice(1);
      at++;
    }
    let closing = 0;
    while (word.endsWith(")") && !/%\([^)]*\)$/.test(word)) {
      word = word.slice(0, -1);
      closing++;
    }
    if (word !== "") tokens.push({ text: word, at });
    for (let i = 0; i < closing; i++) tokens.push({ text: ")", at: at + word.length + i });
  }
  return tokens;
}

/** Parses one rule; errors say which rule, what was expected and at which character. */
export function parseRule(name: string, text: string): Node {
  const tokens = tokenize(text);
  if (tokens.length === 0) return { kind: "always" };
  let i = 0;
  const fail = (message: string): never => {
    throw new PolicyError(`policy rule "${name}": ${message} in "${text}"`);
  };
  const peek = () => tokens[i]?.text.toLowerCase();
  const where = () => (i < tokens.length ? `at character ${tokens[i]!.at}` : "at the end");

  const parseOr = (): Node => {
    const operands = [parseAnd()];
    while (peek() === "or") {
      i++;
      operands.push(parseAnd());
    }
    return operands.length === 1 ? operands[0]! : { kind: "or", operands };
  };
  const parseAnd = (): Node => {
    const operands = [parseNot()];
    while (peek() === "and") {
      i++;
      operands.push(parseNot());
    }
    return operands.length === 1 ? operands[0]! : { kind: "and", operands };
  };
  const parseNot = (): Node => {
    if (peek() === "not") {
      i++;
      return { kind: "not", operand: parseNot() };
    }
    return parseAtom();
  };
  const parseAtom = (): Node => {
    const token = tokens[i];
    if (!token) return fail("expected a check (like role:admin), @, ! or ( at the end");
    if (token.text === "(") {
      i++;
      const inner = parseOr();
      if (tokens[i]?.text !== ")") fail(`expected ) ${where()}`);
      i++;
      return inner;
    }
    i++;
    if (token.text === "@") return { kind: "always" };
    if (token.text === "!") return { kind: "never" };
    const colon = token.text.indexOf(":");
    if (colon <= 0 || colon === token.text.length - 1) {
      return fail(`expected a check like role:admin, @, ! or ( at character ${token.at}, found "${token.text}"`);
    }
    const attribute = token.text.slice(0, colon);
    const raw = token.text.slice(colon + 1);
    if (attribute === "rule") return { kind: "rule", name: raw };
    if (attribute !== "role" && attribute !== "project" && attribute !== "subject") {
      return fail(`unknown check "${attribute}:" at character ${token.at}; use role:, project:, subject: or rule:`);
    }
    const substitution = /^%\((\w+)\)s$/.exec(raw);
    if (substitution) {
      if (!targetFields.has(substitution[1]!)) fail(`unknown target field %(${substitution[1]})s at character ${token.at}; known: %(owner)s`);
      return { kind: "check", attribute, value: { target: substitution[1] as keyof PolicyTarget } };
    }
    if (raw.includes("%(")) fail(`malformed substitution "${raw}" at character ${token.at}; write %(owner)s`);
    return { kind: "check", attribute, value: { literal: raw } };
  };

  const node = parseOr();
  if (i < tokens.length) fail(`unexpected "${tokens[i]!.text}" at character ${tokens[i]!.at}; join checks with and / or`);
  return node;
}
