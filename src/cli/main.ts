#!/usr/bin/env node
import "reflect-metadata";
import { createRequire } from "node:module";
import { Command, CommanderError } from "commander";
import { registerAdmin } from "./admin.js";
import { registerImages } from "./images.js";
import { ExitCode, exitCodesHelp, reportError } from "./output.js";
import { registerServe } from "./serve.js";
import { registerTasks } from "./tasks.js";
import { registerTransfer } from "./transfer.js";

// A reader that stops early (`itx tasks watch ID | head -3`) is not an error.
process.stdout.on("error", (err: NodeJS.ErrnoException) => {
  if (err.code === "EPIPE") process.exit(ExitCode.ok);
  throw err;
});

// package.json is two folders above src/cli, three above dist/src/cli.
const packageJson = createRequire(import.meta.url)(import.meta.url.includes("/dist/") ? "../../../package.json" : "../../package.json") as { version: string };

const program = new Command("itx")
  .description("ImageTransfer: move VM disk images between owners, stores and compute services")
  .version(packageJson.version, "-V, --version", "print the version of itx");
// Set before the commands are added, so that every subcommand inherits them.
program
  .exitOverride()
  .showSuggestionAfterError(true)
  .configureOutput({
    // Commander's usage errors ("error: unknown option ...") become "itx: usage: ...".
    outputError: (message, write) => write(`itx: usage: ${message.replace(/^error: /, "").trimEnd().replace(/\s*\n\s*/g, " ")}\n`),
  });
registerServe(program);
registerImages(program);
registerTasks(program);
registerTransfer(program);
registerAdmin(program);
program.addHelpText("after", exitCodesHelp);

try {
  await program.parseAsync(process.argv);
} catch (err) {
  if (err instanceof CommanderError) {
    // --help and --version exit 0; a command group given without a subcommand shows its help as a usage error.
    process.exitCode = err.code === "commander.helpDisplayed" || err.code === "commander.version" ? ExitCode.ok : ExitCode.usage;
  } else {
    process.exitCode = reportError(err);
  }
}
