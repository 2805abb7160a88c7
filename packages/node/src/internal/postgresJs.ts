/**
 * Everything the adapter reads of postgres.js's private state, for its two supported majors, in one place, with a
 * drift check: a driver whose shape is not the one read here fails at once with a typed error naming its version,
 * never with a hang.
 *
 * - postgres.js 3.4 (`src/connection.js`, `src/query.js`): a query's `state` (`{ pid, secret }`) is set when it is
 *   written (3.4.10: once its bytes are built), `active` when it is the connection's current one. A query that is
 *   not written yet is emptied in place to withdraw it (3.4's own `cancel()` on such a query can leave a connection
 *   stuck). The socket factory is called as `socket(options)`.
 * - postgres.js 4.1 / 4.2 (`src/pool.js`, `src/connection.js`, `src/query.js`): a query's `connection` is set when
 *   the pool hands it to a connection, `active` when it is written at the head or becomes the head; 4.2 also keeps
 *   the connection's `pending` (not written) and `sent` (written) exchanges on the connection object (4.1 does not:
 *   a query on a connection is then taken as written). The connection's `backend` is `{ pid, secret }`. A query not
 *   written yet is withdrawn with postgres.js's own `cancel` (it removes it from the pool's or the connection's
 *   queue and rejects it locally); a written one is never left to postgres.js. The socket factory is called as
 *   `socket(options, host, port)`.
 *
 * @internal
 */
import * as Fs from "node:fs"
import { createRequire } from "node:module"
import * as Path from "node:path"

/** A query's place as the driver sees it */
export type Place = "unwritten" | "written" | "head"

/** The postgres.js options the adapter reads (its `parseOptions` result) */
export interface ParsedOptions {
  readonly host: ReadonlyArray<string>
  readonly port: ReadonlyArray<number>
  readonly path: string | false | undefined | null
  readonly ssl: unknown
  readonly sslnegotiation: unknown
  readonly connect_timeout: number | null | undefined
  readonly query_timeout?: unknown
}

/** What the adapter needs of one postgres.js major */
export interface Reader {
  readonly major: 3 | 4
  /** the driver's version, for messages */
  readonly version: string
  /** the options that make postgres.js use the adapter's sockets (it speaks plaintext over them) */
  readonly socketOptions: (open: () => Promise<unknown>) => Record<string, unknown>
  /** where the query is; `undefined` when the driver's state does not have the shape read here (drift) */
  readonly place: (query: object) => Place | undefined
  /** the `pid:secret` of the session running (or holding) a written query */
  readonly session: (query: object) => { readonly pid: number; readonly secret: number } | undefined
  /** takes back a query that is not written yet: it will never run */
  readonly withdraw: (query: object) => void
  /** a drift check of a query that went through a connection: what is missing, if anything */
  readonly drift: (query: object) => string | undefined
}

type Loose = Record<string, unknown>

const isRecord = (value: unknown): value is Loose => typeof value === "object" && value !== null

// -----------------------------------------------------------------------------
// postgres.js 3.4
// -----------------------------------------------------------------------------

/**
 * Empties a query that postgres.js 3 has not written yet: it runs as an empty statement (an EmptyQueryResponse), so
 * nothing of it executes, and the driver's queues and connection states stay as they are.
 */
const empty3 = (query: object): void => {
  const q = query as Loose
  q.strings = Object.assign([""], { raw: [""] })
  q.args = []
  q.options = { ...(q.options as Loose), simple: true, prepare: false }
}

const reader3 = (version: string): Reader => ({
  major: 3,
  version,
  socketOptions: (open) => ({ socket: () => open() }),
  place: (query) => {
    const q = query as Loose
    if (q.state === null) return "unwritten"
    if (!isRecord(q.state)) return undefined
    return q.active === true ? "head" : "written"
  },
  session: (query) => {
    const state = (query as Loose).state
    return isRecord(state) && typeof state.pid === "number" && typeof state.secret === "number"
      ? { pid: state.pid, secret: state.secret }
      : undefined
  },
  withdraw: empty3,
  drift: (query) => {
    const q = query as Loose
    if (!("state" in q) || !("active" in q)) return "a query has no state or active field"
    if (q.state !== null && (!isRecord(q.state) || typeof q.state.pid !== "number")) {
      return "a written query's state has no pid"
    }
    return undefined
  }
})

// -----------------------------------------------------------------------------
// postgres.js 4.1 / 4.2
// -----------------------------------------------------------------------------

const holds = (list: unknown, query: object): boolean | undefined => {
  if (!Array.isArray(list)) return undefined
  for (const x of list) if (isRecord(x) && (x.query === query || x.for === query)) return true
  return false
}

const reader4 = (version: string): Reader => ({
  major: 4,
  version,
  socketOptions: (open) => ({ socket: () => open() }),
  place: (query) => {
    const q = query as Loose
    const c = q.connection
    if (c === undefined || c === null) return "unwritten"
    if (!isRecord(c)) return undefined
    // 4.2 keeps the connection's queues on it; 4.1 does not (a query on a connection is then taken as written)
    if (holds(c.pending, q) === true) return "unwritten"
    const sent = c.sent
    if (Array.isArray(sent)) {
      if (!holds(sent, q)) return "unwritten"
      return isRecord(sent[0]) && (sent[0].query === q || sent[0].for === q) ? "head" : "written"
    }
    return q.active === true ? "head" : "written"
  },
  session: (query) => {
    const c = (query as Loose).connection
    const backend = isRecord(c) ? c.backend : undefined
    return isRecord(backend) && typeof backend.pid === "number" && typeof backend.secret === "number"
      ? { pid: backend.pid, secret: backend.secret }
      : undefined
  },
  withdraw: (query) => {
    // postgres.js 4's own cancel of a query that is not written: removed from the pool's or the connection's
    // queue, rejected locally with 57014 (nothing reaches the server)
    const q = query as { readonly handler?: { readonly cancel?: (q: object) => Promise<unknown> } }
    q.handler?.cancel?.(query).catch(() => undefined)
  },
  drift: (query) => {
    const q = query as Loose
    if (!("connection" in q) || !("active" in q)) return "a query has no connection or active field"
    const c = q.connection
    if (c === undefined || c === null) return undefined
    if (!isRecord(c)) return "a query's connection is not an object"
    if (!isRecord(c.backend) || typeof c.backend.pid !== "number") return "a connection has no backend pid"
    if (c.sent !== undefined && !Array.isArray(c.sent)) return "a connection's sent queue is not an array"
    if (c.pending !== undefined && !Array.isArray(c.pending)) return "a connection's pending queue is not an array"
    return undefined
  }
})

// -----------------------------------------------------------------------------
// which major
// -----------------------------------------------------------------------------

/**
 * The version of an installed postgres.js (the package.json beside the module `specifier` resolves to), or
 * `undefined` when it cannot be read.
 */
export const installedVersion = (specifier: string, from: string): string | undefined => {
  try {
    let dir = Path.dirname(createRequire(from).resolve(specifier))
    for (let i = 0; i < 5; i++) {
      const file = Path.join(dir, "package.json")
      if (Fs.existsSync(file)) {
        const pkg = JSON.parse(Fs.readFileSync(file, "utf8")) as { readonly name?: unknown; readonly version?: unknown }
        if (pkg.name === "postgres" && typeof pkg.version === "string") return pkg.version
      }
      dir = Path.dirname(dir)
    }
  } catch {
    // not resolvable from here: the version is named by the caller, or unknown
  }
  return undefined
}

/**
 * The reader for a postgres.js instance (the throwaway `probe` the adapter parses the options with), or the reason
 * it is not supported. `version` is what the caller knows of the driver's version (else the probe's shape decides).
 */
export const readerFor = (probe: unknown, version: string | undefined): Reader | string => {
  const options = typeof probe === "function" || isRecord(probe) ? (probe as Loose).options : undefined
  if (!isRecord(options) || !Array.isArray(options.host) || !Array.isArray(options.port)) {
    return `postgres.js ${version ?? "(unknown version)"} is not supported: its instance has no parsed options`
  }
  const major = version !== undefined ? Number(version.split(".")[0]) : isRecord(options.timers) ? 4 : 3
  const minor = version !== undefined ? Number(version.split(".")[1]) : undefined
  const named = version ?? `${major}.x`
  if (major === 3 && (minor === undefined || minor >= 4) && !isRecord(options.timers)) return reader3(named)
  if (major === 4 && (minor === undefined || minor >= 1) && isRecord(options.timers)) return reader4(named)
  return `postgres.js ${named} is not supported (supported: ^3.4.0 || ^4.1.0)`
}
