import { Code, ConnectError, createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { Option, type Command } from "commander";
import { readLocalAdminKey } from "../auth/local-key.js";
import { loadConfig } from "../config/config.js";
import { AdminService } from "../gen/imagetransfer/v1/admin_pb.js";
import { ImageService } from "../gen/imagetransfer/v1/image_pb.js";
import { TaskService } from "../gen/imagetransfer/v1/task_pb.js";
import { TransferService } from "../gen/imagetransfer/v1/transfer_pb.js";
import { ExitCode, reportError, setDocumentFormat, UsageError, type ClientOptions } from "./output.js";

export const DEFAULT_SERVER = "http://127.0.0.1:50051";

/** Unary calls give up after this long; watching a task has no deadline. */
export const CALL_TIMEOUT_MS = 30_000;

export interface Clients {
  /** The normalized server URL, for messages. */
  server: string;
  images: Client<typeof ImageService>;
  tasks: Client<typeof TaskService>;
  transfer: Client<typeof TransferService>;
  admin: Client<typeof AdminService>;
}

/**
 * The server URL from --server, then ITX_SERVER, then the default. A bare HOST:PORT
 * means http://HOST:PORT. Only http and https are accepted.
 */
export function resolveServer(option: string | undefined, env: NodeJS.ProcessEnv = process.env): string {
  const raw = (option ?? env.ITX_SERVER ?? "").trim() || DEFAULT_SERVER;
  const withScheme = /^[a-z][a-z0-9+.-]*:\/\//i.test(raw) ? raw : `http://${raw}`;
  let url: URL;
  try {
    url = new URL(withScheme);
  } catch {
    throw new UsageError(`--server "${raw}" is not a URL; expected e.g. ${DEFAULT_SERVER}`);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new UsageError(`--server "${raw}" must be an http:// or https:// URL`);
  }
  if (url.search || url.hash || url.username || url.password) {
    throw new UsageError(`--server "${raw}" must not carry credentials, a query or a fragment`);
  }
  return url.href.replace(/\/+$/, "");
}

/** Connect clients over HTTP/1.1 with the binary format; https URLs use TLS; a token goes in every call's authorization header. */
export function createClients(server: string, token?: string): Clients {
  const bearer: Interceptor = (next) => (req) => {
    req.header.set("authorization", `Bearer ${token}`);
    return next(req);
  };
  const transport = createConnectTransport({
    baseUrl: server,
    httpVersion: "1.1",
    useBinaryFormat: true,
    interceptors: token ? [bearer] : [],
  });
  return {
    server,
    images: createClient(ImageService, transport),
    tasks: createClient(TaskService, transport),
    transfer: createClient(TransferService, transport),
    admin: createClient(AdminService, transport),
  };
}

/** Adds --server, --token, --data-dir and --json to a command that talks to the server. */
export function addClientOptions(command: Command, options: { outputFormat?: boolean } = {}): Command {
  command
    .option("--server <url>", `the ImageTransfer server (env ITX_SERVER; default ${DEFAULT_SERVER})`)
    .option("--token <token>", "API key or JWT to call with (env ITX_TOKEN; default the local admin key of --data-dir)")
    .option("--data-dir <dir>", "the data dir of a server on this machine, whose local admin key to use (env ITX_DATA_DIR, or dataDir of ITX_CONFIG; default ./var)")
    .option("--json", "print the response as protobuf JSON on stdout, and nothing else (same as --output json)");
  // `download` keeps -o/--output for its file, as cp-like tools do; it has --json.
  if (options.outputFormat !== false) {
    command.addOption(new Option("--output <format>", "table (default), json or yaml").choices(["table", "json", "yaml"]));
  }
  return command;
}

/** What a client command adds to the common options. */
interface AuthOptions {
  token?: string;
  dataDir?: string;
}

/**
 * The token: --token, then ITX_TOKEN, then the local admin key that `itx serve` made in
 * the data dir it uses by the same rules (--data-dir, ITX_DATA_DIR, ITX_CONFIG's
 * dataDir, ./var), so a server started on this machine needs no set-up.
 */
export async function resolveToken(options: AuthOptions, env: NodeJS.ProcessEnv = process.env): Promise<string | undefined> {
  const given = (options.token ?? env.ITX_TOKEN ?? "").trim();
  if (given !== "") return given;
  let dataDir = options.dataDir ?? env.ITX_DATA_DIR;
  if (dataDir === undefined) {
    // A config the CLI cannot read just means no local key: the call then says what is missing.
    dataDir = await loadConfig({ file: env.ITX_CONFIG, env }).then((c) => c.dataDir, () => "./var");
  }
  return readLocalAdminKey(dataDir).catch(() => undefined);
}

/** Builds the clients for a command's options. */
export async function clientsFor(options: ClientOptions & AuthOptions): Promise<Clients> {
  return createClients(resolveServer(options.server), await resolveToken(options));
}

/**
 * Runs a client command: builds the clients, runs `body`, reports any error as one line
 * on stderr, and sets the exit code (body's result, 0 by default).
 */
export async function runClient(options: ClientOptions, body: (clients: Clients) => Promise<number | void>): Promise<void> {
  let server: string | undefined;
  let code: number;
  // --output json|yaml is the machine-readable mode that --json names for JSON.
  if (options.output === "json" || options.output === "yaml") {
    options.json = true;
    setDocumentFormat(options.output);
  }
  try {
    const clients = await clientsFor(options);
    server = clients.server;
    code = (await body(clients)) ?? ExitCode.ok;
  } catch (err) {
    code = reportError(withCredentialHint(err), server);
  }
  process.exitCode = code;
}

/** A refused credential gets a hint on how to give one. */
function withCredentialHint(err: unknown): unknown {
  if (!(err instanceof ConnectError) || err.code !== Code.Unauthenticated) return err;
  return new ConnectError(`${err.rawMessage} (pass --token or set ITX_TOKEN)`, err.code, err.metadata, undefined, err);
}

/** One page of a List call, in a shape common to every list. */
export interface Page<T> {
  items: T[];
  nextPageToken: string;
}

/**
 * Runs a List call from `pageToken`: one page, or with `all` every page after it, so
 * `--all` works the same for every list command.
 */
export async function fetchPages<T>(
  options: { all?: boolean; pageToken?: string },
  fetchPage: (pageToken: string) => Promise<Page<T>>,
): Promise<Page<T>> {
  let page = await fetchPage(options.pageToken ?? "");
  const items = [...page.items];
  while (options.all && page.nextPageToken !== "") {
    page = await fetchPage(page.nextPageToken);
    items.push(...page.items);
  }
  return { items, nextPageToken: options.all ? "" : page.nextPageToken };
}
