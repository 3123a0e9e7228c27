// Types for ensure-built.mjs (plain JS, shared with bench/run.mjs).

/** The checkout's root directory, with a trailing slash. */
export declare const repoRoot: string;
/** The built CLI's entry point, dist/src/cli/main.js. */
export declare const cliPath: string;

/** A failed or timed-out build. */
export declare class BuildError extends Error {}

export interface EnsureBuiltOptions {
  /** Gets one line before a build starts. */
  log?: (line: string) => void;
}

/** Runs `npm run build` if dist/ is missing or older than src/, plugins/, package.json or tsconfig*.json. */
export declare function ensureBuilt(options?: EnsureBuiltOptions): Promise<void>;
