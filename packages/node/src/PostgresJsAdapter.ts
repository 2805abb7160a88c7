/**
 * postgres.js (`postgres` 3.4 and 4.1+) adapter: queries that are cancelled on the server when the fiber is
 * interrupted — the exact session, over its encryption, never another statement — with postgres.js's pipelining
 * kept.
 *
 * {@link make} creates the `postgres()` instance (same arguments: a URL and/or options) with a `socket` factory that
 * opens every connection with `NodeTransport`'s code ({@link NodeTransport.connectStream}): the one address, then
 * the session's encryption the way libpq negotiates it (SSLRequest or `sslnegotiation: "direct"`), verified per the
 * sslmode its `ssl` option maps to (the table of {@link cancelTlsOptions}). It records, per connection, the address
 * it actually reached, whether the session is encrypted, and the BackendKeyData — so a cancel goes to that very
 * address (not to the host name resolved again) with the session's key, over the session's encryption. postgres.js
 * then speaks plaintext protocol over the stream it is given.
 *
 * {@link query} runs one query; when the fiber is interrupted:
 * - the query is not written yet (queued in postgres.js): it is withdrawn — it never runs, no cancel is sent;
 * - it is written: what postgres.js writes to that connection from now on is held back, and the query is waited
 *   for until it is the one the server runs. If nothing else is on the wire behind it, a CancelRequest with the
 *   connection's key goes to the connection's address; the held statements go out once the query ended and the
 *   cancel was delivered (PostgreSQL drops a cancel that reaches an idle backend), so the signal can only reach the
 *   interrupted query. If other statements were already written behind it, a cancel could reach one of them should
 *   the query end first: it is not sent, and the query is waited for. Both waits are bounded by `drainTimeout`;
 * - when a cancel cannot be confirmed or the query does not end within `drainTimeout`, the connection is retired:
 *   its socket is destroyed (postgres.js fails what that connection still had, and reconnects on demand).
 * A query given an `AbortSignal` (postgres.js 4's `.signal()`) is cancelled the same way when the signal aborts,
 * and fails with SQLSTATE 57014; with both a signal and an interrupt it is cancelled once.
 *
 * Reserved connections ({@link reserve}) work the same; a retired reserved connection is never released back to the
 * pool (postgres.js already took it back when its socket closed), and further queries on it fail.
 *
 * What the adapter reads of postgres.js's private state is checked on drift: an unsupported or changed driver
 * fails at once with a {@link PostgresJsAdapterError} naming its version. `query_timeout` (postgres.js 4) is
 * refused: it would leave the cancel of a written statement to postgres.js — use `Effect.timeout`.
 *
 * @example
 * ```ts
 * import * as Effect from "effect/Effect"
 * import { NodeTransport } from "@pqcancel/node"
 * import * as PostgresJsAdapter from "@pqcancel/node/PostgresJsAdapter"
 *
 * const program = Effect.gen(function*() {
 *   const sql = yield* PostgresJsAdapter.make("postgres://app@db.internal:5432/app", { ssl: "verify-full", max: 10 })
 *   const rows = yield* PostgresJsAdapter.query(sql, (sql) => sql`SELECT pg_sleep(60)`).pipe(
 *     Effect.timeout("1 second") // interrupts ⇒ CancelRequest ⇒ the backend stops
 *   )
 *   return rows
 * }).pipe(Effect.scoped, Effect.provide(NodeTransport.layer))
 * ```
 *
 * @module
 * @since 0.1.0
 */
import { AdapterKit, ConnectionOptions } from "@pqcancel/core"
import type { CancelConnection, CancelError, CancelMachine } from "@pqcancel/core"
import type * as CancelOnInterrupt from "@pqcancel/core/CancelOnInterrupt"
import type { Transport } from "@pqcancel/core/Transport"
import * as Cause from "effect/Cause"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Result from "effect/Result"
import * as Schema from "effect/Schema"
import type * as Scope from "effect/Scope"
import * as Dns from "node:dns"
import * as Net from "node:net"
import * as Path from "node:path"
import type * as Tls from "node:tls"
import postgres from "postgres"
import { fromPostgresJsSsl } from "./internal/driverTls.ts"
import * as PostgresJs from "./internal/postgresJs.ts"
import { sessionId, Wire } from "./internal/postgresJsWire.ts"
import * as NodeTransport from "./NodeTransport.ts"

// -----------------------------------------------------------------------------
// errors
// -----------------------------------------------------------------------------

/**
 * A query failed on the server (or the connection broke). `code` is the SQLSTATE when the server sent one, else
 * postgres.js's error code (e.g. `CONNECTION_CLOSED`).
 *
 * @category errors
 * @since 0.1.0
 */
export class PostgresJsQueryError
  extends Schema.TaggedError<PostgresJsQueryError>("@pqcancel/node/PostgresJsAdapter/PostgresJsQueryError")(
    "PostgresJsQueryError",
    {
      message: Schema.String,
      code: Schema.UndefinedOr(Schema.String)
    }
  )
{}

/**
 * The `sql` was not created by {@link make} (or {@link reserve}), its options cannot be honoured, or its reserved
 * connection was retired.
 *
 * @category errors
 * @since 0.1.0
 */
export class PostgresJsAdapterError
  extends Schema.TaggedError<PostgresJsAdapterError>("@pqcancel/node/PostgresJsAdapter/PostgresJsAdapterError")(
    "PostgresJsAdapterError",
    { message: Schema.String }
  )
{}

// -----------------------------------------------------------------------------
// models
// -----------------------------------------------------------------------------

/**
 * How the adapter cancels: the policy every adapter shares ({@link CancelOnInterrupt.Policy}: `cancelTimeout`,
 * `drainTimeout`, `retry`, `recancelInterval`, `retireUnlessCanceled`, `onNotCanceled`).
 *
 * @category models
 * @since 0.1.0
 */
export type AdapterOptions = CancelOnInterrupt.Policy

// -----------------------------------------------------------------------------
// the cancel's options, from what the user gave postgres.js
// -----------------------------------------------------------------------------

/**
 * The cancel's options for an encrypted postgres.js session, from its `ssl` and `sslnegotiation` option values (the
 * table in docs/adapters/postgres-js.md): never weaker than the session. `require` / `allow` / `prefer`
 * ⇒ `require`; `true` / `"verify-full"` ⇒ `verify-full` against Node's roots (`sslrootcert=system`); a `tls` options
 * object ⇒ `verify-full` with its `ca`, `cert`, `key`, `passphrase`, `crl` as in-memory material (`require` with
 * `rejectUnauthorized: false`, `verify-ca` with a custom `checkServerIdentity`); `sslnegotiation: "direct"` ⇒ direct.
 *
 * @example
 * ```ts
 * import * as PostgresJsAdapter from "@pqcancel/node/PostgresJsAdapter"
 *
 * const options = PostgresJsAdapter.cancelTlsOptions({ ca: "-----BEGIN CERTIFICATE-----…" })
 * // Result.succeed(options) with options.sslmode === "verify-full" and options.sslMaterial.ca set
 * ```
 *
 * @category mapping
 * @since 0.1.0
 */
export const cancelTlsOptions = (
  ssl: unknown,
  sslnegotiation?: unknown,
  connectTimeoutSeconds: number = 10
): Result.Result<ConnectionOptions.ConnectionOptions, CancelError.InvalidOption> => {
  const result = fromPostgresJsSsl(ssl, sslnegotiation)
  if (Result.isFailure(result)) return Result.fail(result.failure)
  const mapped = result.success
  return Result.map(
    // a postgres.js session is never GSS-encrypted: neither is its cancel
    ConnectionOptions.fromParams({
      ...mapped.params,
      gssencmode: "disable",
      connect_timeout: String(connectTimeoutSeconds)
    }),
    (options) => mapped.sslMaterial === undefined ? options : { ...options, sslMaterial: mapped.sslMaterial }
  )
}

/** A postgres.js `postgres` function (the default export of `postgres` 3.4 or 4.1+) */
type PostgresFn = (...args: ReadonlyArray<unknown>) => unknown

/**
 * Which postgres.js the adapter drives: the `postgres` function and its version (for the drift check's messages).
 * The default is the `postgres` package the adapter resolves; give another one (e.g. a second major installed
 * under an alias) with {@link driver}.
 *
 * @category models
 * @since 0.1.0
 */
export interface Driver {
  readonly postgres: unknown
  readonly version: string | undefined
}

/**
 * A {@link Driver} from a `postgres` function and its version, e.g. `driver(postgres4, "4.2.0")` for a postgres.js 4
 * installed as `"postgres4": "npm:postgres@4.2.0"`.
 *
 * @example
 * ```ts
 * import * as PostgresJsAdapter from "@pqcancel/node/PostgresJsAdapter"
 * import postgres from "postgres"
 *
 * const options: PostgresJsAdapter.Options = { max: 4, driver: PostgresJsAdapter.driver(postgres, "3.4.10") }
 * ```
 *
 * @category constructors
 * @since 0.1.0
 */
export const driver = (postgresFunction: unknown, version?: string): Driver => ({
  postgres: postgresFunction,
  version
})

let defaultDriver: Driver | undefined
const installedDriver = (): Driver =>
  defaultDriver ??= driver(postgres, PostgresJs.installedVersion("postgres", import.meta.url))

/** One `sql` (or reserved `sql`) the adapter made */
interface Managed {
  readonly reader: PostgresJs.Reader
  /** sessions by `pid:secret` (once their BackendKeyData was read) */
  readonly sessions: Map<string, Wire>
  /** every session the factory opened and that is not closed yet */
  readonly wires: Set<Wire>
  /** the cancel's options for encrypted sessions */
  readonly encryptedOptions: ConnectionOptions.ConnectionOptions | undefined
  readonly plainOptions: ConnectionOptions.ConnectionOptions
  /** the name an encrypted session verifies when the ssl object sets `servername` (else the host name) */
  readonly servername: string | undefined
  readonly adapter: AdapterOptions
  /** set for a reserved connection */
  readonly reserved: { retired: boolean } | undefined
  /** the drift check of the driver's per-query state: undefined until a query went through a connection */
  readonly checked: { done: boolean; error: PostgresJsAdapterError | undefined }
  /** the first host and an address of it: what a statement on no session is counted under when it is retired */
  readonly firstHost: ConnectionOptions.HostEntry
  readonly firstAddress: CancelMachine.RemoteAddress
}

const managed = new WeakMap<object, Managed>()
/** the `sql` whose socket factory opened a session */
const managedOfWire = new WeakMap<Wire, Managed>()

// -----------------------------------------------------------------------------
// the socket factory
// -----------------------------------------------------------------------------

interface Target {
  readonly host: ConnectionOptions.HostEntry
  /** the name the session verifies and sends as SNI (a TCP host name; the ssl object's servername wins) */
  readonly hostname: string | undefined
}

const targets = (parsed: PostgresJs.ParsedOptions): ReadonlyArray<Target> => {
  if (typeof parsed.path === "string" && parsed.path !== "") {
    const match = /\.s\.PGSQL\.(\d+)$/.exec(parsed.path)
    return [{
      host: {
        _tag: "Unix",
        directory: Path.dirname(parsed.path),
        port: match !== null ? Number(match[1]) : ConnectionOptions.DEFAULT_PORT
      },
      hostname: undefined
    }]
  }
  return parsed.host.map((host, i) => ({
    host: { _tag: "Tcp", host, hostaddr: undefined, port: parsed.port[i] ?? parsed.port[0] ?? 5432 },
    hostname: host
  }))
}

/** the addresses of a target, in the resolver's order (libpq tries each) */
const addressesOf = async (target: Target, path: string | undefined): Promise<Array<CancelMachine.RemoteAddress>> => {
  if (target.host._tag === "Unix") return [{ _tag: "Unix", path: path! }]
  const { host, port } = target.host
  const family = Net.isIP(host!)
  if (family !== 0) return [{ _tag: "Tcp", address: host!, port, family: family === 6 ? 6 : 4 }]
  const found = await Dns.promises.lookup(host!, { all: true })
  return found.map((a) => ({ _tag: "Tcp", address: a.address, port, family: a.family === 6 ? 6 : 4 }))
}

const socketFactory = (
  parsed: PostgresJs.ParsedOptions,
  session: {
    readonly options: ConnectionOptions.ConnectionOptions
    readonly servername: string | undefined
    readonly identityCheck: ((host: string, cert: Tls.PeerCertificate) => Error | undefined) | undefined
    /** the driver takes a shared buffer's bytes from `socket.ondata` (postgres.js 4) */
    readonly sharedReads: boolean
  },
  sessions: Map<string, Wire>,
  wires: Set<Wire>,
  connectTimeoutSeconds: number,
  onWire: (wire: Wire) => void
) => {
  const all = targets(parsed)
  const path = typeof parsed.path === "string" ? parsed.path : undefined
  let next = 0
  const open = async (target: Target, deadline: number): Promise<Net.Socket> => {
    let last: unknown = undefined
    for (const address of await addressesOf(target, path)) {
      try {
        // a session that stays plaintext reads into one buffer, as postgres.js 4's own sockets do (no allocation
        // per read); the driver copies what it keeps (`shared`)
        const shared = session.sharedReads && (address._tag === "Unix" || session.options.sslmode === "disable")
        let receive: ((chunk: Buffer) => void) | undefined
        const buffer = shared ? Buffer.allocUnsafe(65536) : undefined
        const onread: Net.OnReadOpts | undefined = buffer === undefined ? undefined : {
          buffer,
          callback: (n) => {
            receive?.(buffer.subarray(0, n))
            return true
          }
        }
        const stream = await NodeTransport.connectStream({
          host: target.host,
          address,
          options: session.options,
          verifyHost: session.servername ?? target.hostname,
          timeoutMs: deadline - Date.now(),
          identityCheck: session.identityCheck,
          onread
        })
        const recorded: CancelMachine.RemoteAddress = address._tag === "Unix" ? address : {
          _tag: "Tcp",
          address: stream.raw.remoteAddress ?? address.address,
          port: stream.raw.remotePort ?? address.port,
          family: stream.raw.remoteFamily === "IPv6" ? 6 : 4
        }
        const wire = new Wire(stream, target.host, recorded, (w) => sessions.set(w.id!, w), shared)
        wires.add(wire)
        onWire(wire)
        if (shared) {
          // postgres.js 4 takes a shared socket's bytes from `ondata`
          const socket = stream.socket as Net.Socket & { shared?: boolean; ondata?: (chunk: Buffer) => void }
          socket.shared = true
          socket.ondata = () => {}
          receive = (chunk) => {
            wire.receive(chunk)
            socket.ondata!(chunk)
          }
        }
        stream.raw.once("close", () => {
          wires.delete(wire)
          if (wire.id !== undefined && sessions.get(wire.id) === wire) sessions.delete(wire.id)
        })
        return stream.socket
      } catch (error) {
        last = error
      }
    }
    throw last ?? new Error(`could not translate host name "${target.hostname}" to address`)
  }
  return async (): Promise<Net.Socket> => {
    // like postgres.js, each new connection starts at the next host; on failure the others are tried in order
    const start = next
    next = (next + 1) % all.length
    const deadline = Date.now() + connectTimeoutSeconds * 1000
    let last: unknown = undefined
    for (let i = 0; i < all.length; i++) {
      try {
        return await open(all[(start + i) % all.length]!, deadline)
      } catch (error) {
        last = error
      }
    }
    throw last ?? new Error("no host to connect to")
  }
}

// -----------------------------------------------------------------------------
// constructors
// -----------------------------------------------------------------------------

/**
 * postgres.js's options plus the adapter's (`cancel`, `driver`). `socket` is the adapter's own (it opens the
 * connections) and cannot be given; nor can postgres.js 4's `query_timeout` (use `Effect.timeout`).
 *
 * @category models
 * @since 0.1.0
 */
export interface Options extends postgres.Options<{}> {
  readonly cancel?: AdapterOptions | undefined
  /** the postgres.js to drive (default: the installed `postgres`), see {@link driver} */
  readonly driver?: Driver | undefined
}

const errorMessage = (error: unknown): string => error instanceof Error ? error.message : String(error)

const fail = (message: string): never => {
  throw new PostgresJsAdapterError({ message })
}

/**
 * A TLS session's own settings (postgres.js's `allow` and `prefer` try TLS first and fall back to plaintext) and its
 * TLS material; undefined for a plaintext session
 */
const sessionTls = (parsed: PostgresJs.ParsedOptions): {
  readonly params: Readonly<Record<string, string>>
  readonly material: ConnectionOptions.SslMaterial | undefined
} | undefined => {
  const ssl = parsed.ssl
  if (ssl === false || ssl === undefined || ssl === null || ssl === "disable") return undefined
  const mapped = fromPostgresJsSsl(ssl, parsed.sslnegotiation)
  if (Result.isFailure(mapped)) {
    return fail(`the ssl option cannot be carried over to the cancel: ${mapped.failure.message}`)
  }
  const { params, sslMaterial } = mapped.success
  return {
    params: ssl === "allow" || ssl === "prefer" ? { ...params, sslmode: "prefer" } : params,
    material: sslMaterial
  }
}

const optionsOf = (
  params: Readonly<Record<string, string>>,
  material: ConnectionOptions.SslMaterial | undefined
): ConnectionOptions.ConnectionOptions => {
  const options = ConnectionOptions.fromParams(params)
  if (Result.isFailure(options)) return fail(options.failure.message)
  return material === undefined ? options.success : { ...options.success, sslMaterial: material }
}

const create = (urlOrOptions: string | Options, maybeOptions: Options | undefined): postgres.Sql<{}> => {
  const url = typeof urlOrOptions === "string" ? urlOrOptions : undefined
  const given = (typeof urlOrOptions === "string" ? maybeOptions : urlOrOptions) ?? {}
  const { cancel: adapter = {}, driver: chosen = installedDriver(), ...driverOptions } = given
  if ((driverOptions as { readonly socket?: unknown }).socket !== undefined) {
    fail("the socket option is the adapter's own: PostgresJsAdapter opens the connections")
  }
  const make = chosen.postgres as PostgresFn
  if (typeof make !== "function") fail("the driver is not a postgres.js `postgres` function")
  // postgres.js's own parsing of the URL, options and environment, read back from a throwaway instance (it opens
  // nothing until a query runs)
  const probeOptions = { ...driverOptions, no_subscribe: true }
  const probe = url === undefined ? make(probeOptions) : make(url, probeOptions)
  const reader = PostgresJs.readerFor(probe, chosen.version)
  if (typeof reader === "string") return fail(reader)
  const parsed = (probe as { readonly options: PostgresJs.ParsedOptions }).options
  if (typeof parsed.query_timeout === "number" && parsed.query_timeout > 0) {
    fail(
      "query_timeout is not supported through the adapter (postgres.js would cancel a written statement): " +
        "use Effect.timeout, which cancels through the adapter"
    )
  }
  const connectTimeout = typeof parsed.connect_timeout === "number" && parsed.connect_timeout > 0
    ? parsed.connect_timeout
    : 30
  const cancelConnectTimeout = Math.min(connectTimeout, 10)
  const tls = sessionTls(parsed)
  const ssl = parsed.ssl
  const tlsObject = typeof ssl === "object" && ssl !== null ? ssl as Readonly<Record<string, unknown>> : undefined
  const encrypted = tls === undefined ? undefined : cancelTlsOptions(ssl, parsed.sslnegotiation, cancelConnectTimeout)
  if (encrypted !== undefined && Result.isFailure(encrypted)) return fail(encrypted.failure.message)
  const encryptedOptions = encrypted?.success
  // a postgres.js session is never GSS-encrypted: neither is its cancel
  const plainOptions = optionsOf(
    { sslmode: "disable", gssencmode: "disable", connect_timeout: String(cancelConnectTimeout) },
    undefined
  )
  const servername = typeof tlsObject?.servername === "string" && tlsObject.servername !== ""
    ? tlsObject.servername
    : undefined
  const sessionOptions = tls === undefined
    ? optionsOf({ sslmode: "disable", gssencmode: "disable" }, undefined)
    : optionsOf({ ...tls.params, gssencmode: "disable" }, tls.material)
  const identityCheck = typeof tlsObject?.checkServerIdentity === "function"
    ? tlsObject.checkServerIdentity as (host: string, cert: Tls.PeerCertificate) => Error | undefined
    : undefined
  const sessions = new Map<string, Wire>()
  const wires = new Set<Wire>()
  const owner: { managed: Managed | undefined } = { managed: undefined }
  const factory = socketFactory(
    parsed,
    { options: sessionOptions, servername, identityCheck, sharedReads: reader.major === 4 },
    sessions,
    wires,
    connectTimeout,
    (wire) => managedOfWire.set(wire, owner.managed!)
  )
  const driverConfig = {
    ...driverOptions,
    // TLS is negotiated by the socket factory, so postgres.js speaks plaintext over it
    ssl: false,
    ...reader.socketOptions(factory),
    // the factory tries every host; postgres.js sees one (with several and a socket factory, postgres.js 3 swallows
    // a failed connection attempt and leaves the query waiting forever)
    host: parsed.host[0],
    port: parsed.port[0]
  }
  const sql = (url === undefined ? make(driverConfig) : make(url, driverConfig)) as postgres.Sql<{}>
  const first = targets(parsed)[0]!
  const m: Managed = {
    reader,
    sessions,
    wires,
    encryptedOptions,
    plainOptions,
    servername,
    adapter,
    reserved: undefined,
    checked: { done: false, error: undefined },
    firstHost: first.host,
    firstAddress: first.host._tag === "Unix"
      ? { _tag: "Unix", path: typeof parsed.path === "string" ? parsed.path : "" }
      : { _tag: "Tcp", address: first.hostname ?? "", port: first.host.port, family: 4 }
  }
  managed.set(sql, m)
  owner.managed = m
  return sql
}

/**
 * Creates a postgres.js instance (`postgres(url, options)` or `postgres(options)`) whose queries {@link query} can
 * cancel, owned by the Scope (`sql.end()` when it closes). The same instance is a normal `Sql` for everything else.
 *
 * @example
 * ```ts
 * import * as PostgresJsAdapter from "@pqcancel/node/PostgresJsAdapter"
 * import * as Effect from "effect/Effect"
 *
 * const program = Effect.scoped(Effect.gen(function*() {
 *   const sql = yield* PostgresJsAdapter.make("postgres://app@db.internal/app", {
 *     ssl: "verify-full",
 *     max: 10,
 *     cancel: { drainTimeout: "5 seconds" } // the adapter's options
 *   })
 *   return sql // an ordinary postgres.js Sql; run queries through PostgresJsAdapter.query
 * }))
 * ```
 *
 * @category constructors
 * @since 0.1.0
 */
export const make: {
  (url: string, options?: Options): Effect.Effect<postgres.Sql<{}>, PostgresJsAdapterError, Scope.Scope>
  (options: Options): Effect.Effect<postgres.Sql<{}>, PostgresJsAdapterError, Scope.Scope>
} = (urlOrOptions: string | Options, maybeOptions?: Options) =>
  Effect.acquireRelease(
    Effect.try({
      try: () => create(urlOrOptions, maybeOptions),
      catch: (error) =>
        error instanceof PostgresJsAdapterError ? error : new PostgresJsAdapterError({ message: errorMessage(error) })
    }),
    (sql) => Effect.promise(() => close(sql))
  )

/**
 * Ends the instance (`sql.end({ timeout: 1 })`: each connection terminates once idle; after a second postgres.js
 * destroys what is left, and a query still running outside the adapter fails with `CONNECTION_DESTROYED`) and waits,
 * bounded, until every socket is closed. Not at once: postgres.js 3 rejects a connection's own type lookup, which
 * nobody awaits (an unhandled rejection), when it destroys a connection that is still starting.
 */
const close = async (sql: postgres.Sql<{}>): Promise<void> => {
  await sql.end({ timeout: 1 }).catch(() => undefined)
  const sockets = [...(managed.get(sql)?.wires ?? [])].map((wire) => wire.raw)
  await Promise.all(sockets.map((socket) =>
    new Promise<void>((resolve) => {
      if (socket.destroyed) return resolve()
      const timer = setTimeout(() => {
        socket.destroy()
        resolve()
      }, 2000)
      socket.once("close", () => {
        clearTimeout(timer)
        resolve()
      })
    })
  ))
}

/**
 * Reserves one connection of the pool (`sql.reserve()`) for the Scope, for statements that must run on the same
 * session (transactions with `BEGIN`/`COMMIT`, session settings). Released when the Scope closes — unless a cancel
 * made it unsafe: it is then retired (its socket closed, postgres.js reconnects that slot on demand) and never
 * released; later {@link query} calls on it fail with a `PostgresJsAdapterError`.
 *
 * @example
 * ```ts
 * import * as PostgresJsAdapter from "@pqcancel/node/PostgresJsAdapter"
 * import * as Effect from "effect/Effect"
 * import type postgres from "postgres"
 *
 * declare const sql: postgres.Sql<{}>
 *
 * // statements that must share one session: a session-level advisory lock around the work
 * const program = Effect.scoped(Effect.gen(function*() {
 *   const session = yield* PostgresJsAdapter.reserve(sql)
 *   yield* PostgresJsAdapter.query(session, (s) => s`SELECT pg_advisory_lock(42)`)
 *   const jobs = yield* PostgresJsAdapter.query(session, (s) => s`SELECT count(*) FROM jobs`)
 *   yield* PostgresJsAdapter.query(session, (s) => s`SELECT pg_advisory_unlock(42)`)
 *   return jobs
 * }))
 * ```
 *
 * @category constructors
 * @since 0.1.0
 */
export const reserve = (
  sql: postgres.Sql<{}>
): Effect.Effect<postgres.ReservedSql<{}>, PostgresJsAdapterError | PostgresJsQueryError, Scope.Scope> =>
  Effect.suspend((): Effect.Effect<
    postgres.ReservedSql<{}>,
    PostgresJsAdapterError | PostgresJsQueryError,
    Scope.Scope
  > => {
    const parent = managed.get(sql)
    if (parent === undefined) return Effect.fail(notManaged)
    const state = { retired: false }
    return Effect.acquireRelease(
      Effect.tryPromise({
        try: () => sql.reserve(),
        catch: toQueryError
      }).pipe(Effect.tap((reserved) => Effect.sync(() => managed.set(reserved, { ...parent, reserved: state })))),
      (reserved) =>
        Effect.sync(() => {
          if (!state.retired) reserved.release()
        })
    )
  })

/**
 * Whether the adapter retired this reserved connection (a cancel could not be confirmed or the query did not end in
 * time, or — with `retireUnlessCanceled` — it did not end cancelled): its socket was closed and it is not released.
 *
 * @category guards
 * @since 0.1.0
 */
export const isRetired = (sql: postgres.Sql<{}>): boolean => managed.get(sql)?.reserved?.retired === true

const notManaged = new PostgresJsAdapterError({
  message: "this sql was not created by PostgresJsAdapter.make or PostgresJsAdapter.reserve"
})

// -----------------------------------------------------------------------------
// queries
// -----------------------------------------------------------------------------

const toQueryError = (error: unknown): PostgresJsQueryError => {
  const code = (error as { readonly code?: unknown } | null)?.code
  return new PostgresJsQueryError({
    message: errorMessage(error),
    code: typeof code === "string" ? code : undefined
  })
}

const isCanceled = (exit: Exit.Exit<unknown, unknown>): boolean =>
  Exit.isFailure(exit) &&
  Exit.findErrorOption(exit).pipe((error) =>
    error._tag === "Some" && error.value instanceof PostgresJsQueryError && error.value.code === "57014"
  )

const aborted = () => new PostgresJsQueryError({ message: "canceling statement due to user request", code: "57014" })

// -----------------------------------------------------------------------------
// the driver port
// -----------------------------------------------------------------------------

/** One statement of the adapter: the postgres.js query, and the `sql` it runs on */
interface Statement {
  readonly query: object
  readonly managed: Managed
}

/** the reserved connection a session serves, once one of its statements was located on it */
const reservedOf = new WeakMap<Wire, { retired: boolean }>()

/** how often a statement waiting for its turn is looked at */
const TURN_POLL = Duration.millis(1)

/** the session (`Wire`) holding a statement, or its `sql` when it is on no connection (yet) */
const holderOf = (statement: Statement): Wire | Managed => {
  const key = statement.managed.reader.session(statement.query)
  const wire = key === undefined ? undefined : statement.managed.sessions.get(sessionId(key.pid, key.secret))
  return wire ?? statement.managed
}

const sessionOf = (wire: Wire, m: Managed): CancelConnection.SessionInfo => ({
  options: wire.encrypted && m.encryptedOptions !== undefined ? m.encryptedOptions : m.plainOptions,
  host: wire.encrypted && wire.host._tag === "Tcp" && m.servername !== undefined
    ? { ...wire.host, host: m.servername }
    : wire.host,
  address: wire.address,
  key: wire.key,
  open: !wire.socket.destroyed
})

/**
 * Where an interrupted statement is. From the first look on, what postgres.js writes to the session is held back
 * (until the interruption is over): the statements on the wire are then the only ones the server can run.
 * - not written: withdrawn (postgres.js never writes it);
 * - the one the server runs, with nothing else on the wire behind it: `"running"` (a cancel can reach nothing else);
 * - the one the server runs, with statements already written behind it: `"elsewhere"` (a cancel could reach one of
 *   them should it end first: no cancel);
 * - written behind another one, or next but still held: `"behind"` (its turn is awaited).
 */
const locate = (
  holder: Wire | Managed,
  statement: Statement
): CancelOnInterrupt.Location | Effect.Effect<CancelOnInterrupt.Location, never, Scope.Scope> => {
  const { managed: m, query: q } = statement
  const place = m.reader.place(q)
  if (place === "unwritten") {
    m.reader.withdraw(q)
    return "withdrawn"
  }
  if (!(holder instanceof Wire) || holder.retired || place === undefined || holder.key === undefined) {
    return "elsewhere"
  }
  const wire = holder
  if (m.reserved !== undefined) reservedOf.set(wire, m.reserved)
  return Effect.suspend(() => {
    const hold = Effect.acquireRelease(Effect.sync(() => wire.gate()), () => Effect.sync(() => wire.ungate()))
    return Effect.flatMap(hold, () => {
      const head = m.reader.place(q) === "head"
      const outstanding = wire.outstanding
      if (head && outstanding === 1) {
        // no held statement goes out until this interruption is over
        return Effect.as(
          Effect.acquireRelease(
            Effect.sync(() => wire.cancelling++),
            () => Effect.sync(() => wire.cancelling--)
          ),
          "running" as const
        )
      }
      return Effect.succeed(head && outstanding > 1 ? "elsewhere" as const : "behind" as const)
    })
  })
}

/**
 * Completes when a statement waiting for its turn may be the one the server runs. While the server is idle and
 * the next statement is held back (whosever it is), that one, and only that one, goes — unless a cancel of this
 * session is on its way.
 */
const awaitTurn = (holder: Wire | Managed, statement: Statement): Effect.Effect<void> =>
  Effect.suspend(function loop(): Effect.Effect<void> {
    if (!(holder instanceof Wire)) return Effect.void
    if (statement.managed.reader.place(statement.query) === "head" && holder.outstanding > 0) return Effect.void
    if (holder.outstanding === 0 && holder.holding && holder.cancelling === 0) holder.releaseFirst()
    return Effect.andThen(Effect.sleep(TURN_POLL), Effect.suspend(loop))
  })

// the postgres.js driver port of the adapter kit: a session's cancel target is what its socket factory recorded
// (read once per session), the statement's place only after an interruption
const kit = AdapterKit.make<Wire | Managed, Statement, never>({
  driver: "postgres.js",
  target: (holder) =>
    Result.succeed(
      holder instanceof Wire
        ? sessionOf(holder, managedOfWire.get(holder)!)
        // a statement on no session: what its retirement is counted under (nothing is cancelled)
        : { options: holder.plainOptions, host: holder.firstHost, address: holder.firstAddress, key: undefined }
    ),
  locate,
  awaitTurn,
  retire: (holder) =>
    Effect.suspend(() => {
      if (!(holder instanceof Wire)) return Effect.void
      const reserved = reservedOf.get(holder)
      if (reserved !== undefined) reserved.retired = true
      return Effect.promise(() => holder.retire())
    }),
  isRetired: (holder) => holder instanceof Wire ? holder.retired : holder.reserved?.retired === true,
  isCanceled
})

const driftCheck = (m: Managed, query: object): void => {
  if (m.checked.done) return
  const missing = m.reader.drift(query)
  if (missing === undefined && m.reader.place(query) === undefined) return
  m.checked.done = true
  if (missing !== undefined) {
    m.checked.error = new PostgresJsAdapterError({
      message: `postgres.js ${m.reader.version} is not supported: its internals changed (${missing})`
    })
  }
}

/**
 * Runs one postgres.js query (`f` builds it from `sql`, e.g. ``(sql) => sql`SELECT …` ``); when the fiber is
 * interrupted (or the query's `.signal()` aborts), cancels it on the server — only when that cannot reach another
 * statement — and waits, bounded, for it to end before the interruption completes. A query that postgres.js has
 * not written yet is withdrawn instead (it never runs). `sql` is an instance from {@link make} or {@link reserve}.
 *
 * @example
 * ```ts
 * import { NodeTransport } from "@pqcancel/node"
 * import * as PostgresJsAdapter from "@pqcancel/node/PostgresJsAdapter"
 * import * as Effect from "effect/Effect"
 * import type postgres from "postgres"
 *
 * declare const sql: postgres.Sql<{}> // from PostgresJsAdapter.make
 *
 * const active = PostgresJsAdapter.query(sql, (sql) => sql<Array<{ id: number }>>`SELECT id FROM users`).pipe(
 *   Effect.timeout("1 second"), // interrupts ⇒ cancelled on the server (or withdrawn if not yet sent)
 *   Effect.provide(NodeTransport.layer)
 * )
 * ```
 *
 * @category combinators
 * @since 0.1.0
 */
export const query = <T extends ReadonlyArray<postgres.MaybeRow>>(
  sql: postgres.Sql<{}>,
  f: (sql: postgres.Sql<{}>) => postgres.PendingQuery<T>
): Effect.Effect<postgres.RowList<T>, PostgresJsQueryError | PostgresJsAdapterError, Transport> =>
  Effect.suspend((): Effect.Effect<
    postgres.RowList<T>,
    PostgresJsQueryError | PostgresJsAdapterError,
    Transport
  > => {
    const m = managed.get(sql)
    if (m === undefined) return Effect.fail(notManaged)
    if (m.reserved?.retired === true) {
      return Effect.fail(new PostgresJsAdapterError({ message: "this reserved connection was retired" }))
    }
    if (m.checked.error !== undefined) return Effect.fail(m.checked.error)
    let q: postgres.PendingQuery<T>
    try {
      q = f(sql)
    } catch (error) {
      return Effect.fail(toQueryError(error))
    }
    const statement: Statement = { query: q, managed: m }
    // no fiber of its own: postgres.js reads the answer by itself; an interruption runs the kit's cancel
    const run = kit.pooled<postgres.RowList<T>, PostgresJsQueryError>(m.adapter, (done) => {
      q.then((rows) => {
        if (!m.checked.done) driftCheck(m, q)
        done(Exit.succeed(rows))
      }, (error: unknown) => done(Exit.fail(toQueryError(error))))
      return statement
    }, holderOf)
    if ((q as { readonly aborts?: unknown }).aborts == null) return run
    // postgres.js 4's .signal(): its abort interrupts the statement's fiber (the kit cancels it, once, also when the
    // caller is interrupted too), and the caller sees 57014 as postgres.js's own abort would give
    return Effect.uninterruptibleMask((restore) =>
      Effect.gen(function*() {
        let abortedBySignal = false
        const fiber = yield* Effect.forkChild(run)
        ;(q as unknown as { cancel: () => Promise<void> }).cancel = () => {
          if (!abortedBySignal && fiber.pollUnsafe() === undefined) {
            abortedBySignal = true
            fiber.interruptUnsafe()
          }
          return Promise.resolve()
        }
        const exit = yield* restore(Fiber.await(fiber)).pipe(Effect.onInterrupt(() => Fiber.interrupt(fiber)))
        if (abortedBySignal && Exit.isFailure(exit) && Cause.hasInterruptsOnly(exit.cause)) return yield* aborted()
        return yield* exit
      })
    )
  })

/**
 * Runs `body` in a transaction on a reserved connection ({@link reserve}): `BEGIN` (with `mode`, e.g.
 * `"isolation level serializable"` or `"read only"`; letters and spaces only, as postgres.js's `sql.begin`), then
 * `COMMIT` when `body` succeeds, `ROLLBACK` when it fails or is interrupted. Statements inside run through
 * {@link query} on `tx`: an interrupted one is cancelled on the server, so nothing of the transaction commits. If a
 * cancel made the connection unsafe it is retired instead (the server then aborts the transaction with the
 * session).
 *
 * @example
 * ```ts
 * import * as Effect from "effect/Effect"
 * import * as PostgresJsAdapter from "@pqcancel/node/PostgresJsAdapter"
 * import type postgres from "postgres"
 *
 * declare const sql: postgres.Sql<{}> // from PostgresJsAdapter.make
 * const moved = PostgresJsAdapter.transaction(sql, (tx) =>
 *   Effect.gen(function*() {
 *     yield* PostgresJsAdapter.query(tx, (tx) => tx`UPDATE accounts SET balance = balance - 10 WHERE id = 1`)
 *     yield* PostgresJsAdapter.query(tx, (tx) => tx`UPDATE accounts SET balance = balance + 10 WHERE id = 2`)
 *   }))
 * ```
 *
 * @category combinators
 * @since 0.1.0
 */
export const transaction = <A, E, R>(
  sql: postgres.Sql<{}>,
  body: (tx: postgres.ReservedSql<{}>) => Effect.Effect<A, E, R>,
  mode: string = ""
): Effect.Effect<A, E | PostgresJsQueryError | PostgresJsAdapterError, R | Transport> =>
  Effect.scoped(
    Effect.flatMap(reserve(sql), (tx) =>
      Effect.uninterruptibleMask((restore) =>
        Effect.gen(function*() {
          const begin = `begin ${mode.replace(/[^a-z ]/gi, "")}`.trim()
          yield* restore(query(tx, (tx) => tx.unsafe(begin)))
          const exit = yield* Effect.exit(restore(body(tx)))
          if (Exit.isSuccess(exit)) {
            yield* query(tx, (tx) => tx`commit`)
            return exit.value
          }
          // a retired connection refuses the ROLLBACK: the server aborts the transaction with the session
          yield* Effect.ignore(query(tx, (tx) => tx`rollback`))
          return yield* Effect.failCause(exit.cause)
        })
      ))
  )
