/**
 * A test store plugin: the built-in filesystem store with faults injected on demand. It
 * serves the scheme "faulty" and takes the filesystem store's options (`root`). Load it
 * with `pluginsDirs: [testPluginsDir]` (test/helpers/fault-store.ts) and steer it from
 * the test through `faultsOf(storeName)`: the control lives on globalThis, so the copy
 * the host loads and the copy the test imports share it.
 *
 * Faults, each for one kind of call, optionally only after `afterBytes` bytes of a read
 * or write, for `times` calls (Infinity: a store that stays down):
 * - "reset": a connection reset, as StoreError "unavailable" (caused by ECONNRESET);
 * - "503": the backend's 503 Service Unavailable, as StoreError "unavailable";
 * - "stall": the call stops making progress until it is aborted, or until the test calls
 *   `release()`: then it goes on as if nothing had happened (a pause).
 */
import { Readable } from "node:stream";
import filesystem from "../../../../plugins/store-filesystem/index.js";
import { registerForTest } from "../../../../src/testing/register.js";
import {
  defineStorePlugin,
  StoreError,
  type CallOptions,
  type ObjectInfo,
  type ReadOptions,
  type StoreConfig,
  type StoreDriver,
  type StoreInstance,
} from "../../../../src/plugins/plugin-api.js";

export type FaultKind = "reset" | "503" | "stall";
export type FaultedCall = "stat" | "read" | "write" | "delete" | "list";

export interface FaultRule {
  call: FaultedCall;
  fault: FaultKind;
  /** Reads and writes: the fault strikes after this many bytes of the call; absent, at the call itself. */
  afterBytes?: number;
  /** How many calls it strikes, 1 unless given; Infinity for a store that stays down. */
  times?: number;
  /** Only calls on keys starting with it. */
  keyPrefix?: string;
}

/** One call the store was asked to make, as the host made it. */
export interface CallRecord {
  call: FaultedCall;
  key: string;
  /** Reads: the range asked for (absent: the whole object). */
  range?: { offset: number; length?: number };
  /** Set when a fault struck this call. */
  fault?: FaultKind;
}

export interface FaultControl {
  inject(rule: FaultRule): void;
  /** Removes every rule (calls already stalled stay stalled until aborted). */
  clear(): void;
  /** Removes every rule, and forgets the calls and strikes so far. */
  reset(): void;
  /** Lets every stalled call go on. */
  release(): void;
  /** Every call so far, in order. */
  readonly calls: CallRecord[];
  /** Faults that struck so far. */
  struck: number;
}

interface ActiveRule extends FaultRule {
  left: number;
}

interface FaultState extends FaultControl {
  rules: ActiveRule[];
  /** Resolves the stalls waiting now. */
  released: Set<() => void>;
}

const controls = ((globalThis as Record<symbol, unknown>)[Symbol.for("imagetransfer.test.store-faulty")] ??= new Map()) as Map<string, FaultState>;

/** The fault control of the store instance named `store` (created on first use, kept across service restarts). */
export function faultsOf(store: string): FaultControl {
  let state = controls.get(store);
  if (!state) {
    const created: FaultState = {
      rules: [],
      released: new Set(),
      release() {
        for (const resume of created.released) resume();
        created.released.clear();
      },
      calls: [],
      struck: 0,
      inject: (rule) => void created.rules.push({ ...rule, left: rule.times ?? 1 }),
      clear: () => void created.rules.splice(0),
      reset() {
        created.rules.splice(0);
        created.calls.splice(0);
        created.struck = 0;
      },
    };
    controls.set(store, created);
    state = created;
  }
  return state;
}

/** Takes one strike of the first rule matching the call, if any. */
function strike(state: FaultState, record: CallRecord, atCall: boolean): ActiveRule | undefined {
  const rule = state.rules.find(
    (r) => r.call === record.call && (r.afterBytes === undefined) === atCall && (r.keyPrefix === undefined || record.key.startsWith(r.keyPrefix)),
  );
  if (!rule) return undefined;
  if (--rule.left <= 0) state.rules.splice(state.rules.indexOf(rule), 1);
  state.struck++;
  record.fault = rule.fault;
  return rule;
}

function faultError(fault: "reset" | "503", what: string): StoreError {
  if (fault === "503") return new StoreError("unavailable", `${what}: the backend answered 503 Service Unavailable (injected)`);
  const reset = Object.assign(new Error("read ECONNRESET"), { code: "ECONNRESET" });
  return new StoreError("unavailable", `${what}: connection reset by the backend (injected)`, { cause: reset });
}

/** A call that stopped making progress: rejects with the reason once `signal` aborts, resolves when the test releases it. */
function stall(state: FaultState, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const resume = () => {
      signal?.removeEventListener("abort", abort);
      resolve();
    };
    const abort = () => {
      state.released.delete(resume);
      reject(signal!.reason);
    };
    signal?.addEventListener("abort", abort, { once: true });
    state.released.add(resume);
  });
}

/** A call's fault, at the call itself: rejects (or stalls) when a rule strikes. */
async function atCall(state: FaultState, record: CallRecord, signal: AbortSignal | undefined): Promise<void> {
  state.calls.push(record);
  const rule = strike(state, record, true);
  if (!rule) return;
  if (rule.fault === "stall") await stall(state, signal);
  else throw faultError(rule.fault, `${record.call} ${record.key}`);
}

/** `inner`'s bytes until a mid-read rule strikes after its byte count: then an error, or silence. */
function faultyReadStream(state: FaultState, record: CallRecord, inner: Readable, signal: AbortSignal | undefined): Readable {
  const rule = state.rules.find((r) => r.call === "read" && r.afterBytes !== undefined && (r.keyPrefix === undefined || record.key.startsWith(r.keyPrefix)));
  if (!rule) return inner;
  async function* chunks(): AsyncGenerator<Buffer> {
    let delivered = 0;
    let struckHere = false;
    try {
      for await (const chunk of inner as AsyncIterable<Buffer>) {
        const room = rule!.afterBytes! - delivered;
        if (struckHere || chunk.length < room || rule!.left <= 0) {
          delivered += chunk.length;
          yield chunk;
          continue;
        }
        if (room > 0) yield chunk.subarray(0, room);
        struckHere = true;
        if (!strike(state, record, false)) {
          // Another read took the rule's last strike meanwhile.
          if (room < chunk.length) yield chunk.subarray(Math.max(room, 0));
          continue;
        }
        if (rule!.fault !== "stall") throw faultError(rule!.fault, `read ${record.key}`);
        await stall(state, signal);
        if (room < chunk.length) yield chunk.subarray(Math.max(room, 0));
      }
    } finally {
      inner.destroy();
    }
  }
  return Readable.from(chunks(), { objectMode: false });
}

class FaultyStore implements StoreInstance {
  constructor(
    private readonly state: FaultState,
    private readonly inner: StoreInstance,
  ) {}

  async stat(key: string, options?: CallOptions): Promise<ObjectInfo | undefined> {
    await atCall(this.state, { call: "stat", key }, options?.signal);
    return this.inner.stat(key, options);
  }

  async read(key: string, options?: ReadOptions): Promise<Readable> {
    const record: CallRecord = { call: "read", key, ...(options?.range && { range: { ...options.range } }) };
    await atCall(this.state, record, options?.signal);
    return faultyReadStream(this.state, record, await this.inner.read(key, options), options?.signal);
  }

  async write(key: string, source: AsyncIterable<Uint8Array>, options?: CallOptions): Promise<ObjectInfo> {
    const record: CallRecord = { call: "write", key };
    await atCall(this.state, record, options?.signal);
    const rule = this.state.rules.find((r) => r.call === "write" && r.afterBytes !== undefined && (r.keyPrefix === undefined || key.startsWith(r.keyPrefix)));
    if (!rule) return this.inner.write(key, source, options);
    // The inner write sees the fault as its source failing, and removes what it wrote.
    const state = this.state;
    let fault: unknown;
    async function* until(): AsyncGenerator<Uint8Array> {
      let taken = 0;
      let struckHere = false;
      for await (const chunk of source) {
        const room = rule!.afterBytes! - taken;
        if (struckHere || chunk.length < room || rule!.left <= 0) {
          taken += chunk.length;
          yield chunk;
          continue;
        }
        if (room > 0) yield chunk.subarray(0, room);
        struckHere = true;
        if (!strike(state, record, false)) {
          if (room < chunk.length) yield chunk.subarray(Math.max(room, 0));
          continue;
        }
        if (rule!.fault !== "stall") throw (fault = faultError(rule!.fault, `write ${key}`));
        await stall(state, options?.signal);
        if (room < chunk.length) yield chunk.subarray(Math.max(room, 0));
      }
    }
    try {
      return await this.inner.write(key, until(), options);
    } catch (err) {
      throw fault ?? err;
    }
  }

  async delete(key: string, options?: CallOptions): Promise<void> {
    await atCall(this.state, { call: "delete", key }, options?.signal);
    return this.inner.delete(key, options);
  }

  async list(options?: Parameters<StoreInstance["list"]>[0]) {
    await atCall(this.state, { call: "list", key: options?.prefix ?? "" }, options?.signal);
    return this.inner.list(options);
  }

  removePartialWrites(olderThan: Date, options?: CallOptions): Promise<number> {
    return this.inner.removePartialWrites?.(olderThan, options) ?? Promise.resolve(0);
  }
}

let files: Promise<StoreDriver> | undefined;

export default defineStorePlugin({
  schemes: ["faulty"],
  // As the filesystem store underneath: ranged reads, so broken reads can resume.
  capabilities: { readRanges: true, write: true, delete: true, list: true, presignGet: false, presignPut: false, maxObjectSize: 0 },
  async open(config: StoreConfig) {
    files ??= registerForTest(filesystem).then((r) => r.stores[0]!);
    return new FaultyStore(faultsOf(config.name) as FaultState, await (await files).open(config));
  },
});
