// tsyringe needs the Reflect API before any decorated class loads, as src/cli/main.ts provides in production.
import "reflect-metadata";
