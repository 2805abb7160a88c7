/**
 * Every adapter under every fault of docs/reliability.md's table (faultTable.ts): node-postgres's Client
 * (`PgAdapter`), postgres.js (`PostgresJsAdapter`) and `@effect/sql-pg` (`SqlPgAdapter`), each through a FaultProxy
 * in front of PostgreSQL 18 over plaintext TCP, TLS verify-full (postgres.js: also direct) and a unix socket. An interrupted `pg_sleep` must end
 * within the row's bound, the connection must be kept or retired as the row says (read from the
 * `pqcancel.sessions.retired` metric, with its reason), a kept connection runs the next statement uncancelled, and
 * every cancel connection is closed. The core paths under the same faults: FaultMatrix.test.ts.
 */
import * as PgClient from "@effect/sql-pg/PgClient"
import { assert, layer } from "@effect/vitest"
import { NodeTransport } from "@pqcancel/node"
import * as PgAdapter from "@pqcancel/node/PgAdapter"
import * as PostgresJsAdapter from "@pqcancel/node/PostgresJsAdapter"
import * as SqlPgAdapter from "@pqcancel/node/SqlPgAdapter"
import { EmbeddedPostgres, FaultProxy, TestSession } from "@pqcancel/test-utils"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import type * as Scope from "effect/Scope"
import * as Fs from "node:fs"
import * as Path from "node:path"
import { interruptFor, renderExceptions, rows } from "./faultTable.ts"
import type { FaultRow, Route } from "./faultTable.ts"
import { faultProxyFor, guideTable, sleepingPid, tableCells } from "./fixtures.ts"

const CANCEL_TIMEOUT_MS = 1000
const DRAIN_TIMEOUT_MS = 1000
/** what a loaded 2-core machine may add to a bound: scheduling, not the cancel */
const SLACK_MS = 1500

/** How a driver's session reaches the proxy */
interface Endpoint {
  readonly route: Route
  readonly cluster: EmbeddedPostgres.Cluster
  readonly proxy: FaultProxy.FaultProxy
  /** the directory of the proxy's unix socket (route unix) */
  readonly dir: string
  readonly ca: string
  /** the application_name of the session, to find its backend */
  readonly app: string
  readonly cancelTimeoutMs: number
}

/** One adapter: opens a session through the proxy; the statement to interrupt and the next one */
interface Adapter {
  readonly name: string
  readonly routes: ReadonlyArray<Route>
  /** the session (a failure to open it is a defect), the statement to interrupt, and the next one's value */
  readonly open: (endpoint: Endpoint) => Effect.Effect<
    { readonly sleep: Effect.Effect<void>; readonly next: Effect.Effect<string> },
    never,
    Scope.Scope
  >
}

const bounds = (e: Endpoint): { readonly cancelTimeout: Duration.Input; readonly drainTimeout: Duration.Input } => ({
  cancelTimeout: Duration.millis(e.cancelTimeoutMs),
  drainTimeout: Duration.millis(DRAIN_TIMEOUT_MS)
})

const adapters: ReadonlyArray<Adapter> = [
  {
    name: "node-postgres Client",
    routes: ["tcp", "tls", "unix"],
    open: (e) =>
      Effect.gen(function*() {
        const client = yield* PgAdapter.connect({
          ...(e.route === "unix"
            ? { host: e.dir, port: e.cluster.port }
            : { host: e.route === "tls" ? "localhost" : "127.0.0.1", port: e.proxy.port }),
          ...(e.route === "tls" ? { ssl: { ca: e.ca, servername: "localhost" } } : {}),
          user: "postgres",
          application_name: e.app
        })
        const run = (text: string) =>
          PgAdapter.query(client, undefined, text, [], bounds(e)).pipe(Effect.provide(NodeTransport.layer))
        return {
          sleep: Effect.ignore(run("SELECT pg_sleep(10)")),
          next: Effect.map(run("SELECT 42 AS n"), (r) => String(r.rows[0]?.["n"])).pipe(
            Effect.orElseSucceed(() => "failed")
          )
        }
      }).pipe(Effect.orDie)
  },
  {
    name: "postgres.js",
    routes: ["tcp", "tls", "direct", "unix"],
    open: (e) =>
      Effect.gen(function*() {
        const tls = e.route === "tls" || e.route === "direct"
        const sql = yield* PostgresJsAdapter.make({
          ...(e.route === "unix"
            ? { path: Path.join(e.dir, `.s.PGSQL.${e.cluster.port}`) }
            : { host: tls ? "localhost" : "127.0.0.1", port: e.proxy.port }),
          ...(tls ? { ssl: { ca: e.ca } } : {}),
          // postgres.js's direct TLS (its types do not name the option)
          ...(e.route === "direct" ? { sslnegotiation: "direct" } as {} : {}),
          user: "postgres",
          database: "postgres",
          max: 1,
          onnotice: () => {},
          connection: { application_name: e.app },
          cancel: bounds(e)
        })
        return {
          sleep: PostgresJsAdapter.query(sql, (s) => s`SELECT pg_sleep(10)`).pipe(
            Effect.ignore,
            Effect.provide(NodeTransport.layer)
          ),
          next: PostgresJsAdapter.query(sql, (s) => s`SELECT 42 AS n`).pipe(
            Effect.map((r) => String(r[0]?.["n"])),
            Effect.orElseSucceed(() => "failed"),
            Effect.provide(NodeTransport.layer)
          )
        }
      }).pipe(Effect.orDie)
  },
  {
    name: "@effect/sql-pg",
    routes: ["tcp", "tls", "unix"],
    open: (e) =>
      Effect.gen(function*() {
        const context = yield* Layer.build(
          SqlPgAdapter.layer({
            ...(e.route === "unix"
              ? { host: e.dir, port: e.cluster.port }
              : { host: e.route === "tls" ? "localhost" : "127.0.0.1", port: e.proxy.port }),
            ...(e.route === "tls" ? { ssl: { ca: e.ca } } : {}),
            username: "postgres",
            applicationName: e.app,
            maxConnections: 1
          }, bounds(e)).pipe(Layer.provide(NodeTransport.layer))
        )
        const sql = Context.get(context, PgClient.PgClient)
        return {
          sleep: Effect.ignore(sql`SELECT pg_sleep(10)`),
          next: Effect.map(sql<{ n: number }>`SELECT 42 AS n`, (r) => String(r[0]?.n)).pipe(
            Effect.orElseSucceed(() => "failed")
          )
        }
      }).pipe(Effect.orDie)
  }
]

/** The sessions the adapters retired so far, by reason (`pqcancel.sessions.retired`) */
const retiredReasons = Effect.map(
  Metric.snapshot,
  (snapshots) =>
    snapshots.flatMap((s) =>
      s.id === "pqcancel.sessions.retired" && s.type === "Counter" && Number(s.state.count) > 0
        ? [String(s.attributes?.["reason"])]
        : []
    )
)

const metricReason = (reason: string | undefined) =>
  reason === undefined
    ? undefined
    : reason.startsWith("CancelNotConfirmed")
    ? "cancel_not_confirmed"
    : "query_did_not_end"

let apps = 0

/** An error's message and its causes' */
const causes = (error: unknown): string => error instanceof Error ? `${error.message} ${causes(error.cause)}` : ""

const interruptOne = Effect.fnUntraced(function*(
  cluster: EmbeddedPostgres.Cluster,
  monitor: TestSession.TestSession,
  adapter: Adapter,
  row: FaultRow,
  route: Route
) {
  const { proxy, dir } = yield* faultProxyFor(cluster, route)
  const cancelTimeoutMs = row.cancelTimeoutMs ?? CANCEL_TIMEOUT_MS
  // connection 0 is the session (one per pool); the cancels come after it
  // the sessions (a pool may open more than one, and close some) are the connections made before the statement
  // sleeps; the cancels come after
  proxy.setRule(() => row.session)
  const app = `faults-${route}-${++apps}`
  const endpoint = { route, cluster, proxy, dir, ca: Fs.readFileSync(cluster.caCertPath, "utf8"), app, cancelTimeoutMs }
  // a registry of its own: the retired count is this run's only
  return yield* Effect.gen(function*() {
    const session = yield* adapter.open(endpoint)
    const fiber = yield* Effect.forkChild(session.sleep)
    yield* sleepingPid(monitor, app)
    const sessions = proxy.records().length
    proxy.setRule((c) => row.cancel?.(c.index - sessions))
    if (row.stall === true) proxy.stall((r) => r.index < sessions)
    if (row.refuse === true) yield* proxy.refuse
    const started = Date.now()
    yield* Fiber.interrupt(fiber)
    const elapsed = Date.now() - started
    const reasons = yield* retiredReasons
    const expected = interruptFor(row, adapter.name, route)
    const bound = expected.bound === "cancelTimeout" ? cancelTimeoutMs : cancelTimeoutMs + DRAIN_TIMEOUT_MS
    const next = reasons.length === 0 ? yield* session.next : undefined
    return {
      // the session's first packet: the route was the one asked for
      session: proxy.records()[sessions - 1]?.first as string | undefined,
      withinBound: elapsed < bound + SLACK_MS,
      connection: reasons.length === 0 ? "kept" : "retired",
      reason: reasons.length === 0 ? undefined : reasons.join(", "),
      next,
      // every cancel connection was closed
      closed: yield* proxy.settled(sessions)
    }
  }).pipe(
    Effect.provideService(Metric.MetricRegistry, new Map()),
    // a retired session's backend may still sleep (its statement was never cancelled): free its slot now
    Effect.ensuring(
      Effect.ignore(
        monitor.query(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '${app}'`)
      )
    )
  )
}, Effect.scoped)

const expectedOf = (row: FaultRow, adapter: Adapter, route: Route) => {
  const expected = interruptFor(row, adapter.name, route)
  return {
    session: route === "direct" ? "TLS" : route === "tls" ? "SSLRequest" : "StartupMessage",
    withinBound: true,
    connection: expected.connection,
    reason: metricReason(expected.reason),
    next: expected.connection === "kept" ? "42" : undefined,
    closed: true
  }
}

// three routes per test, five tests at a time, sessions whose statement a fault kept running: more than the default
// 40 connections
layer(EmbeddedPostgres.layer({ version: 18, maxConnections: 120 }), {
  excludeTestServices: true,
  timeout: "60 seconds"
})("adapters under faults", (it) => {
  it.effect("docs/reliability.md's adapter exceptions are faultTable.ts's", () =>
    Effect.sync(() => {
      assert.deepStrictEqual(guideTable("reliability.md", "adapter-exceptions"), tableCells(renderExceptions()))
    }))

  for (const adapter of adapters) {
    for (const row of rows) {
      const routes = adapter.routes.filter((r) => (row.routes ?? adapter.routes).includes(r))
      if (routes.length === 0) continue
      it.effect(`${adapter.name}: ${row.id} (${routes.join(", ")})`, () =>
        Effect.gen(function*() {
          const cluster = yield* EmbeddedPostgres.EmbeddedPostgres
          const monitor = yield* TestSession.connectTo(cluster, { transport: "unix" })
          const observed = yield* Effect.forEach(
            routes,
            (route) => interruptOne(cluster, monitor, adapter, row, route),
            {
              concurrency: "unbounded"
            }
          )
          assert.deepStrictEqual(
            Object.fromEntries(routes.map((route, i) => [route, observed[i]])),
            Object.fromEntries(routes.map((route) => [route, expectedOf(row, adapter, route)]))
          )
        }))
    }
  }

  // docs/reliability.md, "@effect/sql-pg after a retire while the port refuses": no stale ECONNREFUSED, bare or not
  for (const bare of [true, false]) {
    it.effect(
      `${
        bare ? "bare PgClient" : "SqlPgAdapter"
      }: connection lost while the port refuses, ECONNREFUSED; back, the next statement runs`,
      () =>
        Effect.gen(function*() {
          const cluster = yield* EmbeddedPostgres.EmbeddedPostgres
          const monitor = yield* TestSession.connectTo(cluster, { transport: "unix" })
          const proxy = yield* FaultProxy.make({ upstream: { port: cluster.port } })
          const app = `refused-${bare ? "bare" : "adapter"}`
          const config = {
            host: "127.0.0.1",
            port: proxy.port,
            username: "postgres",
            maxConnections: 1,
            applicationName: app
          }
          const context = yield* Layer.build(
            bare ? PgClient.layer(config) : SqlPgAdapter.layer(config, {
              cancelTimeout: Duration.millis(500),
              drainTimeout: Duration.millis(500)
            }).pipe(Layer.provide(NodeTransport.layer))
          )
          const sql = Context.get(context, PgClient.PgClient)
          const fiber = yield* Effect.forkChild(sql`SELECT pg_sleep(10)`)
          const pid = yield* sleepingPid(monitor, app)
          yield* proxy.refuse
          if (bare) {
            // the server ends the session: sql-pg's pool loses its connection while the port refuses
            yield* monitor.query(`SELECT pg_terminate_backend(${pid})`)
            yield* Fiber.await(fiber)
          } else {
            // the cancel is refused: the adapter retires the connection while the port refuses
            yield* Fiber.interrupt(fiber)
          }
          const refused = yield* Effect.flip(sql`SELECT 1 AS n`)
          assert.include(causes(refused), "ECONNREFUSED")
          yield* proxy.accept
          assert.deepStrictEqual(yield* sql<{ n: number }>`SELECT 2 AS n`, [{ n: 2 }])
        }).pipe(Effect.orDie)
    )
  }
})
