// Types for mongo-server.mjs (plain JS, shared with bench/control-plane.mjs).

export interface MongoServer {
  /** Like mongodb://127.0.0.1:PORT/ */
  uri: string;
  /** Stops the server and removes its data; safe to call more than once. */
  stop(): Promise<void>;
  /**
   * Simulates an outage: kills the server (SIGKILL, data kept) and returns a function that
   * starts it again on the same port with the same data. Not available for MONGODB_URI.
   */
  outage?(): Promise<() => Promise<void>>;
  /**
   * Simulates a hung server: stops the process (SIGSTOP), so connections are accepted but
   * never answered, and returns a function that lets it go on. Not available for MONGODB_URI.
   */
  freeze?(): () => void;
}

export interface FerretDbServer extends Required<MongoServer> {
  /** Where FerretDB keeps its data: the machine's PostgreSQL, or SQLite where none answers. */
  backend: "postgresql" | "sqlite";
}

/** $MONGODB_URI, else mongod from PATH, else FerretDB (startFerretDb). */
export declare function startMongoServer(): Promise<MongoServer>;

export interface FerretDbOptions {
  /** Where its temp dir is made; the OS temp dir by default. */
  parentDir?: string;
  /** Names its PostgreSQL database, itx_<label>_<random>; "test" by default. */
  label?: string;
}

/** FerretDB built by scripts/ferretdb.sh, in a PostgreSQL database of its own (dropped on stop). */
export declare function startFerretDb(options?: FerretDbOptions): Promise<FerretDbServer>;
