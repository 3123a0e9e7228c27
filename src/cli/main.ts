#!/usr/bin/env node
import "reflect-metadata";
import { Command } from "commander";
import { registerServe } from "./serve.js";

const program = new Command("itx").description("ImageTransfer: move VM disk images between owners, stores and compute services");
registerServe(program);
await program.parseAsync(process.argv);
