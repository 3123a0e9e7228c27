import { describe, expect, it } from "vitest";
import { Policy, PolicyError } from "../../src/auth/policy.js";
import type { Principal } from "../../src/auth/principal.js";

const alice: Principal = { subject: "alice", project: "alpha", roles: ["member"] };
const compute: Principal = { subject: "compute", project: "services", roles: ["service"] };
const root: Principal = { subject: "root", project: "ops", roles: ["admin"] };
const own = (p: Principal) => ({ owner: p.project });

/** Whether a one-off rule, compiled as the rule of list_images, allows the principal on `owner`'s records. */
function holds(rule: string, principal: Principal, owner = principal.project): boolean {
  return Policy.compile({ list_images: rule }).allows("list_images", principal, { owner });
}

describe("the rule language", () => {
  it("has @ (always), ! (never) and the empty rule (always)", () => {
    expect(holds("@", alice)).toBe(true);
    expect(holds("!", root)).toBe(false);
    expect(holds("", alice)).toBe(true);
  });

  it("checks roles, projects against the target's owner or a literal, and subjects", () => {
    expect(holds("role:member", alice)).toBe(true);
    expect(holds("role:admin", alice)).toBe(false);
    expect(holds("project:%(owner)s", alice, "alpha")).toBe(true);
    expect(holds("project:%(owner)s", alice, "beta")).toBe(false);
    expect(holds("project:alpha", alice, "beta")).toBe(true);
    expect(holds("subject:compute", compute)).toBe(true);
    expect(holds("subject:compute", alice)).toBe(false);
  });

  it("never matches a principal without a project to an owner", () => {
    expect(holds("project:%(owner)s", { subject: "x", project: "", roles: [] }, "")).toBe(false);
  });

  it("binds not tighter than and, and tighter than or; parentheses group", () => {
    // not role:admin and role:member  ==  (not role:admin) and role:member
    expect(holds("not role:admin and role:member", alice)).toBe(true);
    expect(holds("not role:admin and role:member", root)).toBe(false);
    // role:admin or role:member and role:service  ==  role:admin or (role:member and role:service)
    expect(holds("role:admin or role:member and role:service", alice)).toBe(false);
    expect(holds("(role:admin or role:member) and role:service", alice)).toBe(false);
    expect(holds("(role:admin or role:member) and not role:service", alice)).toBe(true);
    expect(holds("((role:member))", alice)).toBe(true);
    expect(holds("not (role:member or role:admin)", alice)).toBe(false);
    expect(holds("NOT role:admin AND role:member", alice)).toBe(true);
  });

  it("follows rule: references", () => {
    const policy = Policy.compile({ members: "role:member", list_images: "rule:members or rule:admin" });
    expect(policy.allows("list_images", alice, own(alice))).toBe(true);
    expect(policy.allows("list_images", compute, own(compute))).toBe(false);
  });

  it("gives actions without a rule (newer RPCs) to admins only", () => {
    const policy = Policy.compile();
    expect(policy.allows("rotate_keys", root, own(root))).toBe(true);
    expect(policy.allows("rotate_keys", alice, own(alice))).toBe(false);
  });

  it("reports bad rules with the rule's name, what was expected and where", () => {
    const message = (rules: Record<string, string>) => {
      try {
        Policy.compile(rules);
      } catch (err) {
        expect(err).toBeInstanceOf(PolicyError);
        return (err as Error).message;
      }
      throw new Error("compiled");
    };
    expect(message({ get_image: "role:admin and and role:x" })).toBe(
      'policy rule "get_image": expected a check like role:admin, @, ! or ( at character 16, found "and" in "role:admin and and role:x"',
    );
    expect(message({ get_image: "role:admin role:x" })).toBe('policy rule "get_image": unexpected "role:x" at character 12; join checks with and / or in "role:admin role:x"');
    expect(message({ get_image: "role:admin)" })).toBe('policy rule "get_image": unexpected ")" at character 11; join checks with and / or in "role:admin)"');
    expect(message({ get_image: "role:" })).toBe('policy rule "get_image": expected a check like role:admin, @, ! or ( at character 1, found "role:" in "role:"');
    expect(message({ get_image: "project:%(owner)" })).toBe('policy rule "get_image": malformed substitution "%(owner)" at character 1; write %(owner)s in "project:%(owner)"');
    expect(message({ "Get-Image": "@" })).toBe('policy rule "Get-Image": names are lower-case letters, digits and _');
  });
});

describe("the default rules", () => {
  const policy = Policy.compile();
  it("let users act in their own project only", () => {
    expect(policy.allows("update_image", alice, { owner: "alpha" })).toBe(true);
    expect(policy.allows("update_image", alice, { owner: "beta" })).toBe(false);
  });
  it("let services read any project's images and stream data, but not change images", () => {
    expect(policy.allows("get_image", compute, { owner: "alpha" })).toBe(true);
    expect(policy.allows("upload_image_data", compute, { owner: "alpha" })).toBe(true);
    expect(policy.allows("upload_image_data", alice, { owner: "alpha" })).toBe(false);
    expect(policy.allows("delete_image", compute, { owner: "alpha" })).toBe(false);
  });
  it("let admins do everything", () => {
    for (const action of ["delete_image", "collect_garbage", "download_image_data", "cancel_task"]) {
      expect(policy.allows(action, root, { owner: "alpha" })).toBe(true);
    }
  });
});
