import { pino, type Logger } from "pino";

/** One JSON object per line on stderr, so stdout stays free for command output. */
export function createLogger(level: string): Logger {
  return pino({ level, base: { service: "imagetransfer" } }, pino.destination(2));
}
