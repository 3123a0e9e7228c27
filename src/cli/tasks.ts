import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import type { Command } from "commander";
import {
  CancelTaskResponseSchema,
  GetTaskResponseSchema,
  ListTasksResponseSchema,
  TaskState,
  TaskStateSchema,
  TaskSchema,
  TaskTypeSchema,
  WatchTaskResponseSchema,
  type Task,
} from "../gen/imagetransfer/v1/task_pb.js";
import { addClientOptions, CALL_TIMEOUT_MS, fetchPages, runClient, type Clients } from "./client.js";
import {
  enumChoices,
  enumName,
  enumOption,
  ExitCode,
  formatBytes,
  formatFields,
  formatTime,
  orDash,
  positiveInt,
  printError,
  printJson,
  printJsonLine,
  printList,
  LiveProgress,
  type ClientOptions,
  type Column,
  type ProgressSample,
} from "./output.js";

interface ListOptions extends ClientOptions {
  state?: number;
  type?: number;
  image?: string;
  pageSize?: number;
  pageToken?: string;
  all?: boolean;
}

/** "1.0 GiB / 4.0 GiB (25%)", or just the bytes done while the total is unknown. */
function formatProgress(task: Task): string {
  const p = task.progress;
  if (!p || (p.bytesDone === 0n && p.bytesTotal === 0n)) return "-";
  if (p.bytesTotal === 0n) return formatBytes(p.bytesDone);
  const percent = Number((p.bytesDone * 100n) / p.bytesTotal);
  return `${formatBytes(p.bytesDone)} / ${formatBytes(p.bytesTotal)} (${percent}%)`;
}

const taskColumns: Column<Task>[] = [
  { header: "ID", value: (t) => t.id },
  { header: "TYPE", value: (t) => (t.type === 0 ? "-" : enumName(TaskTypeSchema, t.type)) },
  { header: "STATE", value: (t) => enumName(TaskStateSchema, t.state) },
  { header: "STAGE", value: (t) => orDash(t.progress?.stage) },
  { header: "PROGRESS", value: formatProgress },
  { header: "IMAGE", value: (t) => orDash(t.imageId) },
  { header: "CREATED", value: (t) => formatTime(t.createTime) },
];

/** The human view of one task. */
export function formatTask(task: Task): string {
  const fields: Array<[string, string]> = [
    ["id", task.id],
    ["type", task.type === 0 ? "-" : enumName(TaskTypeSchema, task.type)],
    ["state", enumName(TaskStateSchema, task.state)],
    ["image", orDash(task.imageId)],
    ["owner", orDash(task.owner)],
    ["stage", orDash(task.progress?.stage)],
    ["progress", formatProgress(task)],
    ["attempts", String(task.attempts)],
  ];
  if (task.result) {
    fields.push(["result image", orDash(task.result.imageId)]);
    for (const uri of task.result.storeUris) fields.push(["result uri", uri]);
  }
  if (task.error && (task.error.reason || task.error.message)) {
    fields.push(["error", `${orDash(task.error.reason)}: ${orDash(task.error.message)}`]);
  }
  fields.push(
    ["created", formatTime(task.createTime)],
    ["updated", formatTime(task.updateTime)],
    ["finished", formatTime(task.finishTime)],
    ["version", String(task.version)],
  );
  return formatFields(fields);
}

/** The line `tasks watch` prints per change when stderr is not a terminal. */
export function plainWatchLine(task: Task, now: () => Date = () => new Date()): string {
  const time = task.updateTime ? formatTime(task.updateTime) : now().toISOString();
  const p = task.progress;
  return `${time} ${enumName(TaskStateSchema, task.state)} ${orDash(p?.stage)} ${p?.bytesDone ?? 0n}/${p?.bytesTotal ?? 0n}\n`;
}

const terminal = new Set<TaskState>([TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELED]);

function sampleOf(task: Task): ProgressSample {
  return {
    state: enumName(TaskStateSchema, task.state),
    stage: task.progress?.stage ?? "",
    bytesDone: Number(task.progress?.bytesDone ?? 0n),
    bytesTotal: Number(task.progress?.bytesTotal ?? 0n),
    finished: terminal.has(task.state),
  };
}

/**
 * How a followed task is shown: "lines" is a live bar on stderr when it is a terminal,
 * else one plain line per change on stdout; "json-lines" prints every WatchTaskResponse
 * as a JSON line; "final-json" prints nothing while the task runs and the final Task as
 * one protobuf JSON document once it has ended.
 */
export type FollowOutput = "lines" | "json-lines" | "final-json";

/**
 * Follows a task until it ends, as `tasks watch` and every `--wait` do. Ctrl-C stops
 * watching; the task keeps going. Returns the exit code: 0 SUCCEEDED, 3 FAILED,
 * 4 CANCELED, 130 interrupted.
 */
export async function followTask({ tasks }: Clients, id: string, output: FollowOutput): Promise<number> {
  const controller = new AbortController();
  let interrupted = false;
  const onInterrupt = () => {
    interrupted = true;
    controller.abort();
  };
  process.once("SIGINT", onInterrupt);
  const live = output === "lines" && process.stderr.isTTY === true ? new LiveProgress(process.stderr) : undefined;
  let last: Task | undefined;
  try {
    for await (const response of tasks.watchTask({ id }, { signal: controller.signal })) {
      const task = response.task;
      // Versions only grow; anything else is a repeat.
      if (!task || (last && task.version <= last.version)) continue;
      last = task;
      if (output === "json-lines") printJsonLine(WatchTaskResponseSchema, response);
      else if (output === "final-json") continue;
      else if (live) live.update(sampleOf(task));
      else process.stdout.write(plainWatchLine(task));
    }
  } catch (err) {
    if (!interrupted || !(err instanceof ConnectError) || err.code !== Code.Canceled) throw err;
  } finally {
    process.off("SIGINT", onInterrupt);
    live?.stop();
  }
  if (interrupted) {
    printError("interrupted", `stopped watching task ${id}; the task itself was not canceled`);
    return ExitCode.interrupted;
  }
  if (!last || !terminal.has(last.state)) {
    printError("unavailable", `the server ended the watch before task ${id} finished`);
    return ExitCode.rpc;
  }
  if (output === "final-json") printJson(TaskSchema, last);
  const reason = `${orDash(last.error?.reason)}: ${orDash(last.error?.message)}`;
  switch (last.state) {
    case TaskState.SUCCEEDED:
      return ExitCode.ok;
    case TaskState.FAILED:
      printError("task_failed", `task ${id} failed: ${reason}`);
      return ExitCode.taskFailed;
    default:
      printError("task_canceled", `task ${id} was canceled: ${reason}`);
      return ExitCode.taskCanceled;
  }
}

/** `itx tasks ...`: long-running work. */
export function registerTasks(program: Command): void {
  const tasks = program.command("tasks").description("list, show, watch and cancel tasks");

  addClientOptions(
    tasks
      .command("list")
      .description("list tasks in creation order")
      .option("--state <state>", `only tasks in this state: ${enumChoices(TaskStateSchema).join(", ")}`, enumOption(TaskStateSchema, "state"))
      .option("--type <type>", `only tasks of this type: ${enumChoices(TaskTypeSchema).join(", ")}`, enumOption(TaskTypeSchema, "type"))
      .option("--image <id>", "only tasks working on this image")
      .option("--page-size <n>", "tasks per page, 1..1000 (server default 100)", positiveInt("--page-size"))
      .option("--page-token <token>", "continue from a previous page")
      .option("--all", "follow next_page_token and list every page"),
  ).action((opts: ListOptions) =>
    runClient(opts, async ({ tasks }) => {
      const request = { state: opts.state ?? 0, type: opts.type ?? 0, imageId: opts.image ?? "", pageSize: opts.pageSize ?? 0 };
      const page = await fetchPages(opts, (pageToken) =>
        tasks
          .listTasks({ ...request, pageToken }, { timeoutMs: CALL_TIMEOUT_MS })
          .then((r) => ({ items: r.tasks, nextPageToken: r.nextPageToken })),
      );
      const response = create(ListTasksResponseSchema, { tasks: page.items, nextPageToken: page.nextPageToken });
      printList(opts.json, ListTasksResponseSchema, response, taskColumns, response.tasks, response.nextPageToken, "tasks");
    }),
  );

  addClientOptions(tasks.command("get").description("show one task").argument("<id>", "the task id (a UUID)")).action(
    (id: string, opts: ClientOptions) =>
      runClient(opts, async ({ tasks }) => {
        const response = await tasks.getTask({ id }, { timeoutMs: CALL_TIMEOUT_MS });
        if (opts.json) return printJson(GetTaskResponseSchema, response);
        if (response.task) process.stdout.write(formatTask(response.task));
      }),
  );

  addClientOptions(
    tasks.command("cancel").description("ask a pending or running task to stop").argument("<id>", "the task id (a UUID)"),
  ).action((id: string, opts: ClientOptions) =>
    runClient(opts, async ({ tasks }) => {
      const response = await tasks.cancelTask({ id }, { timeoutMs: CALL_TIMEOUT_MS });
      if (opts.json) return printJson(CancelTaskResponseSchema, response);
      if (response.task) process.stdout.write(formatTask(response.task));
    }),
  );

  addClientOptions(
    tasks
      .command("watch")
      .description("follow a task until it ends: a live progress bar on a terminal, one line per change otherwise")
      .argument("<id>", "the task id (a UUID)")
      .addHelpText(
        "after",
        `
On a terminal (stderr is a TTY) a progress bar is redrawn in place on stderr: state, stage,
bytes done and total, rate and ETA. Otherwise stdout gets one line per change:
  <ISO time> <state> <stage> <bytes done>/<bytes total>
With --json, stdout gets each WatchTaskResponse as one compact JSON line (JSON Lines).

Exit codes: 0 SUCCEEDED, 3 FAILED (reason and message on stderr), 4 CANCELED,
1 RPC error, 130 Ctrl-C (stops watching; the task is not canceled).`,
      ),
  ).action((id: string, opts: ClientOptions) => runClient(opts, (clients) => followTask(clients, id, opts.json ? "json-lines" : "lines")));
}
