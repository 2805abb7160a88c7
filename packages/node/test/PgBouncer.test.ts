/**
 * Behind a real PgBouncer (session and transaction pooling): a cancel stops the query (57014) and the session is
 * kept; with `retireUnlessCanceled`, a query that ended without 57014 — PgBouncer closed the cancel connection, yet
 * the statement completed — retires the session, because a late cancel may still be travelling.
 */
import { assert, describe, layer } from "@effect/vitest"
import { Transport } from "@pqcancel/core/Transport"
import { NodeTransport } from "@pqcancel/node"
import * as PgAdapter from "@pqcancel/node/PgAdapter"
import { EmbeddedPostgres, PgBouncer } from "@pqcancel/test-utils"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Net from "node:net"
import type pg from "pg"
import { interruptedOnly, pgBouncerUnavailable } from "./fixtures.ts"
import { waitUntil } from "./pgMonitor.ts"

const count = (monitor: pg.Client, sql: string, params: ReadonlyArray<unknown>) =>
  Effect.promise(() => monitor.query<{ n: number }>(sql, [...params])).pipe(Effect.map((r) => r.rows[0]?.n ?? 0))

// a Transport that tells when the first cancel connection was closed by the other end (dispatched, for PgBouncer)
const watchingTransport = Effect.gen(function*() {
  const base = yield* Transport
  const firstClosed = yield* Deferred.make<void>()
  const service = Transport.of({
    ...base,
    connect: (request, sink) =>
      base.connect(request, (event) => {
        if (event._tag === "Eof") Deferred.doneUnsafe(firstClosed, Effect.void)
        sink(event)
      })
  })
  return { service, firstClosed }
})

const reason = pgBouncerUnavailable("PgAdapter behind PgBouncer")

// without pgbouncer (see .ci/run) the suite is skipped, and says why
describe.skipIf(reason !== undefined)("PgAdapter behind PgBouncer", () => {
  layer(EmbeddedPostgres.layer18, { excludeTestServices: true, timeout: "60 seconds" })(
    "PgAdapter behind PgBouncer",
    (it) => {
      const setup = (poolMode: PgBouncer.PoolMode) =>
        Effect.gen(function*() {
          const cluster = yield* EmbeddedPostgres.EmbeddedPostgres
          const monitor = yield* PgAdapter.connect({ host: cluster.socketDir, port: cluster.port, user: "postgres" })
          yield* Effect.promise(() =>
            monitor.query(
              "BEGIN; SELECT pg_advisory_xact_lock(13); CREATE TABLE IF NOT EXISTS bouncer_rows (tag text); COMMIT"
            )
          )
          const bouncer = yield* PgBouncer.make(cluster, { poolMode })
          const client = yield* PgAdapter.connect({
            host: bouncer.host,
            port: bouncer.port,
            user: "postgres",
            database: "postgres"
          })
          return { monitor, client }
        })

      for (const poolMode of ["session", "transaction"] as const) {
        it.effect(`${poolMode} pooling: the cancel stops the query with 57014 and the session is kept`, () =>
          Effect.gen(function*() {
            const { client, monitor } = yield* setup(poolMode)
            const tag = `bouncer-sleep-${poolMode}`
            const fiber = yield* PgAdapter.query(client, undefined, `SELECT pg_sleep(60) -- ${tag}`, undefined, {
              retireUnlessCanceled: true
            }).pipe(Effect.forkChild)
            yield* waitUntil(
              "the query to sleep on the server",
              Effect.map(
                count(
                  monitor,
                  "SELECT count(*)::int AS n FROM pg_stat_activity WHERE wait_event = 'PgSleep' AND query LIKE $1",
                  [`%-- ${tag}`]
                ),
                (n) => n === 1
              )
            )
            assert.isTrue(interruptedOnly(yield* Fiber.interrupt(fiber).pipe(Effect.andThen(Fiber.await(fiber)))))
            assert.isFalse(PgAdapter.isRetired(client), "ended with 57014: the cancel was delivered")
            // the server query stopped (PgBouncer relays the 57014; pg_stat_activity may lag it a little)
            yield* waitUntil(
              "the server query to stop",
              Effect.map(
                count(
                  monitor,
                  "SELECT count(*)::int AS n FROM pg_stat_activity WHERE state = 'active' AND query LIKE $1",
                  [`%-- ${tag}`]
                ),
                (n) => n === 0
              )
            )
            assert.strictEqual((yield* PgAdapter.query(client, undefined, "SELECT 7 AS n")).rows[0]?.n, 7)
          }).pipe(Effect.provide(NodeTransport.layer)))

        for (const retireUnlessCanceled of [true, false]) {
          it.effect(
            `${poolMode} pooling: a statement that completes before the cancel reaches it ${
              retireUnlessCanceled ? "retires the session (retireUnlessCanceled)" : "is reported"
            }`,
            () =>
              Effect.gen(function*() {
                const { client, monitor } = yield* setup(poolMode)
                const tag = `bouncer-late-${poolMode}-${retireUnlessCanceled}`
                const watching = yield* watchingTransport
                const stream = client.connection.stream
                assert.isTrue(stream instanceof Net.Socket)
                let notCanceled = 0 // hold the INSERT in the client's socket buffer until the first cancel was answered
                ;(stream as Net.Socket).cork()
                const fiber = yield* PgAdapter.query(client, undefined, "INSERT INTO bouncer_rows VALUES ($1)", [tag], {
                  retireUnlessCanceled,
                  recancelInterval: "30 seconds",
                  drainTimeout: "20 seconds",
                  onNotCanceled: () => Effect.sync(() => notCanceled++)
                }).pipe(Effect.provideService(Transport, watching.service), Effect.forkChild)
                yield* waitUntil(
                  "the INSERT to be written",
                  Effect.sync(() => (client as unknown as { _activeQuery: unknown })._activeQuery != null)
                )
                const interrupter = yield* Fiber.interrupt(fiber).pipe(Effect.forkChild)
                yield* Deferred.await(watching.firstClosed)
                ;(stream as Net.Socket).uncork()
                yield* Fiber.join(interrupter)
                assert.isTrue(interruptedOnly(yield* Fiber.await(fiber)))
                // the statement completed, before the interruption did
                assert.strictEqual(
                  yield* count(monitor, "SELECT count(*)::int AS n FROM bouncer_rows WHERE tag = $1", [tag]),
                  1
                )
                assert.strictEqual(PgAdapter.isRetired(client), retireUnlessCanceled)
                assert.strictEqual(notCanceled, retireUnlessCanceled ? 0 : 1)
              }).pipe(Effect.provide(NodeTransport.layer))
          )
        }
      }
    }
  )
})
