import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { SqliteRepository } from "../../src/persistence/embedded/sqlite-repository.js";
import { repositoryContract } from "./repository-contract.js";

let dir = "";
repositoryContract("embedded (SQLite)", {
  async create() {
    dir = await mkdtemp(join(tmpdir(), "itx-repo-"));
    return new SqliteRepository(dir);
  },
  async reopen() {
    const repo = new SqliteRepository(dir);
    await repo.init();
    return repo;
  },
  async cleanup() {
    await rm(dir, { recursive: true, force: true });
  },
});
