/**
 * Metrics of cancels read back from the registry: outcome counters, the latency histogram and retired sessions,
 * labelled by transport and sslmode — never by anything from the key.
 */
import { assert, describe, layer } from "@effect/vitest"
import { CancelConnection, CancelKey, CancelMetrics, CancelOnInterrupt, ConnectionOptions } from "@pqcancel/core"
import { NodeTransport } from "@pqcancel/node"
import { EmbeddedPostgres, FakePostmaster, TestSession } from "@pqcancel/test-utils"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Metric from "effect/Metric"
import * as Schedule from "effect/Schedule"
import * as Net from "node:net"
import { assertCancelled, conninfo, sessionInfo, sleepingQuery } from "./fixtures.ts"

/** Runs `self` with a registry of its own, so that the counts are this test's only */
const withRegistry = <A, E, R>(self: Effect.Effect<A, E, R>) =>
  Effect.provideService(self, Metric.MetricRegistry, new Map())

const count = (metric: Metric.Counter<number>) => Effect.map(Metric.value(metric), (state) => state.count)

/** Every pqcancel series in the registry: its attributes, as recorded */
const pqcancelSeries = Effect.map(
  Metric.snapshot,
  (snapshots) =>
    snapshots.filter((s) => s.id.startsWith("pqcancel.")).map((s): Record<string, string> => ({
      id: s.id,
      ...s.attributes
    }))
)

const tcpSession = (port: number, extra: string) =>
  Effect.map(ConnectionOptions.fromString(`host=127.0.0.1 port=${port} ${extra}`), (options) => ({
    options,
    host: options.hosts[0]!,
    address: { _tag: "Tcp", address: "127.0.0.1", port, family: 4 } as const,
    key: CancelKey.unsafeMake({ pid: 4242, secret: new Uint8Array([9, 8, 7, 6]), protocolVersion: "3.0" })
  }))

/** A TCP port on 127.0.0.1 nobody listens on: bound, then closed */
const closedPort = Effect.callback<number>((resume) => {
  const server = Net.createServer()
  server.listen(0, "127.0.0.1", () => {
    const port = (server.address() as Net.AddressInfo).port
    server.close(() => resume(Effect.succeed(port)))
  })
})

layer(EmbeddedPostgres.layer18, { excludeTestServices: true, timeout: "60 seconds" })("CancelMetrics", (it) => {
  it.effect("a dispatched cancel over TLS is counted and timed under tcp / require, nothing else is labelled", () =>
    Effect.gen(function*() {
      const pg = yield* EmbeddedPostgres.EmbeddedPostgres
      const monitor = yield* TestSession.connectTo(pg, { transport: "unix" })
      const session = yield* TestSession.connectTo(pg, { tls: "sslrequest" })
      const info = yield* sessionInfo(session, conninfo(pg, "tcp", { sslmode: "require" }))
      const pending = yield* sleepingQuery(session, monitor)
      yield* CancelConnection.cancel(info)
      yield* assertCancelled(pending)

      // (read before anything else: reading a series registers it)
      const series = yield* pqcancelSeries
      assert.sameDeepMembers(series, [
        { id: "pqcancel.cancels", transport: "tcp", sslmode: "require", outcome: "dispatched" },
        { id: "pqcancel.cancel.duration", transport: "tcp", sslmode: "require", outcome: "dispatched" }
      ])
      assert.strictEqual(yield* count(CancelMetrics.cancels("tcp", "require", "dispatched")), 1)
      assert.strictEqual(yield* count(CancelMetrics.cancels("tcp", "require", "failed")), 0)
      const duration = yield* Metric.value(CancelMetrics.cancelDuration("tcp", "require", "dispatched"))
      assert.strictEqual(duration.count, 1)
      assert.isTrue(duration.sum > 0, `latency ${duration.sum} s`)
    }).pipe(withRegistry, Effect.provide(NodeTransport.layer), EmbeddedPostgres.withServerLogOnFailure))

  it.effect("a cancel over the unix socket is counted under transport unix", () =>
    Effect.gen(function*() {
      const pg = yield* EmbeddedPostgres.EmbeddedPostgres
      const monitor = yield* TestSession.connectTo(pg, { transport: "unix" })
      const session = yield* TestSession.connectTo(pg, { transport: "unix" })
      const info = yield* sessionInfo(session, conninfo(pg, "unix"))
      const pending = yield* sleepingQuery(session, monitor)
      yield* CancelConnection.cancel(info)
      yield* assertCancelled(pending)
      assert.strictEqual(yield* count(CancelMetrics.cancels("unix", "prefer", "dispatched")), 1)
      assert.strictEqual(yield* count(CancelMetrics.cancels("tcp", "prefer", "dispatched")), 0)
    }).pipe(withRegistry, Effect.provide(NodeTransport.layer), EmbeddedPostgres.withServerLogOnFailure))

  it.effect("cancel on interrupt counts each cancel once, also when the 57014 comes before the server's close", () =>
    Effect.gen(function*() {
      // the session's 57014 usually arrives before the server closes the cancel connection: the cancel's own run is
      // then stopped (the statement confirmed it), and must still be counted as dispatched — exactly once
      const pg = yield* EmbeddedPostgres.EmbeddedPostgres
      const monitor = yield* TestSession.connectTo(pg, { transport: "unix" })
      const session = yield* TestSession.connectTo(pg)
      const info = yield* sessionInfo(session, conninfo(pg, "tcp", { sslmode: "disable" }))
      const rounds = 8
      for (let round = 0; round < rounds; round++) {
        const sleeping = yield* Deferred.make<void>()
        const query = Effect.gen(function*() {
          const pending = yield* sleepingQuery(session, monitor)
          yield* Deferred.succeed(sleeping, undefined)
          return yield* pending.result
        })
        const fiber = yield* CancelOnInterrupt.cancelOnInterrupt(query, {
          session: info,
          isCanceled: (exit) => {
            const result = Exit.isSuccess(exit) ? exit.value as TestSession.QueryResult : undefined
            return result?._tag === "Error" && result.sqlstate === "57014"
          }
        }).pipe(Effect.forkChild)
        yield* Deferred.await(sleeping)
        yield* Fiber.interrupt(fiber)
      }
      assert.strictEqual(yield* count(CancelMetrics.cancels("tcp", "disable", "dispatched")), rounds)
      assert.strictEqual(
        (yield* Metric.value(CancelMetrics.cancelDuration("tcp", "disable", "dispatched"))).count,
        rounds
      )
    }).pipe(withRegistry, Effect.provide(NodeTransport.layer), EmbeddedPostgres.withServerLogOnFailure))
})

describe("CancelMetrics on faults", () => {
  layer(NodeTransport.layer, { excludeTestServices: true })((it) => {
    it.effect("a refused cancel counts as failed, one that gets no answer as timed_out", () =>
      Effect.gen(function*() {
        const refused = yield* tcpSession(yield* closedPort, "sslmode=disable")
        const failed = yield* Effect.flip(CancelConnection.cancel(refused))
        assert.strictEqual(failed._tag, "CancelFailed")

        const fake = yield* FakePostmaster.make({ script: [{ expect: "cancelRequest" }, "hang"] })
        const silent = yield* tcpSession(fake.port, "sslmode=disable")
        const timedOut = yield* Effect.flip(CancelConnection.cancel(silent, { timeout: "300 millis" }))
        assert.strictEqual(timedOut._tag, "CancelTimeout")

        assert.strictEqual(yield* count(CancelMetrics.cancels("tcp", "disable", "failed")), 1)
        assert.strictEqual(yield* count(CancelMetrics.cancels("tcp", "disable", "timed_out")), 1)
        assert.strictEqual(yield* count(CancelMetrics.cancels("tcp", "disable", "dispatched")), 0)
        const timedOutDuration = yield* Metric.value(CancelMetrics.cancelDuration("tcp", "disable", "timed_out"))
        assert.strictEqual(timedOutDuration.count, 1)
        assert.isTrue(timedOutDuration.sum > 0.1, `recorded ${timedOutDuration.sum} s for a 300 ms timeout`)
      }).pipe(withRegistry))

    it.effect("a cancel is counted once whatever its path: retried, never created, interrupted (not counted)", () =>
      Effect.gen(function*() {
        // two attempts (a retry after the refused first), one outcome
        const refused = yield* tcpSession(yield* closedPort, "sslmode=disable")
        const failed = yield* Effect.flip(CancelConnection.cancel(refused, { retry: Schedule.recurs(1) }))
        assert.strictEqual(failed._tag, "CancelFailed")
        assert.strictEqual(yield* count(CancelMetrics.cancels("tcp", "disable", "failed")), 1)
        assert.strictEqual((yield* Metric.value(CancelMetrics.cancelDuration("tcp", "disable", "failed"))).count, 1)

        // a session without a key: CancelCreateError, counted as failed before any socket
        const keyless = { ...refused, key: undefined }
        const notCreated = yield* Effect.flip(CancelConnection.cancel(keyless))
        assert.strictEqual(notCreated._tag, "CancelCreateError")
        assert.strictEqual(yield* count(CancelMetrics.cancels("tcp", "disable", "failed")), 2)

        // interrupted while the server has not answered: no outcome, nothing counted
        const fake = yield* FakePostmaster.make({ script: [{ expect: "cancelRequest" }, "hang"] })
        const silent = yield* tcpSession(fake.port, "sslmode=disable")
        const fiber = yield* CancelConnection.cancel(silent).pipe(Effect.forkChild)
        yield* fake.awaitConnection(0)
        yield* Fiber.interrupt(fiber)
        assert.strictEqual(yield* count(CancelMetrics.cancels("tcp", "disable", "failed")), 2)
        assert.strictEqual(yield* count(CancelMetrics.cancels("tcp", "disable", "timed_out")), 0)
        assert.strictEqual(yield* count(CancelMetrics.cancels("tcp", "disable", "dispatched")), 0)
      }).pipe(withRegistry))

    it.effect("a session whose cancel cannot be confirmed is counted as retired, with its reason", () =>
      Effect.gen(function*() {
        const info = yield* tcpSession(yield* closedPort, "sslmode=require")
        let retired = 0
        const started = yield* Deferred.make<void>()
        const query = Effect.andThen(Deferred.succeed(started, undefined), Effect.never)
        const fiber = yield* CancelOnInterrupt.cancelOnInterrupt(query, {
          session: info,
          cancelTimeout: "300 millis", // the refused cancel is retried (transient) until then
          drainTimeout: "1 second",
          onUnsafe: () =>
            Effect.sync(() => {
              retired++
            })
        }).pipe(Effect.forkChild)
        yield* Deferred.await(started)
        yield* Fiber.interrupt(fiber)
        assert.strictEqual(retired, 1) // the cancel failed: retired once, before the drain wait
        assert.strictEqual(yield* count(CancelMetrics.sessionsRetired("tcp", "require", "cancel_not_confirmed")), 1)
        assert.strictEqual(yield* count(CancelMetrics.sessionsRetired("tcp", "require", "query_did_not_end")), 0)
        assert.isAtLeast(yield* count(CancelMetrics.cancels("tcp", "require", "failed")), 1)
        assert.strictEqual(yield* count(CancelMetrics.cancels("tcp", "require", "dispatched")), 0)
      }).pipe(withRegistry))
  })
})
