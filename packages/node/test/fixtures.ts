/**
 * Shared test support: turn a TestSession into what a cancel needs, and start a query worth cancelling.
 */
import { assert } from "@effect/vitest"
import { CancelKey, ConnectionOptions } from "@pqcancel/core"
import type { CancelError } from "@pqcancel/core"
import type { CancelConnection } from "@pqcancel/core"
import { CancelConnection as CancelConnectionModule } from "@pqcancel/core"
import { NodeTransport } from "@pqcancel/node"
import * as PostgresJsAdapter from "@pqcancel/node/PostgresJsAdapter"
import { EmbeddedPostgres, FaultProxy, PgBouncer } from "@pqcancel/test-utils"
import { TestSession } from "@pqcancel/test-utils"
import * as Cause from "effect/Cause"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import * as Stream from "effect/Stream"
import * as Fs from "node:fs"
import { createRequire } from "node:module"
import * as Os from "node:os"
import * as Path from "node:path"
import postgres from "postgres"
import postgres4 from "postgres4"
import postgres41 from "postgres41"

/**
 * The suite runs on Deno (scripts/runtime-tests.ts): its node:tls never checks a revocation list, so NodeTransport
 * refuses one there, and its sockets have no descriptor to report (PQcancelSocket says -1, "unknown").
 */
export const onDeno = "Deno" in globalThis

/**
 * The socket has no descriptor to report (PQcancelSocket says -1, "unknown"): on Deno, and with BunTransport in
 * NodeTransport's place (packages/node/vitest.bun-transport.config.ts)
 */
export const noDescriptor = onDeno || process.env["PQCANCEL_TRANSPORT"] === "bun"

/** NodeTransport's refusal of a revocation list on Deno, at the end of the cancel's error message */
export const DENO_CRL_REFUSED = /Deno's node:tls does not check revocation lists$/

/** The SessionInfo of a TestSession, with the cancel's options parsed from `conninfo` */
export const sessionInfo = (
  session: TestSession.TestSession,
  conninfo: string
): Effect.Effect<CancelConnection.SessionInfo, CancelError.InvalidOption> =>
  Effect.map(ConnectionOptions.fromString(conninfo, {}), (options) => ({
    options,
    host: options.hosts[0]!,
    address: session.remote,
    key: CancelKey.unsafeMake(session.backendKey)
  }))

/** Sends `SELECT pg_sleep(60)` and waits until the backend is really inside pg_sleep */
export const sleepingQuery = Effect.fnUntraced(function*(
  session: TestSession.TestSession,
  monitor: TestSession.TestSession
) {
  const pending = yield* session.startQuery("SELECT pg_sleep(60)")
  yield* TestSession.waitUntilSleeping(monitor, session.backendKey.pid)
  return pending
})

/** The query ended with SQLSTATE 57014 (canceling statement due to user request) */
export const assertCancelled = Effect.fnUntraced(function*(pending: TestSession.PendingQuery) {
  const result = yield* pending.result
  assert.strictEqual(result._tag, "Error")
  if (result._tag === "Error") {
    assert.strictEqual(result.sqlstate, "57014")
    assert.include(result.message, "canceling statement due to user request")
  }
})

/** The session's query was not cancelled: its backend still sleeps in pg_sleep */
export const assertStillSleeping = Effect.fnUntraced(function*(
  monitor: TestSession.TestSession,
  session: TestSession.TestSession
) {
  const still = yield* monitor.query(
    `SELECT wait_event FROM pg_stat_activity WHERE pid = ${session.backendKey.pid}`
  )
  assert.deepStrictEqual(still._tag === "Ok" ? still.rows : still, [["PgSleep"]])
})

/** conninfo of a cluster for one transport, with extra keywords */
export const conninfo = (
  cluster: EmbeddedPostgres.Cluster,
  transport: "tcp" | "tcp6" | "unix",
  extra: Record<string, string> = {}
): string => cluster.conninfo(transport, { connect_timeout: "10", ...extra })

/** Runs one blocking cancel and reports its outcome and every status it went through */
export const runCancel = Effect.fnUntraced(function*(info: CancelConnection.SessionInfo) {
  const connection = yield* CancelConnectionModule.make(info)
  const statuses: Array<string> = []
  const watching = yield* Deferred.make<void>()
  const terminal = yield* Deferred.make<void>()
  yield* connection.changes.pipe(
    Stream.runForEach((t) =>
      Effect.andThen(
        Deferred.succeed(watching, undefined),
        Effect.suspend(() => {
          statuses.push(t.status)
          return t.status === "OK" || t.status === "BAD" ? Deferred.succeed(terminal, undefined) : Effect.void
        })
      )
    ),
    Effect.forkScoped
  )
  yield* Deferred.await(watching)
  const exit = yield* Effect.exit(connection.blocking())
  // the watcher may see the final transition just after blocking returns: wait for it (bounded)
  yield* Deferred.await(terminal).pipe(Effect.timeoutOption("5 seconds"))
  const error = Exit.isFailure(exit) ? Option.getOrUndefined(Exit.findErrorOption(exit)) : undefined
  return { ok: Exit.isSuccess(exit), error: error?.message, errorTag: error?._tag, statuses, connection }
}, Effect.scoped)

/** Starts a sleeping query on a fresh session (TLS by SSLRequest unless `tls` says otherwise) and cancels it with
 * the given conninfo keywords */
export const cancelWith = (
  extra: (cluster: EmbeddedPostgres.Cluster) => Record<string, string>,
  sessionOptions: Partial<TestSession.ConnectOptions> = { tls: "sslrequest" }
) =>
  Effect.gen(function*() {
    const cluster = yield* EmbeddedPostgres.EmbeddedPostgres
    const session = yield* TestSession.connectTo(cluster, sessionOptions)
    const monitor = yield* TestSession.connectTo(cluster, { transport: "unix" })
    const info = yield* sessionInfo(session, conninfo(cluster, "tcp", extra(cluster)))
    const pending = yield* sleepingQuery(session, monitor)
    const outcome = yield* runCancel(info)
    return { ...outcome, pending, session, monitor, cluster }
  }).pipe(Effect.provide(NodeTransport.layer))

/** The fiber ended by interruption and nothing else (the caller of an interrupted query sees no error) */
export const interruptedOnly = (exit: Exit.Exit<unknown, unknown>): boolean =>
  Exit.isFailure(exit) && Cause.hasInterruptsOnly(exit.cause)

/** The pid of the backend of `app` (its application_name) that sleeps in pg_sleep, once there is one */
export const sleepingPid = Effect.fnUntraced(function*(monitor: TestSession.TestSession, app: string) {
  const sql = `SELECT pid FROM pg_stat_activity WHERE application_name = '${app}' AND wait_event = 'PgSleep'`
  // the pid the probe saw: a second query could find the statement already ended (the test's interrupt may fire
  // in between on a loaded machine)
  let pid: string | null | undefined
  yield* TestSession.waitUntil(monitor, sql, (value) => {
    pid = value
    return value !== null && value !== undefined
  }, {
    timeout: "20 seconds",
    description: `a backend of ${app} in pg_sleep`
  })
  return Number(pid)
})

/**
 * Forks `SELECT pg_sleep(60)` through the postgres.js adapter. `driverErrorCode` is the SQLSTATE postgres.js's own
 * query promise was rejected with (`57014` when the server cancelled it: the caller only sees an interruption).
 */
export const forkPostgresJsSleep = Effect.fnUntraced(function*(sql: postgres.Sql<{}>) {
  let captured: Promise<unknown> | undefined
  const fiber = yield* PostgresJsAdapter.query(sql, (sql) => {
    const q = sql`SELECT pg_sleep(60)`
    captured = q.catch((error: unknown) => error)
    return q
  }).pipe(Effect.forkChild)
  const driverErrorCode = Effect.promise(() => captured!).pipe(
    Effect.map((error) => (error as { readonly code?: string } | undefined)?.code)
  )
  return { fiber, driverErrorCode }
})

/** postgres.js options for plaintext TCP to the cluster, its backends named `app` in pg_stat_activity */
export const postgresJsPlain = (c: EmbeddedPostgres.Cluster, app: string): PostgresJsAdapter.Options => ({
  host: "127.0.0.1",
  port: c.port,
  user: "postgres",
  database: "postgres",
  onnotice: () => {},
  connection: { application_name: app }
})

/**
 * Why a suite behind PgBouncer cannot run here (no pgbouncer: see .ci/run), said once in the test output; `undefined`
 * when it can. Use with `describe.skipIf`.
 */
export const pgBouncerUnavailable = (suite: string): string | undefined => {
  const reason = PgBouncer.unavailableReason()
  if (reason !== undefined) {
    // oxlint-disable-next-line effecttsgo/no-console -- say once, in the test output, why the suite is skipped
    console.warn(`${suite} tests skipped: ${reason}`)
  }
  return reason
}

/** A markdown table as rows of trimmed cells (dprint pads the cells and the separator row of a guide's tables) */
export const tableCells = (table: string): Array<string> =>
  table.trim().split("\n").map((line) => line.replace(/\s*\|\s*/g, "|").replace(/-{3,}/g, "---"))

/** The table between `<!-- name:start -->` and `<!-- name:end -->` in a guide under docs/, as {@link tableCells} */
export const guideTable = (guide: string, name: string): Array<string> => {
  const text = Fs.readFileSync(new URL(`../../../docs/${guide}`, import.meta.url), "utf8")
  const start = text.indexOf(`<!-- ${name}:start -->`)
  const end = text.indexOf(`<!-- ${name}:end -->`)
  assert.isTrue(start !== -1 && end > start, `docs/${guide} has the ${name} markers`)
  return tableCells(text.slice(start + `<!-- ${name}:start -->`.length, end))
}

/** the version in the package.json of an installed postgres.js (`postgres`, or an alias such as `postgres4`) */
const versionOf = (specifier: string): string => {
  let dir = Path.dirname(createRequire(import.meta.url).resolve(specifier))
  for (;;) {
    const file = Path.join(dir, "package.json")
    if (Fs.existsSync(file)) {
      const pkg = JSON.parse(Fs.readFileSync(file, "utf8")) as { readonly name?: string; readonly version: string }
      if (pkg.name === "postgres") return pkg.version
    }
    dir = Path.dirname(dir)
  }
}

const postgresJsDriver = (specifier: string, postgresFunction: unknown) => {
  const version = versionOf(specifier)
  return {
    name: `postgres.js ${version}`,
    major: version.startsWith("3.") ? 3 as const : 4 as const,
    driver: PostgresJsAdapter.driver(postgresFunction, version)
  }
}

/**
 * The postgres.js versions the adapter suites run against: 3.4 (the `postgres` dev dependency), 4.1 and 4.2 (under
 * the aliases `postgres41` and `postgres4`: 4.2 exposes the connection's queues, 4.1 does not). Each version once
 * (`pnpm check:latest` moves `postgres` to the newest release, which an alias may hold too).
 */
export const postgresJsDrivers: ReadonlyArray<{
  readonly name: string
  readonly major: 3 | 4
  readonly driver: PostgresJsAdapter.Driver
}> = [
  postgresJsDriver("postgres", postgres),
  postgresJsDriver("postgres41", postgres41),
  postgresJsDriver("postgres4", postgres4)
].filter((entry, i, all) => all.findIndex((other) => other.name === entry.name) === i)

/** `PostgresJsAdapter.make` with the driver given */
export const makeWith = (driver: PostgresJsAdapter.Driver) => {
  function make(url: string, options?: PostgresJsAdapter.Options): ReturnType<typeof PostgresJsAdapter.make>
  function make(options: PostgresJsAdapter.Options): ReturnType<typeof PostgresJsAdapter.make>
  function make(urlOrOptions: string | PostgresJsAdapter.Options, options?: PostgresJsAdapter.Options) {
    return typeof urlOrOptions === "string"
      ? PostgresJsAdapter.make(urlOrOptions, { ...options, driver })
      : PostgresJsAdapter.make({ ...urlOrOptions, driver })
  }
  return make
}

/**
 * Options that turn postgres.js's pipelining off (a second query waits in the pool, not written): `max_pipeline: 0`
 * for postgres.js 3 (its limit is on the queries behind the current one), `1` for postgres.js 4 (its limit is on
 * the queries a connection has)
 */
export const noPipelining = (major: 3 | 4): PostgresJsAdapter.Options =>
  ({ max_pipeline: major === 3 ? 0 : 1 }) as PostgresJsAdapter.Options

/** How many sessions the adapters retired in this run's MetricRegistry (`pqcancel.sessions.retired`) */
export const retiredCount = Effect.map(
  Metric.snapshot,
  (snapshots) =>
    snapshots.reduce(
      (n, s) => s.id === "pqcancel.sessions.retired" && s.type === "Counter" ? n + Number(s.state.count) : n,
      0
    )
)

/**
 * A FaultProxy in front of the cluster: on a TCP port, or (`unix`) on `<dir>/.s.PGSQL.<port>` in a directory of its
 * own (removed with the Scope) in front of the cluster's socket
 */
export const faultProxyFor = Effect.fnUntraced(function*(cluster: EmbeddedPostgres.Cluster, route: string) {
  if (route !== "unix") return { proxy: yield* FaultProxy.make({ upstream: { port: cluster.port } }), dir: "" }
  const dir = yield* Effect.acquireRelease(
    Effect.sync(() => Fs.mkdtempSync(Path.join(Os.tmpdir(), "pqcancel-faults-"))),
    (dir) => Effect.sync(() => Fs.rmSync(dir, { recursive: true, force: true }))
  )
  const proxy = yield* FaultProxy.make({
    upstream: { path: cluster.socketPath },
    listen: { path: Path.join(dir, `.s.PGSQL.${cluster.port}`) }
  })
  return { proxy, dir }
})
