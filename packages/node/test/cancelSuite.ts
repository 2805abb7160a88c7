/**
 * libpq's own `test_cancel` (src/test/modules/libpq_pipeline), ported: every scenario must end the running
 * `pg_sleep` with SQLSTATE 57014 on the server. Run per cluster (PG 18, PG 17) and protocol version.
 */
import { assert } from "@effect/vitest"
import type { Vitest } from "@effect/vitest"
import { CancelConnection, LegacyCancel, Libpq } from "@pqcancel/core"
import { NodeTransport } from "@pqcancel/node"
import { EmbeddedPostgres, TestSession } from "@pqcancel/test-utils"
import * as Effect from "effect/Effect"
import { assertCancelled, conninfo, noDescriptor, sessionInfo, sleepingQuery } from "./fixtures.ts"

type It = Vitest.MethodsNonLive<EmbeddedPostgres.EmbeddedPostgres>

export const testCancelSuite = (it: It, protocol: "3.0" | "3.2") => {
  const setup = Effect.gen(function*() {
    const cluster = yield* EmbeddedPostgres.EmbeddedPostgres
    const session = yield* TestSession.connectTo(cluster, { protocol })
    const monitor = yield* TestSession.connectTo(cluster, {})
    const info = yield* sessionInfo(session, conninfo(cluster, "tcp", { sslmode: "disable" }))
    assert.strictEqual(
      session.backendKey.secret.length,
      protocol === "3.2" && cluster.majorVersion >= 18 ? 32 : 4
    )
    return { cluster, session, monitor, info }
  })

  it.effect(`legacy PQgetCancel + PQcancel, the same handle twice (protocol ${protocol})`, () =>
    Effect.gen(function*() {
      const { info, monitor, session } = yield* setup
      const handle = LegacyCancel.getCancel(info)
      for (let round = 0; round < 2; round++) {
        const pending = yield* sleepingQuery(session, monitor)
        const result = yield* Libpq.PQcancel(handle)
        assert.deepStrictEqual(result, { result: 1, errbuf: "" })
        yield* assertCancelled(pending)
      }
      LegacyCancel.freeCancel(handle)
    }).pipe(Effect.provide(NodeTransport.layer), EmbeddedPostgres.withServerLogOnFailure))

  it.effect(`PQrequestCancel (protocol ${protocol})`, () =>
    Effect.gen(function*() {
      const { info, monitor, session } = yield* setup
      const pending = yield* sleepingQuery(session, monitor)
      const result = yield* Libpq.PQrequestCancel(info)
      assert.strictEqual(result.result, 1)
      yield* assertCancelled(pending)
    }).pipe(Effect.provide(NodeTransport.layer), EmbeddedPostgres.withServerLogOnFailure))

  it.effect(`PQcancelCreate + PQcancelBlocking (protocol ${protocol})`, () =>
    Effect.gen(function*() {
      const { info, monitor, session } = yield* setup
      const pending = yield* sleepingQuery(session, monitor)
      const cancelConn = yield* Libpq.PQcancelCreate(info)
      assert.strictEqual(yield* Libpq.PQcancelStatus(cancelConn), "CONNECTION_ALLOCATED")
      assert.strictEqual(yield* Libpq.PQcancelBlocking(cancelConn), 1)
      assert.strictEqual(yield* Libpq.PQcancelStatus(cancelConn), "CONNECTION_OK")
      assert.strictEqual(yield* Libpq.PQcancelErrorMessage(cancelConn), "")
      yield* assertCancelled(pending)
      yield* Libpq.PQcancelFinish(cancelConn)
    }).pipe(Effect.provide(NodeTransport.layer), EmbeddedPostgres.withServerLogOnFailure))

  it.effect(`PQcancelStart + PQcancelPoll loop, then PQcancelReset and again (protocol ${protocol})`, () =>
    Effect.gen(function*() {
      const { info, monitor, session } = yield* setup
      const cancelConn = yield* Libpq.PQcancelCreate(info)
      for (let round = 0; round < 2; round++) {
        const pending = yield* sleepingQuery(session, monitor)
        assert.strictEqual(yield* Libpq.PQcancelStart(cancelConn), 1)
        const seen = new Set<string>()
        for (;;) {
          const polled = yield* Libpq.PQcancelPoll(cancelConn)
          seen.add(yield* Libpq.PQcancelStatus(cancelConn))
          if (polled === "PGRES_POLLING_OK") break
          assert.oneOf(polled, ["PGRES_POLLING_READING", "PGRES_POLLING_WRITING"])
          if ((yield* Libpq.PQcancelStatus(cancelConn)) !== "CONNECTION_OK") {
            // Deno's node:net and Bun's own sockets have no descriptor to report: -1, "unknown"
            const socket = yield* Libpq.PQcancelSocket(cancelConn)
            if (noDescriptor) assert.strictEqual(socket, -1)
            else assert.isAtLeast(socket, 0)
          }
        }
        assert.strictEqual(yield* Libpq.PQcancelStatus(cancelConn), "CONNECTION_OK")
        assert.strictEqual(yield* Libpq.PQcancelSocket(cancelConn), -1)
        assert.isTrue(seen.has("CONNECTION_AWAITING_RESPONSE"))
        yield* assertCancelled(pending)
        yield* Libpq.PQcancelReset(cancelConn)
        assert.strictEqual(yield* Libpq.PQcancelStatus(cancelConn), "CONNECTION_ALLOCATED")
      }
    }).pipe(Effect.provide(NodeTransport.layer), EmbeddedPostgres.withServerLogOnFailure))

  it.effect(`the session stays usable and an idle cancel does not hit the next query (protocol ${protocol})`, () =>
    Effect.gen(function*() {
      const { info, monitor, session } = yield* setup
      const pending = yield* sleepingQuery(session, monitor)
      yield* CancelConnection.cancel(info)
      yield* assertCancelled(pending)
      // a cancel that arrives while the backend is idle is dropped by the server
      yield* TestSession.waitUntilIdle(monitor, session.backendKey.pid)
      yield* CancelConnection.cancel(info)
      const next = yield* session.query("SELECT 42")
      assert.deepStrictEqual(next._tag === "Ok" ? next.rows : next, [["42"]])
    }).pipe(Effect.provide(NodeTransport.layer), EmbeddedPostgres.withServerLogOnFailure))

  it.effect(`over a unix socket and over IPv6 (protocol ${protocol})`, () =>
    Effect.gen(function*() {
      const cluster = yield* EmbeddedPostgres.EmbeddedPostgres
      const monitor = yield* TestSession.connectTo(cluster, { transport: "unix" })
      const transports = cluster.host6 === undefined ? ["unix"] as const : ["unix", "tcp6"] as const
      for (const transport of transports) {
        const session = yield* TestSession.connectTo(cluster, { transport, protocol })
        const info = yield* sessionInfo(session, conninfo(cluster, transport, { sslmode: "prefer" }))
        assert.strictEqual(info.address._tag, transport === "unix" ? "Unix" : "Tcp")
        const pending = yield* sleepingQuery(session, monitor)
        yield* CancelConnection.cancel(info)
        yield* assertCancelled(pending)
      }
    }).pipe(Effect.provide(NodeTransport.layer), EmbeddedPostgres.withServerLogOnFailure))
}
