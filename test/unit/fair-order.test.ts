import { expect, it } from "vitest";
import { newTaskRecord } from "../../src/core/task.js";
import { fairOrder } from "../../src/core/task-runner.js";

it("starts tasks oldest first within a project and takes projects in turn", () => {
  const task = (id: string, owner: string, at: number) => newTaskRecord({ id, type: "import", imageId: id, owner }, at);
  // Project a submitted a burst before b and c asked for anything.
  const claimable = [task("a1", "a", 1), task("a2", "a", 2), task("a3", "a", 3), task("b1", "b", 4), task("a4", "a", 5), task("c1", "c", 6), task("b2", "b", 7)];
  expect(fairOrder(claimable).map((t) => t.id)).toEqual(["a1", "b1", "c1", "a2", "b2", "a3", "a4"]);
  expect(fairOrder([])).toEqual([]);
});
