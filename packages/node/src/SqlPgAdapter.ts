/**
 * `@effect/sql-pg` adapter: the `PgClient` / `SqlClient` you already use, in which interrupting a fiber cancels its
 * statement on the server through pqcancel — over the session's own encryption, to the address the session is
 * connected to, with a bounded wait — and a pooled connection whose cancel or drain cannot be confirmed is taken out
 * of the pool instead of being handed to the next fiber.
 *
 * Every statement runs under {@link CancelOnInterrupt.cancelOnInterrupt}: `execute` and the other single statements,
 * streams (`sql.stream`, cancelled when the consumer stops early), every statement inside `withTransaction`, and
 * statements on `reserve`d connections. sql-pg's own side-connection cancel stays unused on this path: the statement
 * is never interrupted inside sql-pg, it ends on the server with SQLSTATE 57014 first.
 *
 * sql-pg does not export a connection's backend key, socket or encryption; {@link readSession} is the one function
 * that reads them (tested with {@link testedVersions}) and fails with {@link SqlPgInternalsChanged} — never a wrong
 * key or address — when they are not where and what it expects. Through the `SqlClient` that failure is a
 * `SqlError` (reason `UnknownError`, `operation: "pqcancel.sessionInfo"`, `cause`: the `SqlPgInternalsChanged`) and
 * the statement is not run. `docs/upstream-sql-pg.md` proposes the public API that would remove the read.
 *
 * @example
 * ```ts
 * import * as Effect from "effect/Effect"
 * import * as Layer from "effect/Layer"
 * import * as Redacted from "effect/Redacted"
 * import * as SqlClient from "effect/sql/SqlClient"
 * import { NodeTransport } from "@pqcancel/node"
 * import * as SqlPgAdapter from "@pqcancel/node/SqlPgAdapter"
 *
 * const SqlLive = SqlPgAdapter.layer({
 *   url: Redacted.make("postgres://app@db.internal:5432/app?sslmode=verify-full"),
 *   maxConnections: 10
 * }).pipe(Layer.provide(NodeTransport.layer))
 *
 * const program = Effect.gen(function*() {
 *   const sql = yield* SqlClient.SqlClient
 *   // the timeout interrupts ⇒ a CancelRequest over TLS ⇒ the backend stops ⇒ the connection goes back to the pool
 *   return yield* sql`SELECT pg_sleep(60)`.pipe(Effect.timeout("1 second"))
 * }).pipe(Effect.provide(SqlLive))
 * ```
 *
 * @module
 * @since 0.1.0
 */
import sqlPgPackage from "@effect/sql-pg/package.json" with { type: "json" }
import * as PgClient from "@effect/sql-pg/PgClient"
import type * as PgConnection from "@effect/sql-pg/PgConnection"
import * as PgPool from "@effect/sql-pg/PgPool"
import type { CancelConnection } from "@pqcancel/core"
import * as AdapterKit from "@pqcancel/core/AdapterKit"
import { InvalidOption } from "@pqcancel/core/CancelError"
import type * as CancelOnInterrupt from "@pqcancel/core/CancelOnInterrupt"
import * as ConnectionOptions from "@pqcancel/core/ConnectionOptions"
import { Transport } from "@pqcancel/core/Transport"
import * as Cause from "effect/Cause"
import * as Config from "effect/Config"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import type * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import type * as Reactivity from "effect/reactivity/Reactivity"
import * as Redacted from "effect/Redacted"
import * as Result from "effect/Result"
import * as Schema from "effect/Schema"
import * as Scope from "effect/Scope"
import * as SqlClient from "effect/sql/SqlClient"
import type * as SqlConnection from "effect/sql/SqlConnection"
import { SqlError, UnknownError } from "effect/sql/SqlError"
import * as Statement from "effect/sql/Statement"
import * as Stream from "effect/Stream"
import type * as Net from "node:net"
import { isWeakerSslmode, mapDriverTls } from "./internal/driverTls.ts"
import * as SqlPg from "./internal/sqlPg.ts"

/**
 * The `@effect/sql-pg` versions whose private connection state {@link readSession} reads (also the package's peer
 * dependency range): CI runs the adapter's tests against both ends, 4.0.5 and the newest 4.x.
 *
 * @category constants
 * @since 0.1.0
 */
export const testedVersions = ">=4.0.5 <5"

/**
 * The version of the `@effect/sql-pg` this adapter runs against (from its `package.json`), named in
 * {@link SqlPgInternalsChanged}.
 *
 * @category constants
 * @since 0.1.0
 */
export const installedVersion: string = (sqlPgPackage as { readonly version?: unknown }).version as string

/**
 * sql-pg's private connection state is not where or what this adapter expects (a changed `@effect/sql-pg`): the
 * cancel key or address cannot be read safely, so the statement is not run.
 *
 * @category errors
 * @since 0.1.0
 */
export class SqlPgInternalsChanged
  extends Schema.TaggedError<SqlPgInternalsChanged>("@pqcancel/node/SqlPgAdapter/SqlPgInternalsChanged")(
    "SqlPgInternalsChanged",
    {
      message: Schema.String
    }
  )
{}

/**
 * What the private read found on a live connection. The socket is kept only to retire the session (destroy it) when
 * a cancel cannot be confirmed.
 *
 * @category models
 * @since 0.1.0
 */
export interface SqlPgSession {
  readonly pid: number
  readonly secret: Redacted.Redacted<Uint8Array>
  readonly encrypted: boolean
  /** the remote address of a TCP session; undefined on a unix socket (sql-pg was given a socket path) */
  readonly remote: { readonly address: string; readonly port: number; readonly family: 4 | 6 } | undefined
  readonly socket: Net.Socket
}

const changedError = (what: string) =>
  new SqlPgInternalsChanged({
    message: `@effect/sql-pg ${installedVersion}: internals changed (pqcancel reads them as of @effect/sql-pg ` +
      `${testedVersions}): ${what}`
  })

const changed = (what: string) => Result.fail(changedError(what))

/**
 * THE private read (in `internal/sqlPg.ts`, the one module that reads sql-pg's private state): the backend key,
 * encryption, socket and remote address of a live connection (pinned or not: its base connection). Each field is
 * checked for its type and cross-checked against public facts (`processId` is public; `encrypted` must agree with the
 * socket being a `TLSSocket`); anything else fails with {@link SqlPgInternalsChanged}, naming the installed version.
 *
 * @category constructors
 * @since 0.1.0
 */
export const readSession = (
  connection: PgConnection.PgConnection
): Result.Result<SqlPgSession, SqlPgInternalsChanged> => {
  const base = SqlPg.baseOf(connection)
  if (typeof base === "string") return changed(base)
  const drift = SqlPg.checkBase(base, connection.processId)
  if (drift !== undefined) return changed(drift)
  const { encrypted, processId, secretKey, socket } = base.session
  // the facts of a live socket do not change: read its peer address (a getpeername each) once per session
  const cached = sessions.get(socket)
  if (cached !== undefined && cached.pid === processId && !socket.destroyed) return Result.succeed(cached)
  const secret = new Uint8Array(4)
  new DataView(secret.buffer).setInt32(0, secretKey)
  const address = socket.remoteAddress
  const port = socket.remotePort
  const read: SqlPgSession = {
    pid: processId,
    secret: Redacted.make(secret, { label: "CancelKey.secret" }),
    encrypted,
    remote: address !== undefined && port !== undefined
      ? { address, port, family: socket.remoteFamily === "IPv6" ? 6 : 4 }
      : undefined,
    socket
  }
  if (!socket.destroyed) sessions.set(socket, read)
  return Result.succeed(read)
}

const sessions = new WeakMap<Net.Socket, SqlPgSession>()

/**
 * Where and how the cancel of a sql-pg session goes, derived from the same config the `PgClient` was given
 * ({@link cancelOptions}): the host entry (the name TLS verifies and sends as SNI) and the options to use for an
 * encrypted and for a plaintext session (`undefined` when the config does not allow such a session).
 *
 * @category models
 * @since 0.1.0
 */
export interface CancelOptions {
  readonly host: ConnectionOptions.HostEntry
  /** the unix socket path, when the session is on one */
  readonly path: string | undefined
  readonly tls: ConnectionOptions.ConnectionOptions | undefined
  readonly plaintext: ConnectionOptions.ConnectionOptions | undefined
}

/**
 * The {@link CancelConnection.SessionInfo} of a live sql-pg connection: its backend key and actual remote address
 * ({@link readSession}), with the options matching its encryption. Fails with {@link SqlPgInternalsChanged} when the
 * private read fails or the session contradicts the config (e.g. plaintext although the config requires TLS).
 *
 * @category constructors
 * @since 0.1.0
 */
export const sessionInfo = (
  connection: PgConnection.PgConnection,
  options: CancelOptions
): Effect.Effect<CancelConnection.SessionInfo, SqlPgInternalsChanged> =>
  Effect.suspend(() => Effect.fromResult(sessionInfoResult(connection, options)))

const sessionInfoResult = (
  connection: PgConnection.PgConnection,
  options: CancelOptions
): Result.Result<CancelConnection.SessionInfo & { readonly socket: Net.Socket }, SqlPgInternalsChanged> => {
  const read = readSession(connection)
  if (Result.isFailure(read)) return Result.fail(read.failure)
  const session = read.success
  const cancelOptions = session.encrypted ? options.tls : options.plaintext
  if (cancelOptions === undefined) {
    return changed(`the session is ${session.encrypted ? "encrypted" : "plaintext"}, which its config does not allow`)
  }
  const key = { pid: session.pid, secret: session.secret, protocolVersion: "3.0" as const }
  const open = !session.socket.destroyed
  if (options.path !== undefined) {
    if (session.remote !== undefined) return changed("the config names a unix socket but the session is on TCP")
    return Result.succeed({
      options: cancelOptions,
      host: options.host,
      address: { _tag: "Unix", path: options.path },
      key,
      open,
      socket: session.socket
    })
  }
  if (session.remote === undefined) {
    if (open) return changed("a TCP session's socket has no remote address")
    // a closed socket has no remote address any more; the cancel then fails with libpq's "connection not open"
    return Result.succeed({
      options: cancelOptions,
      host: options.host,
      address: { _tag: "Tcp", address: "0.0.0.0", port: 0, family: 4 },
      key,
      open,
      socket: session.socket
    })
  }
  return Result.succeed({
    options: cancelOptions,
    host: options.host,
    address: { _tag: "Tcp", ...session.remote },
    key,
    open,
    socket: session.socket
  })
}

/**
 * libpq keywords that refine the cancel's options derived from the `PgClient` config, e.g. `connect_timeout`, or
 * TLS files (`sslrootcert`, `sslcert`, `sslkey`, which then replace the config's in-memory `ssl.ca`/`cert`/`key`).
 * An `sslmode` weaker than what the config requires is refused.
 *
 * @category models
 * @since 0.1.0
 */
export type CancelParams = Readonly<Record<string, string | undefined>>

interface UrlFacts {
  host?: string
  port?: number
  ssl?: boolean | "prefer"
  connectTimeout?: number
}

// The four facts of sql-pg's URL that decide where and how its sessions connect, read as sql-pg reads them (WHATWG
// URL, `host`/`port`/`sslmode`/`connect_timeout` query parameters); sql-pg itself validates the rest.
const urlFacts = (url: Redacted.Redacted | undefined): Result.Result<UrlFacts, InvalidOption> => {
  if (url === undefined) return Result.succeed({})
  let parsed: URL
  try {
    parsed = new URL(Redacted.value(url) as string)
  } catch {
    return Result.fail(new InvalidOption({ message: "invalid PgClient url" }))
  }
  const facts: UrlFacts = {}
  if (parsed.hostname !== "") {
    facts.host = parsed.hostname.startsWith("[") ? parsed.hostname.slice(1, -1) : decodeURIComponent(parsed.hostname)
  }
  if (parsed.port !== "") facts.port = Number(parsed.port)
  for (const [key, value] of parsed.searchParams) {
    if (key === "host") facts.host = value
    else if (key === "port") facts.port = Number(value)
    else if (key === "connect_timeout") facts.connectTimeout = Number(value)
    else if (key === "sslmode") {
      facts.ssl = value === "disable" ? false : value === "prefer" || value === "allow" ? "prefer" : true
    }
  }
  return Result.succeed(facts)
}

const invalid = (message: string) => Result.fail(new InvalidOption({ message }))

/**
 * The cancel's {@link CancelOptions} from the config given to `PgClient` (`url`, `host`, `port`, `path`, `ssl`,
 * `connectTimeout`), read the way sql-pg reads it, refined by `params`:
 *
 * | sql-pg config | the session | the cancel (libpq terms) |
 * | --- | --- | --- |
 * | `ssl: false`, no sslmode | plaintext | `sslmode=disable` |
 * | `sslmode=prefer` / `allow` | TLS verified against the system roots if the server accepts, else plaintext | TLS session: `verify-full`, `sslrootcert=system`; plaintext: `prefer` |
 * | `ssl: true`, `sslmode=require` / `verify-ca` / `verify-full` | TLS, verified like verify-full (system roots) | `verify-full`, `sslrootcert=system` |
 * | `ssl: { ca, cert, key, passphrase, servername }` | TLS, verified with that CA, host name = `servername` ?? host | `verify-full` with the same material (`sslMaterial`), host name = `servername` ?? host |
 * | `ssl: { rejectUnauthorized: false }` | TLS, unverified | `require` |
 *
 * Always `sslnegotiation=postgres` and `gssencmode=disable` (sql-pg has neither direct TLS nor GSS). A custom
 * `stream` is refused: nothing tells where its cancel should go.
 *
 * @category constructors
 * @since 0.1.0
 */
export const cancelOptions = (
  config: PgConnection.Config,
  params: CancelParams = {}
): Result.Result<CancelOptions, InvalidOption> => {
  if (config.stream !== undefined) {
    return invalid(
      "@effect/sql-pg `stream` option: pqcancel cannot tell where the cancel of a custom stream goes; use host/port/path"
    )
  }
  const url = urlFacts(config.url)
  if (Result.isFailure(url)) return Result.fail(url.failure)
  const host = config.host ?? url.success.host ?? "localhost"
  const port = config.port ?? url.success.port ?? 5432
  const path = config.path ?? (host.startsWith("/") ? `${host}/.s.PGSQL.${port}` : undefined)
  const ssl = config.ssl ?? (url.success.ssl === "prefer" ? true : url.success.ssl ?? false)
  const sslOptional = config.ssl === undefined && url.success.ssl === "prefer"
  const tlsObject = typeof ssl === "object" ? ssl : undefined
  const connectTimeout = config.connectTimeout !== undefined
    ? Math.ceil(Duration.toSeconds(Duration.fromInputUnsafe(config.connectTimeout)))
    : url.success.connectTimeout ?? 5
  const serverName = typeof tlsObject?.servername === "string" ? tlsObject.servername : host
  const hostEntry: ConnectionOptions.HostEntry = path !== undefined
    ? { _tag: "Unix", directory: path.replace(/\/[^/]*$/, "") || "/", port }
    : { _tag: "Tcp", host: serverName, hostaddr: undefined, port }
  // the one mapping of a driver's TLS settings (driverTls.ts): sslmode, root certificate, versions, the session's
  // in-memory material and nothing else (a file given in `params` wins; what pqcancel cannot use the same way, e.g.
  // pfx, is refused rather than silently dropped)
  const mapped = ssl === false
    ? undefined
    : mapDriverTls((tlsObject as Readonly<Record<string, unknown>> | undefined) ?? true, params)
  if (mapped !== undefined && Result.isFailure(mapped)) return Result.fail(mapped.failure)
  const tlsSettings = mapped?.success
  const make = (sslmode: ConnectionOptions.SslMode | undefined) => {
    if (sslmode === undefined) return Result.succeed(undefined)
    const encrypted = sslmode !== "disable" && sslmode !== "prefer"
    const base: Record<string, string | undefined> = {
      // libpq's host entry only matters for validation here: the session's HostEntry and address are given to the
      // cancel directly (SessionInfo), never resolved again
      host: path !== undefined ? hostEntry._tag === "Unix" ? hostEntry.directory : host : serverName,
      port: String(port),
      sslmode,
      sslnegotiation: "postgres",
      gssencmode: "disable",
      connect_timeout: String(connectTimeout),
      sslsni: "1",
      ...(encrypted ? tlsSettings?.params : undefined)
    }
    const merged = { ...base, ...params }
    const requested = merged.sslmode as ConnectionOptions.SslMode
    if (isWeakerSslmode(requested, sslmode)) {
      return invalid(`cancel parameter sslmode=${String(params.sslmode)} is weaker than the session's (${sslmode})`)
    }
    const resolved = ConnectionOptions.fromParams(merged)
    return tlsSettings === undefined || requested === "disable" || Result.isFailure(resolved)
      ? resolved
      : Result.succeed({ ...resolved.success, sslMaterial: tlsSettings.sslMaterial })
  }
  const tls = make(tlsSettings?.sslmode)
  if (Result.isFailure(tls)) return Result.fail(tls.failure)
  const plaintext = make(ssl === false ? "disable" : sslOptional ? "prefer" : undefined)
  if (Result.isFailure(plaintext)) return Result.fail(plaintext.failure)
  return Result.succeed({ host: hostEntry, path, tls: tls.success, plaintext: plaintext.success })
}

/**
 * Options of {@link make} and {@link layer}: the policy every adapter shares ({@link CancelOnInterrupt.Policy}:
 * `cancelTimeout` — default the config's connect timeout —, `drainTimeout`, `retry`, `recancelInterval`,
 * `retireUnlessCanceled`, `onNotCanceled`) and the libpq keywords refining the cancel's options.
 *
 * @category models
 * @since 0.1.0
 */
export interface Options extends CancelOnInterrupt.Policy {
  /** libpq keywords refining the cancel's options (see {@link CancelParams}) */
  readonly cancelParams?: CancelParams | undefined
}

/**
 * Whether a statement ended cancelled: a `SqlError` from sql-pg carrying SQLSTATE 57014 (`query_canceled`).
 *
 * @category predicates
 * @since 0.1.0
 */
export const isCanceled = (exit: Exit.Exit<unknown, unknown>): boolean => {
  if (Exit.isSuccess(exit)) return false
  const error = Option.getOrUndefined(Exit.findErrorOption(exit))
  return error instanceof SqlError && (error.reason.cause as { readonly code?: unknown } | undefined)?.code === "57014"
}

const internalsError = (error: SqlPgInternalsChanged) =>
  new SqlError({
    reason: new UnknownError({ cause: error, message: error.message, operation: "pqcancel.sessionInfo" })
  })

// Waits (bounded) for a destroyed socket's `close`, so sql-pg has failed the statement and retired the connection.
const destroySocket = (socket: Net.Socket): Effect.Effect<void> =>
  Effect.callback<void>((resume) => {
    if (socket.closed) return resume(Effect.void)
    const done = () => resume(Effect.void)
    socket.once("close", done)
    socket.destroy()
    return Effect.sync(() => socket.off("close", done))
  }).pipe(Effect.timeoutOption("5 seconds"), Effect.asVoid)

/**
 * The adapter's own turn on one physical connection used exclusively (no multiplex, or pinned: a transaction, a
 * reserved connection), so a cancel can only reach the statement it was sent for: a statement waiting for its turn is
 * never written, the running one keeps the turn until its interruption is over.
 */
interface Turn {
  busy: boolean
  readonly waiting: Array<() => void>
  readonly release: Effect.Effect<void>
}

const makeTurn = (): Turn => {
  const turn: Turn = {
    busy: false,
    waiting: [],
    release: Effect.sync(() => {
      const next = turn.waiting.shift()
      if (next === undefined) turn.busy = false
      else next()
    })
  }
  return turn
}

const waitTurn = (turn: Turn): Effect.Effect<void> =>
  Effect.callback<void>((resume) => {
    let given = false
    const waiter = () => {
      given = true
      resume(Effect.void)
    }
    turn.waiting.push(waiter)
    return Effect.suspend(() => {
      if (given) return turn.release // handed over as it was interrupted: pass it on
      const at = turn.waiting.indexOf(waiter)
      if (at !== -1) turn.waiting.splice(at, 1)
      return Effect.void
    })
  })

const takeTurn = (turn: Turn): Effect.Effect<void> =>
  Effect.suspend(() => {
    if (turn.busy) return waitTurn(turn)
    turn.busy = true
    return Effect.void
  })

const withTurn = <A, E, R>(turn: Turn, effect: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
  Effect.suspend(() => {
    if (!turn.busy) {
      turn.busy = true
      return Effect.ensuring(effect, turn.release)
    }
    return Effect.uninterruptibleMask((restore) =>
      Effect.flatMap(restore(waitTurn(turn)), () => Effect.ensuring(restore(effect), turn.release))
    )
  })

/** A statement as the sql-pg port's `locate` knows it: the fiber that runs it, and how it runs */
interface SqlPgStatement {
  readonly fiber: Fiber.Fiber<unknown, unknown>
  /** queued on the shared pipeline of a multiplexed connection (else: one at a time, the adapter's turn) */
  readonly pipelined: boolean
}

const exclusiveStatement = <A, E>(fiber: Fiber.Fiber<A, E>): SqlPgStatement => ({ fiber, pipelined: false })

/** What the adapter runs statements with: the kit of this client's pool, and each connection's base and turn */
interface Guard {
  readonly effect: <A>(
    connection: PgConnection.PgConnection,
    exclusive: boolean,
    query: Effect.Effect<A, SqlError>
  ) => Effect.Effect<A, SqlError>
  readonly stream: <A>(connection: PgConnection.PgConnection, stream: Stream.Stream<A, SqlError>) => Stream.Stream<
    A,
    SqlError
  >
}

const makeGuard = (pool: PgPool.PgPool, cancel: CancelOptions, settings: Options, transport: Transport["Service"]) => {
  const retired = new WeakSet<SqlPg.Base>()
  const kit = AdapterKit.make<SqlPg.Base, SqlPgStatement, SqlError>({
    driver: `@effect/sql-pg ${installedVersion}`,
    target: (base) =>
      Result.mapError(sessionInfoResult(base as unknown as PgConnection.PgConnection, cancel), internalsError),
    locate: (base, statement) =>
      statement.pipelined ? SqlPg.locateMultiplexed(base, statement.fiber) : SqlPg.locateExclusive(base),
    awaitTurn: (base, statement) => SqlPg.awaitTurn(base, statement.fiber),
    retire: (base) =>
      Effect.suspend(() => {
        retired.add(base)
        return Effect.andThen(
          destroySocket(base.session.socket),
          pool.invalidate(base as unknown as PgConnection.PgConnection)
        )
      }),
    isRetired: (base) => retired.has(base),
    isCanceled,
    // provided to an interruption only: providing it around every statement merged a context per statement
    transport
  })
  const turns = new WeakMap<SqlPg.Base, Turn>()
  const turnOf = (base: SqlPg.Base): Turn => {
    let turn = turns.get(base)
    if (turn === undefined) {
      turn = makeTurn()
      turns.set(base, turn)
    }
    return turn
  }
  const baseOf = (connection: PgConnection.PgConnection): Result.Result<SqlPg.Base, SqlError> => {
    const base = SqlPg.baseOf(connection)
    return typeof base === "string" ? Result.fail(internalsError(changedError(base))) : Result.succeed(base)
  }
  // one statement at a time (the adapter's turn): it runs in a child fiber, which keeps reading the answer while the
  // cancel is sent (sql-pg's own interruption of it would send sql-pg's own cancel)
  const protect = <A>(base: SqlPg.Base, query: Effect.Effect<A, SqlError>) =>
    kit.effect(base, settings, exclusiveStatement, query)
  // pipelined: no fiber of its own; sql-pg abandons the interrupted statement's entry, the kit takes it back
  const protectPipelined = <A>(base: SqlPg.Base, query: Effect.Effect<A, SqlError>) =>
    kit.reclaimed(base, settings, query, (fiber) => {
      const left = SqlPg.reclaimPipelined(base, fiber)
      return left === undefined ? undefined : { ...left, statement: { fiber, pipelined: true } }
    })

  const effect = <A>(
    connection: PgConnection.PgConnection,
    exclusive: boolean,
    query: Effect.Effect<A, SqlError>
  ): Effect.Effect<A, SqlError> =>
    Effect.suspend(() => {
      const base = baseOf(connection)
      if (Result.isFailure(base)) return Effect.fail(base.failure)
      return exclusive
        ? withTurn(turnOf(base.success), protect(base.success, query))
        : base.success.multiplex
        ? protectPipelined(base.success, query)
        : protect(base.success, query)
    })

  const stream = <A>(connection: PgConnection.PgConnection, rows: Stream.Stream<A, SqlError>): Stream.Stream<
    A,
    SqlError
  > =>
    Stream.unwrap(Effect.gen(function*() {
      const base = yield* Effect.fromResult(baseOf(connection))
      const scope = yield* Effect.scope
      const turn = turnOf(base)
      yield* Effect.acquireRelease(takeTurn(turn), () => turn.release)
      yield* Effect.fromResult(kit.target(base)) // the statement runs only where it can be cancelled
      // sql-pg's stream lives in a child scope that is closed only after our finalizer (added later, so run
      // first) has cancelled the statement and drained it: sql-pg's own finalizer then finds it done
      const inner = yield* Scope.fork(scope, "sequential")
      let ended = false
      const pull = yield* Scope.provide(Stream.toPull(rows), inner)
      yield* Scope.addFinalizer(
        scope,
        Effect.suspend(() => {
          if (ended || base.deadWith !== undefined) return Effect.void
          ended = true
          // the rest of the statement, read to its end (its rows discarded): this keeps the socket flowing so the
          // server's 57014 arrives; run under the kit and interrupted at once ⇒ cancel, then drain
          return Effect.gen(function*() {
            const started = yield* Deferred.make<void>()
            const drain = Effect.andThen(
              Deferred.succeed(started, undefined),
              Effect.forever(pull).pipe(Effect.catch((error) => Cause.isDone(error) ? Effect.void : Effect.fail(error)))
            )
            const fiber = yield* Effect.forkChild(protect(base, drain), {
              startImmediately: true,
              uninterruptible: false
            })
            yield* Deferred.await(started)
            yield* Fiber.interrupt(fiber)
          })
        })
      )
      return Stream.fromPull(Effect.succeed(pull.pipe(Effect.onExit((exit) =>
        Effect.sync(() => {
          // the statement ended (rows done or an error); an interrupted pull leaves it running
          if (Exit.isFailure(exit) && !Cause.hasInterruptsOnly(exit.cause)) ended = true
        })
      ))))
    }))

  return { effect, stream } satisfies Guard
}

/** The `SqlConnection` of one sql-pg connection: built once per connection object (not per statement) */
const makeConnection = (
  connection: PgConnection.PgConnection,
  guard: Guard,
  exclusive: boolean
): SqlConnection.Connection => {
  const run = <A>(query: Effect.Effect<A, SqlError>) => guard.effect(connection, exclusive, query)
  const rows = (sql: string, params: ReadonlyArray<unknown>, prepare: boolean) =>
    run(Effect.map(connection.query(sql, params, prepare), (result) => result.rows))
  return {
    execute: (sql, params, transformRows) =>
      transformRows ? Effect.map(rows(sql, params, true), transformRows) : rows(sql, params, true),
    executeRaw: (sql, params) => run(connection.query(sql, params)),
    executeValues: (sql, params) => run(connection.queryValues(sql, params)),
    executeValuesUnprepared: (sql, params) => run(connection.queryValues(sql, params, false)),
    executeUnprepared: (sql, params, transformRows) =>
      transformRows ? Effect.map(rows(sql, params, false), transformRows) : rows(sql, params, false),
    executeStream: (sql, params, transformRows) => {
      const stream = guard.stream(connection, connection.stream(sql, params))
      return transformRows ? Stream.mapArray(stream, (chunk) => transformRows(chunk) as typeof chunk) : stream
    }
  }
}

// PostgreSQL answers COMMIT with ROLLBACK when the transaction was aborted (as sql-pg's own client checks)
const commit = (conn: SqlConnection.Connection): Effect.Effect<void, SqlError> =>
  Effect.flatMap(conn.executeRaw("COMMIT", []), (result) =>
    (result as PgConnection.Result).command === "ROLLBACK"
      ? Effect.fail(
        new SqlError({
          reason: new UnknownError({
            cause: new Error("COMMIT rolled back an aborted transaction"),
            message: "PgClient: COMMIT rolled back an aborted transaction",
            operation: "commit"
          })
        })
      )
      : Effect.void)

interface PgJson extends Statement.Custom<"PgJson", unknown> {}
// the same custom fragment kind as sql-pg's (its compiler, reused below, encodes it as jsonb)
const PgJson = Statement.custom<PgJson>("PgJson")

/**
 * A `PgClient` (also a `SqlClient`) on a sql-pg pool (`PgPool.make(config)`), whose statements are cancelled on the
 * server through pqcancel when their fiber is interrupted. Built from sql-pg's public parts (`PgPool`,
 * `PgClient.makeCompiler`, `SqlClient.make`), like `PgClient.make`. With `multiplex: true` the pipelining is kept
 * and shared statements are cancelled too: one not yet written is withdrawn; one written behind others is waited for
 * until the server runs it, then cancelled while nothing is queued behind it (new statements wait for the
 * interruption); one with statements already written behind it is not cancelled (a cancel could reach them): it is
 * waited for, bounded by `drainTimeout`, and its connection retired if it does not end.
 *
 * @category constructors
 * @since 0.1.0
 */
export const make = Effect.fnUntraced(function*(
  config: PgClient.PgPoolConfig,
  options: Options = {}
): Effect.fn.Return<
  PgClient.PgClient & SqlClient.SqlClient,
  SqlError | InvalidOption,
  Scope.Scope | Reactivity.Reactivity | Transport
> {
  const cancel = yield* Effect.fromResult(cancelOptions(config, options.cancelParams))
  const transport = yield* Transport
  const pool = yield* PgPool.make(config)
  const guard = makeGuard(pool, cancel, options, transport)
  // one SqlConnection per sql-pg connection object and mode, not one per statement
  const shared = new WeakMap<PgConnection.PgConnection, SqlConnection.Connection>()
  const exclusive = new WeakMap<PgConnection.PgConnection, SqlConnection.Connection>()
  const wrap = (connection: PgConnection.PgConnection, pipelined: boolean): SqlConnection.Connection => {
    const cache = pipelined ? shared : exclusive
    let wrapped = cache.get(connection)
    if (wrapped === undefined) {
      wrapped = makeConnection(connection, guard, !pipelined)
      cache.set(connection, wrapped)
    }
    return wrapped
  }
  const multiplex = config.multiplex === true
  const transformRows = config.transformResultNames
    ? Statement.defaultTransforms(config.transformResultNames, config.transformJson).array
    : undefined
  const client = yield* SqlClient.make({
    driver: "pg",
    acquirer: Effect.map(pool.get, (connection) => wrap(connection, multiplex)),
    borrower: (f) => pool.use((connection) => f(wrap(connection, multiplex))),
    transactionAcquirer: Effect.map(pool.reserve, (connection) => wrap(connection, false)),
    compiler: PgClient.makeCompiler(config.transformQueryNames, config.transformJson),
    prepareTransactionControls: true,
    commit,
    releaseSavepoint: (name) => `RELEASE SAVEPOINT ${name}`,
    spanAttributes: [
      ...(config.spanAttributes ? Object.entries(config.spanAttributes) : []),
      ["db.system.name", "postgresql"],
      ["db.namespace", config.database ?? config.username ?? "postgres"],
      ["server.address", config.host ?? "localhost"],
      ["server.port", config.port ?? 5432]
    ],
    transformRows
  })
  const listen: PgClient.PgClient["listen"] = (channel) =>
    Effect.flatMap(pool.reserve, (connection) => connection.listen(channel))
  const notify: PgClient.PgClient["notify"] = (channel, payload) =>
    Effect.asVoid(Effect.scoped(Effect.flatMap(
      Effect.map(pool.get, (connection) => wrap(connection, multiplex)),
      (conn) => conn.executeRaw(`SELECT pg_notify($1, $2)`, [channel, payload])
    )))
  const pgClient: PgClient.PgClient & SqlClient.SqlClient = Object.assign(client, {
    [PgClient.TypeId]: PgClient.TypeId,
    config,
    json: (value: unknown) => Statement.fragment([PgJson(value)]),
    listen,
    notify,
    poolStats: pool.stats
  })
  return pgClient
})

/**
 * The `PgClient` and `SqlClient` services, like `PgClient.layer(config)`, with cancel-on-interrupt through pqcancel
 * (see {@link make}). Needs a `Transport` (`NodeTransport.layer`).
 *
 * @example
 * ```ts
 * import { NodeTransport } from "@pqcancel/node"
 * import * as SqlPgAdapter from "@pqcancel/node/SqlPgAdapter"
 * import * as Effect from "effect/Effect"
 * import * as Layer from "effect/Layer"
 * import * as Redacted from "effect/Redacted"
 * import * as SqlClient from "effect/sql/SqlClient"
 *
 * const SqlLive = SqlPgAdapter.layer(
 *   { url: Redacted.make("postgres://app@db.internal/app?sslmode=verify-full"), maxConnections: 10 },
 *   { drainTimeout: "5 seconds" }
 * ).pipe(Layer.provide(NodeTransport.layer))
 *
 * const program = Effect.gen(function*() {
 *   const sql = yield* SqlClient.SqlClient
 *   return yield* sql`SELECT pg_sleep(60)`.pipe(Effect.timeoutOption("1 second")) // cancelled on the server
 * }).pipe(Effect.provide(SqlLive))
 * ```
 *
 * @category layers
 * @since 0.1.0
 */
export const layer = (
  config: PgClient.PgPoolConfig,
  options?: Options
): Layer.Layer<PgClient.PgClient | SqlClient.SqlClient, SqlError | InvalidOption, Transport> =>
  PgClient.layerFrom(make(config, options))

/**
 * {@link layer} from a wrapped config, like `PgClient.layerConfig`.
 *
 * @example
 * ```ts
 * import * as Config from "effect/Config"
 * import * as Layer from "effect/Layer"
 * import { NodeTransport } from "@pqcancel/node"
 * import * as SqlPgAdapter from "@pqcancel/node/SqlPgAdapter"
 *
 * const SqlLive = SqlPgAdapter.layerConfig({
 *   url: Config.Redacted("DATABASE_URL"),
 *   maxConnections: Config.Int("DATABASE_POOL_SIZE").pipe(Config.withDefault(10))
 * }).pipe(Layer.provide(NodeTransport.layer))
 * ```
 *
 * @category layers
 * @since 0.1.0
 */
export const layerConfig = (
  config: Config.Wrap<PgClient.PgPoolConfig>,
  options?: Options
): Layer.Layer<PgClient.PgClient | SqlClient.SqlClient, Config.ConfigError | SqlError | InvalidOption, Transport> =>
  PgClient.layerFrom(Effect.flatMap(Config.unwrap(config), (resolved) => make(resolved, options)))
