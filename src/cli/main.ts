#!/usr/bin/env node
import "reflect-metadata";
import { Command, CommanderError } from "commander";
import { registerAdmin } from "./admin.js";
import { registerCompletion } from "./completion.js";
import { registerImages } from "./images.js";
import { registerPlugins } from "./plugins.js";
import { ExitCode, exitCodesHelp, reportError } from "./output.js";
import { registerServe } from "./serve.js";
import { registerTasks } from "./tasks.js";
import { registerTransfer } from "./transfer.js";
import { VERSION } from "../version.js";

// A reader that stops early (`itx tasks watch ID | head -3`) is not an error.
process.stdout.on("error", (err: NodeJS.ErrnoException) => {
  if (err.code === "EPIPE") process.exit(ExitCode.ok);
  throw err;
});

const program = new Command("itx")
  .description("ImageTransfer: move VM disk images between owners, stores and compute services")
  .version(VERSION, "-V, --version", "print the version of itx");
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
registerPlugins(program);
registerCompletion(program);
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
