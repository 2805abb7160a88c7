/**
 * Every core cancel path under every fault of docs/reliability.md's table (faultTable.ts): a FaultProxy in front of
 * PostgreSQL 18 plays the fault on the cancel connection or the session, over plaintext TCP, TLS verify-full (by
 * SSLRequest and direct) and a unix socket. One cancel (`blocking`, the poll loop, `cancelAll`, the legacy
 * `PQcancel`) must report the row's typed error and libpq's text; an interrupted statement (`cancelOnInterrupt`) must
 * end within the row's bound with the connection kept or retired as the row says, the next statement must not be
 * cancelled, and no connection may be left open.
 */
import { assert, layer } from "@effect/vitest"
import { CancelConnection, CancelKey, CancelOnInterrupt, ConnectionOptions, LegacyCancel } from "@pqcancel/core"
import { NodeTransport } from "@pqcancel/node"
import type { FaultProxy } from "@pqcancel/test-utils"
import { EmbeddedPostgres, TestSession } from "@pqcancel/test-utils"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Option from "effect/Option"
import * as Result from "effect/Result"
import * as Fs from "node:fs"
import { on, renderMarkdown, rows } from "./faultTable.ts"
import type { FaultRow, Outcome, Route } from "./faultTable.ts"
import { faultProxyFor, guideTable, tableCells } from "./fixtures.ts"

const CANCEL_TIMEOUT_MS = 1000
const DRAIN_TIMEOUT_MS = 1000
/** what a loaded 2-core machine may add to a bound: scheduling, not the cancel */
const SLACK_MS = 1500
const ROUTES: ReadonlyArray<Route> = ["tcp", "tls", "direct", "unix"]
const PRINT = process.env["PQCANCEL_FAULTS_PRINT"] === "1"

/** libpq's text without the `connection to server … failed: ` prefix (it names the port or socket) */
const tail = (text: string) =>
  text.replace(/^connection to server (at "[^"]*", port \d+|on socket "[^"]*") failed: /, "").replace(/\n$/, "")

const outcomeOf = (exit: Exit.Exit<unknown, { readonly _tag: string; readonly message: string }>): Outcome => {
  if (Exit.isSuccess(exit)) return { _tag: "ok" }
  const error = Option.getOrUndefined(Exit.findErrorOption(exit))
  if (error === undefined) return { _tag: "CancelFailed", transient: false, text: "defect" }
  return {
    _tag: error._tag as "CancelFailed" | "CancelTimeout",
    transient: error._tag === "CancelTimeout" || (error as { transient?: boolean }).transient === true,
    text: tail(error.message)
  }
}

/** The cancel's conninfo for a route, through the proxy */
const conninfoFor = (cluster: EmbeddedPostgres.Cluster, route: Route, proxy: FaultProxy.FaultProxy, dir: string) => {
  const tls =
    `host=localhost hostaddr=127.0.0.1 port=${proxy.port} sslmode=verify-full sslrootcert=${cluster.caCertPath}`
  switch (route) {
    case "tcp":
      return `host=127.0.0.1 port=${proxy.port} sslmode=disable`
    case "tls":
      return tls
    case "direct":
      return `${tls} sslnegotiation=direct`
    case "unix":
      return `host=${dir} port=${cluster.port}`
  }
}

const sessionInfo = Effect.fnUntraced(function*(
  cluster: EmbeddedPostgres.Cluster,
  route: Route,
  routed: { readonly proxy: FaultProxy.FaultProxy; readonly dir: string },
  key: TestSession.BackendKey
) {
  const options = yield* ConnectionOptions.fromString(
    `${conninfoFor(cluster, route, routed.proxy, routed.dir)} gssencmode=disable connect_timeout=10`,
    {}
  )
  const info: CancelConnection.SessionInfo = {
    options,
    host: options.hosts[0]!,
    address: route === "unix"
      ? { _tag: "Unix", path: routed.proxy.path! }
      : { _tag: "Tcp", address: "127.0.0.1", port: routed.proxy.port, family: 4 },
    key: CancelKey.unsafeMake(key)
  }
  return info
})

const appliesTo = (row: FaultRow, route: Route) => (row.routes ?? ROUTES).includes(route)
const cancelSide = (row: FaultRow) =>
  row.cancel !== undefined || row.refuse === true || row.session === undefined &&
    row.stall !== true

// each path its own proxy: the row's fault counts cancel connections from 0
const armed = Effect.fnUntraced(function*(
  cluster: EmbeddedPostgres.Cluster,
  route: Route,
  row: FaultRow,
  key: TestSession.BackendKey
) {
  const routed = yield* faultProxyFor(cluster, route)
  routed.proxy.setRule((c) => row.cancel?.(c.index))
  if (row.refuse === true) yield* routed.proxy.refuse
  return { ...routed, info: yield* sessionInfo(cluster, route, routed, key) }
})

const cancelTimeoutOf = (row: FaultRow) => row.cancelTimeoutMs ?? CANCEL_TIMEOUT_MS

/** What each path of one cancel must report on a route, from the row */
const expectedOnce = (row: FaultRow, route: Route) => {
  const once = on(row.once, route)
  const legacy = route === "tcp" || route === "unix"
    ? row.legacy === undefined
      ? once._tag === "ok" ? { ok: true } : { ok: false, text: once.text }
      : on(row.legacy, route)
    : undefined
  return {
    once,
    // the poll loop has no timeout of its own (as libpq's): a cancel that times out never ends there
    poll: once._tag === "ok" ? "OK" : once._tag === "CancelTimeout" ? "no end" : once.text,
    cancelAll: [once, once],
    legacy,
    closed: true
  }
}

/** What an interrupted statement must do on a route, from the row */
const expectedInterrupt = (row: FaultRow, route: Route) => {
  const expected = on(row.interrupt, route)
  return {
    withinBound: true,
    connection: expected.connection,
    reason: expected.reason,
    next: expected.connection === "kept" ? "42" : undefined,
    closed: true
  }
}

/** One cancel by each path (each through its own proxy, in parallel) against the row's outcome on one route */
const oneCancel = Effect.fnUntraced(function*(
  cluster: EmbeddedPostgres.Cluster,
  row: FaultRow,
  route: Route,
  key: TestSession.BackendKey
) {
  const timeout = Duration.millis(cancelTimeoutOf(row))
  const blocking = yield* armed(cluster, route, row, key)
  const polled = yield* armed(cluster, route, row, key)
  const all = yield* armed(cluster, route, row, key)
  const second = yield* armed(cluster, route, row, key)
  const legacyRoute = route === "tcp" || route === "unix" ? yield* armed(cluster, route, row, key) : undefined
  const blockingRun = Effect.scoped(Effect.flatMap(
    CancelConnection.make(blocking.info),
    (connection) => Effect.exit(connection.blocking({ timeout }))
  ))
  const pollRun = Effect.scoped(Effect.gen(function*() {
    const connection = yield* CancelConnection.make(polled.info)
    yield* connection.start.pipe(Effect.ignore)
    const end = yield* connection.poll.pipe(
      Effect.repeat({ until: (p) => p === "OK" || p === "FAILED" }),
      Effect.timeoutOption(timeout)
    )
    if (Option.isNone(end)) return "no end"
    return end.value === "OK" ? "OK" : tail(yield* connection.errorMessage)
  }))

  const [blockingOutcome, pollOutcome, allOutcomes, legacy] = yield* Effect.all([
    blockingRun,
    pollRun,
    CancelConnection.cancelAll([all.info, second.info], { timeout }),
    legacyRoute === undefined ? Effect.void : LegacyCancel.requestCancel(legacyRoute.info, { timeout })
  ], { concurrency: "unbounded" })

  const settled = yield* Effect.forEach([blocking, polled, all, second], (routed) => routed.proxy.settled(0))
  return {
    once: outcomeOf(blockingOutcome),
    poll: pollOutcome,
    cancelAll: allOutcomes.map((r) => outcomeOf(Result.isSuccess(r) ? Exit.void : Exit.fail(r.failure))),
    legacy: legacy === undefined ? undefined : legacy.ok ? { ok: true } : { ok: false, text: tail(legacy.error) },
    // every cancel connection was closed
    closed: settled.every(Boolean)
  }
}, Effect.scoped)

/** An interrupted `pg_sleep` through the proxy (the session too) against the row's bound and kept/retired */
const interruptOne = Effect.fnUntraced(function*(
  cluster: EmbeddedPostgres.Cluster,
  monitor: TestSession.TestSession,
  row: FaultRow,
  route: Route
) {
  const routed = yield* faultProxyFor(cluster, route)
  // connection 0 is the session; the cancels come after it
  routed.proxy.setRule((c) => c.index === 0 ? row.session : row.cancel?.(c.index - 1))
  const session = yield* TestSession.connect(
    route === "unix"
      ? { transport: "unix", port: cluster.port, socketPath: routed.proxy.path! }
      : {
        transport: "tcp",
        port: routed.proxy.port,
        tls: route === "tcp" ? "disable" : route === "direct" ? "direct" : "sslrequest",
        ...(route === "tcp" ? {} : { ca: Fs.readFileSync(cluster.caCertPath, "utf8") })
      }
  )
  const info = yield* sessionInfo(cluster, route, routed, session.backendKey)
  const pending = yield* session.startQuery("SELECT pg_sleep(10)")
  // a retired session's backend may still sleep (its statement was never cancelled): free its slot at the end
  yield* Effect.addFinalizer(() =>
    Effect.ignore(monitor.query(`SELECT pg_terminate_backend(${session.backendKey.pid})`))
  )
  yield* TestSession.waitUntilSleeping(monitor, session.backendKey.pid)
  if (row.stall === true) routed.proxy.stall((r) => r.index === 0)
  if (row.refuse === true) yield* routed.proxy.refuse

  const reasons: Array<string> = []
  const running = yield* Deferred.make<void>()
  const query = Deferred.succeed(running, undefined).pipe(
    Effect.andThen(pending.result),
    Effect.flatMap((result) => result._tag === "Error" ? Effect.fail(result) : Effect.succeed(result))
  )
  const fiber = yield* CancelOnInterrupt.cancelOnInterrupt(query, {
    session: info,
    cancelTimeout: Duration.millis(cancelTimeoutOf(row)),
    drainTimeout: `${DRAIN_TIMEOUT_MS} millis`,
    isCanceled: (exit) =>
      Exit.isFailure(exit) &&
      (Option.getOrUndefined(Exit.findErrorOption(exit)) as { sqlstate?: string } | undefined)?.sqlstate ===
        "57014",
    onUnsafe: (reason) =>
      Effect.sync(() => {
        reasons.push(
          reason._tag === "CancelNotConfirmed" ? `${reason._tag}: ${reason.error._tag}` : reason._tag
        )
      })
  }).pipe(Effect.forkChild)
  yield* Deferred.await(running)
  const started = Date.now()
  yield* Fiber.interrupt(fiber)
  const elapsed = Date.now() - started
  const expected = on(row.interrupt, route)
  const bound = expected.bound === "cancelTimeout" ? cancelTimeoutOf(row) : cancelTimeoutOf(row) + DRAIN_TIMEOUT_MS
  // a kept session runs the next statement, not cancelled
  const next = reasons.length === 0 ? yield* session.query("SELECT 42") : undefined
  if (reasons.length > 0) yield* session.close
  const observed = {
    withinBound: elapsed < bound + SLACK_MS,
    connection: reasons.length === 0 ? "kept" : "retired",
    reason: reasons.length === 0 ? undefined : reasons.join(", "),
    next: next === undefined ? undefined : next._tag === "Ok" ? next.rows[0]?.[0] : next,
    // every cancel connection was closed
    closed: yield* routed.proxy.settled(1)
  }
  if (PRINT) console.log(JSON.stringify({ interrupt: row.id, route, elapsed, ...observed }))
  return observed
}, Effect.scoped)

layer(EmbeddedPostgres.layer18, { excludeTestServices: true, timeout: "60 seconds" })("fault matrix", (it) => {
  it.effect("docs/reliability.md's table is faultTable.ts's", () =>
    Effect.sync(() => {
      assert.deepStrictEqual(guideTable("reliability.md", "fault-table"), tableCells(renderMarkdown()))
    }))

  for (const row of rows.filter(cancelSide)) {
    const routes = ROUTES.filter((r) => appliesTo(row, r))
    it.effect(`one cancel: ${row.id} (${routes.join(", ")}): blocking, the poll loop, cancelAll and PQcancel`, () =>
      Effect.gen(function*() {
        const cluster = yield* EmbeddedPostgres.EmbeddedPostgres
        const session = yield* TestSession.connectTo(cluster, { transport: "unix" })
        const observed = yield* Effect.forEach(routes, (route) => oneCancel(cluster, row, route, session.backendKey), {
          concurrency: "unbounded"
        })
        if (PRINT) {
          console.log(
            JSON.stringify({ row: row.id, observed: Object.fromEntries(routes.map((r, i) => [r, observed[i]])) })
          )
        }
        assert.deepStrictEqual(
          Object.fromEntries(routes.map((route, i) => [route, observed[i]])),
          Object.fromEntries(routes.map((route) => [route, expectedOnce(row, route)]))
        )
      }).pipe(Effect.provide(NodeTransport.layer)))
  }

  for (const row of rows) {
    const routes = ROUTES.filter((r) => appliesTo(row, r))
    it.effect(`interrupt: ${row.id} (${routes.join(", ")}): within its bound, kept or retired`, () =>
      Effect.gen(function*() {
        const cluster = yield* EmbeddedPostgres.EmbeddedPostgres
        const monitor = yield* TestSession.connectTo(cluster, { transport: "unix" })
        const observed = yield* Effect.forEach(routes, (route) => interruptOne(cluster, monitor, row, route), {
          concurrency: "unbounded"
        })
        assert.deepStrictEqual(
          Object.fromEntries(routes.map((route, i) => [route, observed[i]])),
          Object.fromEntries(routes.map((route) => [route, expectedInterrupt(row, route)]))
        )
      }).pipe(Effect.provide(NodeTransport.layer)))
  }
})
