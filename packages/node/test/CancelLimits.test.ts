/**
 * A cancel still works when max_connections is reached; a cancel with a wrong pid or key is "sent" with no effect;
 * no socket or timer outlives the Scope of a cancel.
 */
import { assert, layer } from "@effect/vitest"
import { CancelConnection, CancelKey } from "@pqcancel/core"
import { NodeTransport } from "@pqcancel/node"
import { EmbeddedPostgres, TestSession } from "@pqcancel/test-utils"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Logger from "effect/Logger"
import * as Redacted from "effect/Redacted"
import * as Schedule from "effect/Schedule"
import * as Stream from "effect/Stream"
import * as Tracer from "effect/Tracer"
import * as Util from "node:util"
import { assertCancelled, assertStillSleeping, conninfo, sessionInfo, sleepingQuery } from "./fixtures.ts"

const cluster = EmbeddedPostgres.layer({
  version: 18,
  maxConnections: 4,
  settings: { superuser_reserved_connections: "0", reserved_connections: "0" }
})

// max_connections is 4: the previous test's backends exit asynchronously after its sessions closed, so a test's
// first connections wait (bounded) until the server has a free slot again (53300 too_many_connections)
const connect = (pg: EmbeddedPostgres.Cluster, options: Parameters<typeof TestSession.connectTo>[1]) =>
  TestSession.connectTo(pg, options).pipe(
    Effect.retry({
      while: (error) => error._tag === "StartupRejected" && error.sqlstate === "53300",
      times: 250,
      schedule: Schedule.spaced("20 millis")
    })
  )

// handles that can leak: sockets, TLS sessions, timers
const openHandles = () =>
  process.getActiveResourcesInfo().filter((r) =>
    r === "TCPSocketWrap" || r === "TLSWrap" || r === "PipeWrap" || r === "Timeout"
  )
    .length

// let Node finish closing what the Scopes destroyed (a TLS session the server did not close is destroyed one I/O
// turn later, after the handshake's last flight): wait, turn by turn (bounded), until the count is back
const handlesSettled = (before: number) =>
  Effect.promise(async () => {
    for (let turn = 0; turn < 100 && openHandles() > before; turn++) {
      await new Promise<void>((resolve) => setImmediate(resolve))
    }
  })

layer(cluster, { excludeTestServices: true, concurrent: false, timeout: "60 seconds" })("limits", (it) => {
  it.effect("a cancel works when max_connections is reached", () =>
    Effect.gen(function*() {
      const pg = yield* EmbeddedPostgres.EmbeddedPostgres
      const session = yield* connect(pg, {})
      const monitor = yield* connect(pg, { transport: "unix" })
      const fillers = yield* Effect.all([connect(pg, {}), connect(pg, {})])
      // the server is full now: a fifth session is refused with 53300
      const refused = yield* Effect.flip(TestSession.connectTo(pg, {}))
      assert.include(refused.message, "too many clients")
      const info = yield* sessionInfo(session, conninfo(pg, "tcp", { sslmode: "prefer", sslrootcert: pg.caCertPath }))
      const pending = yield* sleepingQuery(session, monitor)
      yield* CancelConnection.cancel(info)
      yield* assertCancelled(pending)
      assert.strictEqual(fillers.length, 2)
    }).pipe(Effect.provide(NodeTransport.layer)))

  it.effect("a wrong key or a wrong pid is dispatched and has no effect", () =>
    Effect.gen(function*() {
      const pg = yield* EmbeddedPostgres.EmbeddedPostgres
      const session = yield* connect(pg, { protocol: "3.2" })
      const monitor = yield* connect(pg, { transport: "unix" })
      const info = yield* sessionInfo(session, conninfo(pg, "tcp", { sslmode: "disable" }))
      const pending = yield* sleepingQuery(session, monitor)
      const key = info.key!
      const wrongSecret = new Uint8Array(Redacted.value(key.secret))
      wrongSecret[0] = wrongSecret[0]! ^ 0xff
      const since = yield* pg.logSize
      yield* CancelConnection.cancel({
        ...info,
        key: CancelKey.unsafeMake({ pid: key.pid, secret: wrongSecret, protocolVersion: "3.2" })
      })
      yield* pg.waitForLog(`wrong key in cancel request for process ${key.pid}`, { since })
      yield* CancelConnection.cancel({
        ...info,
        key: CancelKey.unsafeMake({ pid: 1, secret: wrongSecret, protocolVersion: "3.2" })
      })
      yield* pg.waitForLog("PID 1 in cancel request did not match any process", { since })
      const still = yield* monitor.query(`SELECT wait_event FROM pg_stat_activity WHERE pid = ${key.pid}`)
      assert.deepStrictEqual(still._tag === "Ok" ? still.rows : still, [["PgSleep"]])
      yield* CancelConnection.cancel(info)
      yield* assertCancelled(pending)
    }).pipe(Effect.provide(NodeTransport.layer)))

  it.effect("no socket or timer outlives the Scope of a cancel (success, failure, interruption)", () =>
    Effect.gen(function*() {
      const pg = yield* EmbeddedPostgres.EmbeddedPostgres
      const session = yield* connect(pg, { tls: "sslrequest" })
      const monitor = yield* connect(pg, { transport: "unix" })
      const info = yield* sessionInfo(
        session,
        conninfo(pg, "tcp", { sslmode: "verify-full", sslrootcert: pg.caCertPath, host: "localhost" })
      )
      const before = openHandles()
      for (let i = 0; i < 3; i++) {
        const pending = yield* sleepingQuery(session, monitor)
        yield* CancelConnection.cancel(info)
        yield* assertCancelled(pending)
      }
      // a failing cancel (wrong CA) and an interrupted one (a poll loop cut off by a timeout)
      const failed = yield* Effect.flip(
        CancelConnection.cancel({ ...info, options: { ...info.options, sslrootcert: pg.wrongCaCertPath } })
      )
      assert.strictEqual(failed._tag, "CancelFailed")
      const interrupted = yield* Effect.scoped(
        Effect.gen(function*() {
          const connection = yield* CancelConnection.make(info)
          yield* connection.start
          return yield* connection.poll.pipe(Effect.forever, Effect.timeoutOption(0))
        })
      )
      assert.isTrue(interrupted._tag === "None" || interrupted._tag === "Some")
      yield* handlesSettled(before)
      assert.isAtMost(openHandles(), before)
    }).pipe(Effect.provide(NodeTransport.layer)))

  it.effect("interrupting blocking at each status transition leaves no socket behind", () =>
    Effect.gen(function*() {
      const pg = yield* EmbeddedPostgres.EmbeddedPostgres
      const session = yield* connect(pg, { tls: "sslrequest" })
      const info = yield* sessionInfo(
        session,
        conninfo(pg, "tcp", { sslmode: "verify-full", sslrootcert: pg.caCertPath, host: "localhost" })
      )
      const before = openHandles()
      // the transitions of a TLS cancel: STARTED, SSL_STARTUP, AWAITING_RESPONSE
      for (const target of ["STARTED", "SSL_STARTUP", "AWAITING_RESPONSE"] as const) {
        yield* Effect.scoped(Effect.gen(function*() {
          const connection = yield* CancelConnection.make(info)
          const reached = yield* Deferred.make<void>()
          yield* connection.changes.pipe(
            Stream.runForEach((t) => t.status === target ? Deferred.succeed(reached, undefined) : Effect.void),
            Effect.forkScoped
          )
          const fiber = yield* connection.blocking().pipe(Effect.forkChild)
          yield* Deferred.await(reached)
          yield* Fiber.interrupt(fiber)
          // after an interruption the connection can be reset and used again
          yield* connection.reset
          assert.strictEqual(yield* connection.status, "ALLOCATED")
        }))
      }
      yield* handlesSettled(before)
      assert.isAtMost(openHandles(), before)
    }).pipe(Effect.provide(NodeTransport.layer)))

  it.effect("requirepeer on a unix socket is refused (Node cannot read peer credentials); the key is never sent", () =>
    Effect.gen(function*() {
      const pg = yield* EmbeddedPostgres.EmbeddedPostgres
      const session = yield* connect(pg, { transport: "unix" })
      const monitor = yield* connect(pg, { transport: "unix" })
      const info = yield* sessionInfo(session, conninfo(pg, "unix", { requirepeer: "nobody" }))
      const pending = yield* sleepingQuery(session, monitor)
      const error = yield* Effect.flip(CancelConnection.cancel(info))
      assert.strictEqual(
        error.message,
        `connection to server on socket "${pg.socketPath}" failed: requirepeer parameter is not supported on this platform`
      )
      yield* assertStillSleeping(monitor, session)
      yield* CancelConnection.cancel({ ...info, options: { ...info.options, requirepeer: undefined } })
      yield* assertCancelled(pending)
    }).pipe(Effect.provide(NodeTransport.layer)))

  it.effect("spans and logs of a cancel never carry the key", () =>
    Effect.gen(function*() {
      const pg = yield* EmbeddedPostgres.EmbeddedPostgres
      const session = yield* connect(pg, { protocol: "3.2" })
      const monitor = yield* connect(pg, { transport: "unix" })
      const info = yield* sessionInfo(session, conninfo(pg, "tcp", { sslmode: "disable" }))
      const secret = Buffer.from(session.backendKey.secret)
      const base = yield* Tracer.Tracer
      const spans: Array<Tracer.Span> = []
      const recording = Tracer.make({
        span: (options) => {
          const span = base.span(options)
          spans.push(span)
          return span
        },
        context: base.context
      })
      const pending = yield* sleepingQuery(session, monitor)
      const logged: Array<string> = []
      const logger = Logger.make((entry) => {
        logged.push(Util.inspect(entry.message, { depth: 10, compact: true, breakLength: Infinity }))
      })
      yield* CancelConnection.cancel(info).pipe(
        Effect.tap(() => Effect.logInfo("cancelled", info)),
        Effect.provideService(Tracer.Tracer, recording),
        Effect.provide(Logger.layer([logger]))
      )
      yield* assertCancelled(pending)
      const cancelSpan = spans.find((s) => s.name === "pqcancel.cancel")
      assert.isDefined(cancelSpan)
      assert.strictEqual(cancelSpan?.attributes.get("db.postgresql.backend_pid"), session.backendKey.pid)
      assert.strictEqual(cancelSpan?.attributes.get("db.system.name"), "postgresql")
      const traced = spans.map((s) =>
        Util.inspect({ name: s.name, attributes: [...s.attributes] }, {
          depth: 10,
          compact: true,
          breakLength: Infinity
        })
      )
      for (const text of [...traced, ...logged]) {
        const forms = [
          secret.toString("hex"),
          secret.toString("hex").replace(/(..)(?!$)/g, "$1 "), // <Buffer de ad …>
          secret.toString("base64"),
          Array.from(secret).join(", ") // Uint8Array(32) [ 222, 173, … ]
        ]
        for (const form of forms) {
          assert.notInclude(text, form)
        }
      }
      assert.isAbove(logged.length, 0)
    }).pipe(Effect.provide(NodeTransport.layer)))
})
