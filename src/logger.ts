import { pino, type Logger } from "pino";
import pretty from "pino-pretty";

/**
 * Logs on stderr, so stdout stays free for command output: one JSON object per line,
 * or lines for people with format "pretty". Fields that may hold secrets are redacted
 * wherever they appear, as a second line of defence (nothing logs them on purpose).
 */
export function createLogger(level: string, format: "json" | "pretty" = "json"): Logger {
  const options = {
    level,
    base: { service: "imagetransfer" },
    redact: {
      paths: ["authorization", "*.authorization", "token", "*.token", "password", "*.password", "secret", "*.secret", "signature", "*.signature", "urlSigningKey", "*.urlSigningKey"],
      censor: "[redacted]",
    },
  };
  return format === "pretty"
    ? pino(options, pretty({ destination: 2, colorize: process.stderr.isTTY, sync: true }))
    : pino(options, pino.destination(2));
}
