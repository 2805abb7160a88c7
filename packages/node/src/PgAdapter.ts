/**
 * node-postgres (`pg`) adapter: read a connected `pg.Client`'s cancel key and actual remote address into a
 * {@link CancelConnection.SessionInfo}, and run queries that are cancelled on the server when the fiber is
 * interrupted — over the session's encryption, never hitting another query.
 *
 * **A shared client is safe.** node-postgres queues the queries of one client and a CancelRequest cancels whatever
 * the *session* runs, so cancelling a query that is still queued would cancel another fiber's query. The adapter
 * therefore runs its queries on one client one at a time, in its own queue (a per-client semaphore):
 *
 * - a query interrupted while it waits in that queue never reaches the client — no cancel is sent;
 * - the running query keeps its turn until the interruption is over: the cancel was dispatched (the server closed
 *   the cancel connection) **and** the query ended, so the next query is never written while a cancel is in flight;
 * - the cancel is sent only when the client's running query (node-postgres' private `activeQuery`) is the
 *   interrupted one; a query issued on the client outside the adapter that runs instead is never cancelled (the
 *   interrupted one, still queued behind it, is taken out of the client's queue, or waited for, bounded);
 * - "written but not yet started": when the CancelRequest reaches the backend before it has read the query, PostgreSQL
 *   ignores it and would run the statement to completion. The adapter sends the cancel again while the query has not
 *   ended (every `recancelInterval`, within `drainTimeout`), so the statement is cancelled once it starts. A short
 *   statement may complete before that: it then took effect *before* the interruption completed, and it is reported
 *   (`onNotCanceled`, by default a warning in the log). When the query does not end in time, the client is ended.
 *
 * Queries issued directly with `client.query` on a client the adapter also uses are not ordered with the adapter's:
 * they can still be written right after an interrupted adapter query ends, while its cancel is in flight. Send every
 * query of a shared client through the adapter. Pipeline mode (`pipeline: true`) writes queries ahead: a query with
 * others written behind it is never cancelled, it is waited for (bounded) and the client is ended if it does not end.
 *
 * `pg.Pool`: `pool.query` checks a client out, runs and releases it without ever showing it, so nothing can cancel
 * its query safely; use {@link poolQuery} or {@link withPoolClient}, which release a client that may still run the
 * query or receive a late cancel with `release(true)` (pg-pool destroys it instead of reusing it).
 *
 * `pg` speaks protocol 3.0 only (4-byte keys); 8.23 supports `sslnegotiation: "direct"`. The cancel follows the
 * `ConnectionOptions` you pass (parse the same conninfo you gave `pg`).
 *
 * @example
 * ```ts
 * import * as Effect from "effect/Effect"
 * import { ConnectionOptions } from "@pqcancel/core"
 * import { NodeTransport } from "@pqcancel/node"
 * import * as PgAdapter from "@pqcancel/node/PgAdapter"
 * import pg from "pg"
 *
 * declare const client: pg.Client // connected
 * declare const options: ConnectionOptions.ConnectionOptions
 *
 * const program = PgAdapter.query(client, options, "SELECT pg_sleep(60)").pipe(
 *   Effect.timeout("1 second"), // interrupts ⇒ CancelRequest ⇒ the backend stops
 *   Effect.provide(NodeTransport.layer)
 * )
 * ```
 *
 * @module
 * @since 0.1.0
 */
import type { CancelConnection } from "@pqcancel/core"
import * as AdapterKit from "@pqcancel/core/AdapterKit"
import { InvalidOption } from "@pqcancel/core/CancelError"
import type * as CancelOnInterrupt from "@pqcancel/core/CancelOnInterrupt"
import * as ConnectionOptions from "@pqcancel/core/ConnectionOptions"
import type { Transport } from "@pqcancel/core/Transport"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as Result from "effect/Result"
import * as Schema from "effect/Schema"
import type * as Scope from "effect/Scope"
import * as Net from "node:net"
import pg from "pg"
import { isWeakerSslmode, mapDriverTls } from "./internal/driverTls.ts"
import * as NodePostgres from "./internal/nodePostgres.ts"

/**
 * A query failed on the server (or the client broke). `code` is the SQLSTATE when the server sent one.
 *
 * @category errors
 * @since 0.1.0
 */
export class PgQueryError
  extends Schema.TaggedError<PgQueryError>("@pqcancel/node/PgAdapter/PgQueryError")("PgQueryError", {
    message: Schema.String,
    code: Schema.UndefinedOr(Schema.String)
  })
{}

/**
 * The client has no backend key or no open socket (not connected, or already ended).
 *
 * @category errors
 * @since 0.1.0
 */
export class PgNotConnected
  extends Schema.TaggedError<PgNotConnected>("@pqcancel/node/PgAdapter/PgNotConnected")("PgNotConnected", {
    message: Schema.String
  })
{}

/**
 * node-postgres' private state (the cancel key, the socket, the query queues) is not where or what this adapter
 * expects (a changed `pg`): the cancel key or the running query cannot be read safely, so the query is not run. The
 * message names the installed `pg` version.
 *
 * @category errors
 * @since 0.2.0
 */
export class PgInternalsChanged
  extends Schema.TaggedError<PgInternalsChanged>("@pqcancel/node/PgAdapter/PgInternalsChanged")(
    "PgInternalsChanged",
    { message: Schema.String }
  )
{}

const toQueryError = (error: unknown): PgQueryError =>
  new PgQueryError({
    message: error instanceof Error ? error.message : String(error),
    code: typeof error === "object" && error !== null && "code" in error && typeof error.code === "string"
      ? error.code
      : undefined
  })

/**
 * A connected `pg.Client` owned by the current Scope (ended when the Scope closes).
 *
 * A connection error after connecting (the server ended the session, the network dropped it) is reported by the
 * client's next query (`PgNotConnected`): the client listens for its `error` event, which node-postgres would
 * otherwise raise as an uncaught exception that ends the process.
 *
 * @example
 * ```ts
 * import * as PgAdapter from "@pqcancel/node/PgAdapter"
 * import * as Effect from "effect/Effect"
 *
 * const program = Effect.scoped(Effect.gen(function*() {
 *   const client = yield* PgAdapter.connect({ connectionString: "postgres://app@db.internal/app?sslmode=verify-full" })
 *   return PgAdapter.isRetired(client) // false: ended by the Scope, or retired by the adapter after an unsafe cancel
 * }))
 * ```
 *
 * @category constructors
 * @since 0.1.0
 */
export const connect = (config: pg.ClientConfig): Effect.Effect<pg.Client, PgQueryError, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.tryPromise({
      try: () => {
        const client = new pg.Client(config)
        // node-postgres rejects every later query of a client that errored; without a listener the error event
        // itself would be an uncaught exception
        client.on("error", ignoreClientError)
        return client.connect().then(() => client)
      },
      catch: toQueryError
    }),
    (client) => Effect.promise(() => client.end().catch(() => undefined))
  )

const ignoreClientError = (): void => {}

const invalid = (message: string) => Result.fail(new InvalidOption({ message }))

const isObject = (u: unknown): u is Readonly<Record<string, unknown>> => typeof u === "object" && u !== null

/**
 * The host name a TLS session verified: node-postgres sets `servername` to the host unless the host is an IP
 * address, and Node checks the certificate against `servername`, else the host.
 */
const verifiedName = (client: pg.Client): string => {
  const ssl: unknown = client.ssl
  return Net.isIP(client.host) !== 0 && isObject(ssl) && typeof ssl.servername === "string"
    ? ssl.servername
    : client.host
}

/**
 * The cancel's `ConnectionOptions`, derived from a `pg.Client` (connected or not) so that the cancel is never
 * weaker than the session: its host and port, its `ssl` (the object node-postgres hands to `tls.connect`, after
 * `connectionString` and `PGSSLMODE` were applied) and its `sslnegotiation`. `params` are libpq keywords that refine
 * the result (e.g. `connect_timeout`, or `sslmode=verify-ca` — a weaker sslmode than derived is refused).
 *
 * | node-postgres client | the session | the cancel (libpq terms) |
 * | --- | --- | --- |
 * | no `ssl`, `ssl: false`, `sslmode=disable` | plaintext | `sslmode=disable` |
 * | `ssl: true`; `sslmode=prefer`, `require`, `verify-ca`, `verify-full` (pg-connection-string's own meanings) | TLS, chain and host name verified | `verify-full`, `sslrootcert=system` (or the given CA) |
 * | `ssl: { ca, cert, key, passphrase }` (strings or Buffers; `sslrootcert`/`sslcert`/`sslkey` in the URL are read into these) | TLS with that material, verified | `verify-full` with the same `sslMaterial` |
 * | `sslmode=no-verify`, `ssl: { rejectUnauthorized: false }`, `uselibpqcompat=true` + `prefer`/`require` without root certificate | TLS, not verified | `require` |
 * | a custom `checkServerIdentity` (e.g. `uselibpqcompat=true` + `verify-ca`) | TLS, chain verified, host name as the function decides | `verify-ca` (the chain, against the given CA or Node's roots), as in every adapter |
 * | `minVersion` / `maxVersion` | those TLS versions | `ssl_min_protocol_version` / `ssl_max_protocol_version` |
 * | no client certificate | none presented | none: libpq's default files (`~/.postgresql/…`) are not read |
 * | `sslnegotiation: "direct"` | direct TLS, ALPN `postgresql` | `sslnegotiation=direct` |
 * | `host` is a unix socket directory | no TLS | no TLS (libpq never negotiates on unix sockets) |
 *
 * node-postgres has no GSS encryption: `gssencmode=disable`.
 *
 * @example
 * ```ts
 * import * as PgAdapter from "@pqcancel/node/PgAdapter"
 * import * as Effect from "effect/Effect"
 * import type pg from "pg"
 *
 * declare const client: pg.Client
 *
 * // the cancel's options from the client, with a bound on sending the cancel
 * const options = PgAdapter.optionsFromClient(client, { connect_timeout: "3" }).pipe(
 *   Effect.map((options) => options.sslmode) // e.g. "verify-full" for `ssl: true`
 * )
 * ```
 *
 * @category constructors
 * @since 0.1.0
 */
export const optionsFromClient = (
  client: pg.Client,
  params: Readonly<Record<string, string | undefined>> = {}
): Effect.Effect<ConnectionOptions.ConnectionOptions, InvalidOption> =>
  Effect.suspend(() => {
    const result = optionsFromClientResult(client, params)
    return Result.isFailure(result) ? Effect.fail(result.failure) : Effect.succeed(result.success)
  })

const optionsFromClientResult = (
  client: pg.Client,
  params: Readonly<Record<string, string | undefined>>
): Result.Result<ConnectionOptions.ConnectionOptions, InvalidOption> => {
  const ssl: unknown = client.ssl // typed boolean in @types/pg; at run time `true`, `false` or the tls options
  const unix = client.host.startsWith("/")
  // node-postgres hands `ssl` to `tls.connect`: the one mapping of a driver's TLS settings (driverTls.ts)
  const mapped = ssl === false || ssl === undefined || ssl === null
    ? undefined
    : mapDriverTls(isObject(ssl) ? ssl : true, params)
  if (mapped !== undefined && Result.isFailure(mapped)) return Result.fail(mapped.failure)
  const tls = mapped?.success
  const sslmode = tls?.sslmode ?? "disable"
  const base: Record<string, string | undefined> = {
    host: unix ? client.host : verifiedName(client),
    hostaddr: !unix && Net.isIP(client.host) !== 0 && verifiedName(client) !== client.host ? client.host : undefined,
    port: String(client.port),
    sslmode,
    sslnegotiation: tls === undefined ? "postgres" : NodePostgres.sslNegotiationOf(client),
    gssencmode: "disable",
    ...tls?.params
  }
  const merged = { ...base, ...params }
  const requested = merged.sslmode ?? sslmode
  if (isWeakerSslmode(requested, sslmode)) {
    return invalid(`cancel parameter sslmode=${requested} is weaker than the session's (${sslmode})`)
  }
  const resolved = ConnectionOptions.fromParams(merged)
  return tls === undefined || requested === "disable" || Result.isFailure(resolved)
    ? resolved
    : Result.succeed({ ...resolved.success, sslMaterial: tls.sslMaterial })
}

/**
 * What a cancel needs from a connected `pg.Client`: its pid and key, the host entry and the exact remote address.
 *
 * @category constructors
 * @since 0.1.0
 */
export const sessionInfo = (
  client: pg.Client,
  options: ConnectionOptions.ConnectionOptions
): Effect.Effect<CancelConnection.SessionInfo, PgNotConnected | PgInternalsChanged> =>
  Effect.suspend(() => Effect.fromResult(sessionInfoResult(client, options)))

const notConnected = new PgNotConnected({ message: "connection not open" })

const sessionInfoResult = (
  client: pg.Client,
  options: ConnectionOptions.ConnectionOptions
): Result.Result<CancelConnection.SessionInfo, PgNotConnected | PgInternalsChanged> => {
  const read = NodePostgres.readConnection(client)
  if (read._tag === "NotConnected") return Result.fail(notConnected)
  if (read._tag === "Changed") {
    return Result.fail(
      new PgInternalsChanged({
        message:
          `pg ${NodePostgres.pgVersion}: internals changed (pqcancel reads them as of pg 8.11–8.23): ${read.what}`
      })
    )
  }
  const { processID, secretKey, stream } = read.facts
  const secret = new Uint8Array(4)
  new DataView(secret.buffer).setInt32(0, secretKey)
  const key = {
    pid: processID,
    secret: Redacted.make(secret, { label: "CancelKey.secret" }),
    protocolVersion: "3.0" as const
  }
  if (client.host.startsWith("/")) {
    return Result.succeed({
      options,
      host: { _tag: "Unix", directory: client.host, port: client.port },
      address: { _tag: "Unix", path: `${client.host}/.s.PGSQL.${client.port}` },
      key
    })
  }
  const address = stream.remoteAddress
  if (address === undefined || stream.remotePort === undefined) return Result.fail(notConnected)
  const name = verifiedName(client)
  return Result.succeed({
    options,
    host: { _tag: "Tcp", host: name, hostaddr: name === client.host ? undefined : client.host, port: client.port },
    address: { _tag: "Tcp", address, port: stream.remotePort, family: stream.remoteFamily === "IPv6" ? 6 : 4 },
    key
  })
}

/**
 * How {@link query} cancels: the policy every adapter shares ({@link CancelOnInterrupt.Policy}: `cancelTimeout`,
 * `drainTimeout`, `retry`, `recancelInterval`, `retireUnlessCanceled`, `onNotCanceled`). When the interrupted query
 * does not end in time, or its cancel cannot be confirmed, the client is ended.
 *
 * @category models
 * @since 0.1.0
 */
export type QueryOptions = CancelOnInterrupt.Policy

// clients the adapter ended because they might still run a query or receive a late cancel
const retired = new WeakSet<pg.Client>()

/**
 * Whether the adapter ended this client because it was unsafe (a query that did not end, a cancel that was not
 * confirmed, or — with `retireUnlessCanceled` — a query that did not end cancelled).
 *
 * @category guards
 * @since 0.1.0
 */
export const isRetired = (client: pg.Client): boolean => retired.has(client)

/**
 * Whether an outcome is node-postgres' SQLSTATE 57014 (`canceling statement due to user request`).
 *
 * @category guards
 * @since 0.1.0
 */
export const isCanceled = (exit: Exit.Exit<unknown, unknown>): boolean => {
  if (Exit.isSuccess(exit)) return false
  const error = Option.getOrUndefined(Exit.findErrorOption(exit))
  return Schema.is(PgQueryError)(error) && error.code === "57014"
}

/**
 * The adapter's own queue of one client: its queries run on the client one at a time, so a query interrupted while
 * it waits is never written, and the running one keeps the client until its interruption is over.
 */
interface Turn {
  busy: boolean
  readonly waiting: Array<() => void>
}

const turns = new WeakMap<pg.Client, Turn>()

const turnOf = (client: pg.Client): Turn => {
  let turn = turns.get(client)
  if (turn === undefined) {
    turn = { busy: false, waiting: [] }
    turns.set(client, turn)
  }
  return turn
}

const release = (turn: Turn): void => {
  const next = turn.waiting.shift()
  if (next === undefined) turn.busy = false
  else next()
}

/** One query of the adapter: waiting for its turn (`write` set), or given to the client (`query` set) */
interface PgStatement {
  readonly turn: Turn
  write: (() => void) | undefined
  query: pg.Submittable | undefined
  /** its interruption holds the turn until it is over (the query's end does not release it) */
  holding: boolean
}

const holdTurn = (statement: PgStatement) =>
  Effect.as(
    Effect.addFinalizer(() => Effect.sync(() => release(statement.turn))),
    "running" as const
  )

const locate = (
  client: pg.Client,
  statement: PgStatement
): CancelOnInterrupt.Location | Effect.Effect<CancelOnInterrupt.Location, never, Scope.Scope> => {
  if (statement.query === undefined) {
    // still waiting for its turn: it will never be written
    const at = statement.write === undefined ? -1 : statement.turn.waiting.indexOf(statement.write)
    if (at !== -1) statement.turn.waiting.splice(at, 1)
    return "withdrawn"
  }
  const where = NodePostgres.locateQuery(client, statement.query)
  if (where === "withdrawn") release(statement.turn) // taken out of the client's queue: it never calls back
  if (where !== "running" || statement.holding) return where
  // no next query is written until the cancel was dispatched and this one ended
  statement.holding = true
  return holdTurn(statement)
}

// the node-postgres driver port of the adapter kit: a client's cancel target is read on its first query (with the
// options given or derived from the client), the running query and the queues only after an interruption
const kit = AdapterKit.make<pg.Client, PgStatement, PgNotConnected | PgInternalsChanged | InvalidOption>({
  driver: `pg ${NodePostgres.pgVersion}`,
  target: (client, options) => {
    if (options !== undefined) return sessionInfoResult(client, options)
    const derived = optionsFromClientResult(client, {})
    return Result.isFailure(derived) ? Result.fail(derived.failure) : sessionInfoResult(client, derived.success)
  },
  locate,
  retire: (client) =>
    Effect.suspend(() => {
      retired.add(client)
      return Effect.promise(() => client.end().catch(() => undefined))
    }),
  isRetired,
  isCanceled
})

/**
 * Runs a query; if the fiber is interrupted, cancels it on the server and waits for it to end before the
 * interruption completes. If that cannot be confirmed, the client is ended so it is never reused. Safe on a client
 * shared by many fibers: see the module documentation. `options` are the cancel's connection options; `undefined`
 * derives them from the client ({@link optionsFromClient}). A query that is never interrupted costs a few closures:
 * the client's cancel target is read once, on its first query.
 *
 * @example
 * ```ts
 * import { NodeTransport } from "@pqcancel/node"
 * import * as PgAdapter from "@pqcancel/node/PgAdapter"
 * import * as Effect from "effect/Effect"
 * import type pg from "pg"
 *
 * declare const client: pg.Client // connected, possibly shared by many fibers
 *
 * const report = PgAdapter.query<{ total: number }>(client, undefined, "SELECT sum(amount) AS total FROM sale").pipe(
 *   Effect.timeout("2 seconds"), // interrupts ⇒ cancelled on the server; the client is idle again afterwards
 *   Effect.provide(NodeTransport.layer)
 * )
 * ```
 *
 * @category combinators
 * @since 0.1.0
 */
export const query = <R extends pg.QueryResultRow = pg.QueryResultRow>(
  client: pg.Client,
  options: ConnectionOptions.ConnectionOptions | undefined,
  text: string,
  values?: ReadonlyArray<unknown>,
  queryOptions?: CancelOnInterrupt.Policy
): Effect.Effect<
  pg.QueryResult<R>,
  PgQueryError | PgNotConnected | PgInternalsChanged | InvalidOption,
  Transport
> =>
  kit.statement<pg.QueryResult<R>, PgQueryError>(client, queryOptions, (done) => {
    const turn = turnOf(client)
    const statement: PgStatement = { turn, write: undefined, query: undefined, holding: false }
    const write = () => {
      statement.write = undefined
      const submitted = new pg.Query<R>(text, values === undefined ? undefined : [...values], (error, result) => {
        if (!statement.holding) release(turn)
        done(error === undefined || error === null ? Exit.succeed(result) : Exit.fail(toQueryError(error)))
      })
      statement.query = submitted
      client.query(submitted)
    }
    if (turn.busy) {
      statement.write = write
      turn.waiting.push(write)
    } else {
      turn.busy = true
      write()
    }
    return statement
  }, options)

// ---------------------------------------------------------------------------------------------------------------------
// pg.Pool
// ---------------------------------------------------------------------------------------------------------------------

// a statement of `poolQuery`: its client is its own from the checkout to its end (or the interruption's), so no turn
interface PoolStatement {
  client: pg.PoolClient | undefined
  query: pg.Submittable | undefined
  /** interrupted before the pool handed a client over: the client goes straight back, nothing is written */
  withdrawn: boolean
  released: boolean
}

// what `connectionOf` names before the pool handed a client over
const unassigned: object = {}

const giveBack = (statement: PoolStatement): void => {
  if (statement.client === undefined || statement.released) return
  statement.released = true
  statement.client.release(unsafeToReuse(statement.client) ? true : undefined)
}

// the pool's driver port (the client's one, and "no client yet"): a client's cancel target is read the first time
// one of its queries is interrupted
const poolKit = AdapterKit.make<object, PoolStatement, PgNotConnected | PgInternalsChanged | InvalidOption>({
  driver: kit.port.driver,
  target: (client, options) =>
    client instanceof pg.Client ? kit.port.target(client, options) : Result.fail(notConnected),
  locate: (_, statement) => {
    if (statement.client === undefined || statement.query === undefined) {
      statement.withdrawn = true
      return "withdrawn"
    }
    // "withdrawn" when still in the client's queue (taken out: it never calls back; the client goes back when the
    // interruption is over)
    return NodePostgres.locateQuery(statement.client, statement.query)
  },
  retire: (client, reason) => client instanceof pg.Client ? kit.port.retire(client, reason) : Effect.void,
  isRetired: (client) => client instanceof pg.Client && isRetired(client),
  isCanceled
})

// check a client out; one that arrives after the fiber was interrupted goes straight back
const checkout = (pool: pg.Pool): Effect.Effect<pg.PoolClient, PgQueryError> =>
  Effect.callback<pg.PoolClient, PgQueryError>((resume) => {
    let abandoned = false
    let delivered: pg.PoolClient | undefined
    pool.connect((error, client) => {
      if (abandoned) return client?.release()
      if (error !== undefined && error !== null) return resume(Effect.fail(toQueryError(error)))
      if (client === undefined) return resume(Effect.fail(toQueryError(new Error("pool returned no client"))))
      delivered = client
      NodePostgres.followTransactionStatus(client)
      resume(Effect.succeed(client))
    })
    return Effect.sync(() => {
      abandoned = true
      delivered?.release()
    })
  })

/**
 * Whether a client must be destroyed rather than reused: the adapter retired it, it is ending, or it is inside a
 * transaction (`BEGIN` without `COMMIT`/`ROLLBACK`, e.g. after an interruption or a failure).
 */
const unsafeToReuse = (client: pg.Client): boolean => {
  if (isRetired(client)) return true
  const status = NodePostgres.transactionStatus(client)
  return status === "T" || status === "E"
}

/**
 * Checks a client out of a `pg.Pool`, runs `use` with it and releases it — destroyed instead of reused
 * (`release(true)`) when it is unsafe: the adapter ended it (a query that did not end, a cancel that was not
 * confirmed, `retireUnlessCanceled`), or it is left inside a transaction. Run the client's queries with
 * {@link query}, so an interruption cancels them on the server.
 *
 * `pool.query` checks out, runs and releases a client it never shows, so nothing can cancel its query safely:
 * use this, or {@link poolQuery}.
 *
 * @example
 * ```ts
 * import * as Effect from "effect/Effect"
 * import { NodeTransport } from "@pqcancel/node"
 * import * as PgAdapter from "@pqcancel/node/PgAdapter"
 * import pg from "pg"
 *
 * declare const pool: pg.Pool
 *
 * const transfer = PgAdapter.withPoolClient(pool, (client) =>
 *   Effect.gen(function*() {
 *     yield* PgAdapter.query(client, undefined, "BEGIN")
 *     yield* PgAdapter.query(client, undefined, "UPDATE account SET balance = balance - 10 WHERE id = 1")
 *     yield* PgAdapter.query(client, undefined, "UPDATE account SET balance = balance + 10 WHERE id = 2")
 *     yield* PgAdapter.query(client, undefined, "COMMIT")
 *   })).pipe(
 *     Effect.timeout("2 seconds"), // interrupted mid-transaction ⇒ cancelled, and the client is destroyed
 *     Effect.provide(NodeTransport.layer)
 *   )
 * ```
 *
 * @category combinators
 * @since 0.1.0
 */
export const withPoolClient = <A, E, R>(
  pool: pg.Pool,
  use: (client: pg.PoolClient) => Effect.Effect<A, E, R>
): Effect.Effect<A, E | PgQueryError, R> =>
  Effect.uninterruptibleMask((restore) =>
    Effect.flatMap(restore(checkout(pool)), (client) =>
      restore(Effect.suspend(() => use(client))).pipe(
        Effect.ensuring(Effect.sync(() => client.release(unsafeToReuse(client) ? true : undefined)))
      ))
  )

/**
 * `pool.query` with cancel-on-interrupt: checks a client out, runs one query with {@link query} (the cancel's options
 * derived from the client unless given) and releases the client, destroying it when it is unsafe.
 *
 * @example
 * ```ts
 * import * as Effect from "effect/Effect"
 * import { NodeTransport } from "@pqcancel/node"
 * import * as PgAdapter from "@pqcancel/node/PgAdapter"
 * import pg from "pg"
 *
 * const pool = new pg.Pool({ connectionString: "postgres://app@db.internal/app?sslmode=verify-full" })
 *
 * const rows = PgAdapter.poolQuery(pool, undefined, "SELECT * FROM report($1)", [2026]).pipe(
 *   Effect.timeout("5 seconds"), // interrupts ⇒ the backend stops, the client goes back to the pool idle
 *   Effect.provide(NodeTransport.layer)
 * )
 * ```
 *
 * @category combinators
 * @since 0.1.0
 */
export const poolQuery = <R extends pg.QueryResultRow = pg.QueryResultRow>(
  pool: pg.Pool,
  options: ConnectionOptions.ConnectionOptions | undefined,
  text: string,
  values?: ReadonlyArray<unknown>,
  queryOptions?: CancelOnInterrupt.Policy
): Effect.Effect<
  pg.QueryResult<R>,
  PgQueryError | PgNotConnected | PgInternalsChanged | InvalidOption,
  Transport
> =>
  Effect.suspend(() => {
    const statement: PoolStatement = { client: undefined, query: undefined, withdrawn: false, released: false }
    return poolKit.pooled<pg.QueryResult<R>, PgQueryError>(
      queryOptions,
      (done, interrupted) => {
        // as `pool.query` does: the query is written as soon as the pool hands a client over (not one scheduler
        // turn later, when the fiber resumes), and the client goes back when the query ended; an interrupted
        // query's client only once the interruption is over (the `ensuring` below)
        pool.connect((error, client) => {
          if (statement.withdrawn) return client?.release()
          if (error !== undefined && error !== null) return done(Exit.fail(toQueryError(error)))
          if (client === undefined) return done(Exit.fail(toQueryError(new Error("pool returned no client"))))
          statement.client = client
          NodePostgres.followTransactionStatus(client)
          // pg < 8.21 learns the transaction status only after the query's callback: its client goes back later
          const early = typeof (client as { getTransactionStatus?: unknown }).getTransactionStatus === "function"
          const submitted = new pg.Query<R>(text, values === undefined ? undefined : [...values], (error, result) => {
            if (early && !interrupted()) giveBack(statement)
            done(error === undefined || error === null ? Exit.succeed(result) : Exit.fail(toQueryError(error)))
          })
          statement.query = submitted
          client.query(submitted)
        })
        return statement
      },
      (statement) => statement.client ?? unassigned,
      options
    ).pipe(Effect.ensuring(Effect.sync(() => giveBack(statement))))
  })
