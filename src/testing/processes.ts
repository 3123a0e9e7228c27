/**
 * The processes this one started (children, their children, ...), read from /proc (Linux),
 * so a test can tell whether a cancelled conversion left any of them running.
 */
import { readdir, readFile } from "node:fs/promises";

/** A process, told apart from a later one that reuses its pid by its start time. */
export interface ProcessId {
  pid: number;
  startTime: string;
  command: string;
}

interface ProcessStat extends ProcessId {
  ppid: number;
  state: string;
}

async function readStat(pid: number): Promise<ProcessStat | undefined> {
  let text: string;
  try {
    text = await readFile(`/proc/${pid}/stat`, "utf8");
  } catch {
    return undefined; // gone
  }
  // "pid (comm) state ppid ... starttime ...": comm may hold spaces and parentheses.
  const close = text.lastIndexOf(")");
  const fields = text.slice(close + 2).split(" ");
  return { pid, command: text.slice(text.indexOf("(") + 1, close), state: fields[0]!, ppid: Number(fields[1]), startTime: fields[19]! };
}

/** Every live descendant of this process. */
export async function descendants(): Promise<ProcessId[]> {
  const stats: ProcessStat[] = [];
  for (const name of await readdir("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    const stat = await readStat(Number(name));
    if (stat !== undefined) stats.push(stat);
  }
  const found: ProcessId[] = [];
  const parents = new Set([process.pid]);
  for (let grew = true; grew; ) {
    grew = false;
    for (const stat of stats) {
      if (parents.has(stat.ppid) && !parents.has(stat.pid) && stat.state !== "Z") {
        parents.add(stat.pid);
        found.push({ pid: stat.pid, startTime: stat.startTime, command: stat.command });
        grew = true;
      }
    }
  }
  return found;
}

/** Those of `processes` still running (zombies have stopped running and count as ended). */
export async function stillRunning(processes: readonly ProcessId[]): Promise<ProcessId[]> {
  const running: ProcessId[] = [];
  for (const process of processes) {
    const stat = await readStat(process.pid);
    if (stat !== undefined && stat.startTime === process.startTime && stat.state !== "Z") running.push(process);
  }
  return running;
}
