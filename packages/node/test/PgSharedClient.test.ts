/**
 * A cancel stops the interrupted query and nothing else, on a `pg.Client` shared by many fibers: a queued query that
 * is interrupted never runs and cancels nobody; a query issued outside the adapter is never cancelled; a cancel that
 * reaches the backend before it read the query is sent again; random interleavings keep both promises.
 */
import { assert, layer } from "@effect/vitest"
import { ConnectionOptions } from "@pqcancel/core"
import { Transport } from "@pqcancel/core/Transport"
import { NodeTransport } from "@pqcancel/node"
import * as PgAdapter from "@pqcancel/node/PgAdapter"
import { Arbitraries, EmbeddedPostgres } from "@pqcancel/test-utils"
import * as Cause from "effect/Cause"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Schedule from "effect/Schedule"
import * as Net from "node:net"
import type pg from "pg"
import { interruptedOnly } from "./fixtures.ts"
import { checkInterleaving } from "./interleavings.ts"
import { connectMonitor, tcpRoute, tlsRoute, unixRoute, waitIdle, waitSleeping } from "./pgMonitor.ts"

const waitFor = (what: string, condition: () => boolean) =>
  Effect.sync(condition).pipe(
    Effect.repeat({ schedule: Schedule.spaced("1 millis"), until: (ok) => ok }),
    Effect.timeoutOrElse({
      duration: "10 seconds",
      orElse: () => Effect.die(new Error(`timed out waiting for ${what}`))
    })
  )

// node-postgres' private queue and running query (what the adapter itself reads)
const pgPrivate = (client: pg.Client) =>
  client as unknown as { readonly _activeQuery: unknown; readonly _queryQueue: ReadonlyArray<unknown> }

const rowCount = (monitor: pg.Client, table: string, tag: string) =>
  Effect.promise(() => monitor.query(`SELECT count(*)::int AS n FROM ${table} WHERE tag = $1`, [tag])).pipe(
    Effect.map((r) => r.rows[0]?.n as number)
  )

layer(EmbeddedPostgres.layer18, { excludeTestServices: true, timeout: "120 seconds" })(
  "PgAdapter, shared client",
  (it) => {
    const setup = connectMonitor(11, "CREATE TABLE IF NOT EXISTS shared_rows (tag text, id int)")

    const transports = [{ name: "TCP", ...tcpRoute }, { name: "TLS", ...tlsRoute }]

    const allTransports = [...transports, { name: "unix socket", ...unixRoute }]
    for (const transport of allTransports) {
      it.effect(`a queued query that is interrupted never runs and cancels nobody (${transport.name})`, () =>
        Effect.gen(function*() {
          const { cluster, monitor } = yield* setup
          const client = yield* PgAdapter.connect(transport.session(cluster))
          const options = yield* ConnectionOptions.fromString(transport.conninfo(cluster))
          const info = yield* PgAdapter.sessionInfo(client, options)
          const tag = `queued-${transport.name}`
          for (let trial = 0; trial < 5; trial++) {
            const a = yield* PgAdapter.query(client, options, "SELECT pg_sleep(0.3) AS slept").pipe(Effect.forkChild)
            yield* waitSleeping(monitor, info.key!.pid)
            const b = yield* PgAdapter.query(client, options, "INSERT INTO shared_rows VALUES ($1, $2)", [tag, trial])
              .pipe(
                Effect.forkChild
              )
            yield* Effect.yieldNow
            const bExit = yield* Fiber.interrupt(b).pipe(Effect.andThen(Fiber.await(b)))
            assert.isTrue(interruptedOnly(bExit), "B ends interrupted")
            // A was not cancelled: it completes normally
            const aExit = yield* Fiber.await(a)
            assert.isTrue(
              Exit.isSuccess(aExit),
              `A succeeds (${Exit.isFailure(aExit) ? Cause.pretty(aExit.cause) : ""})`
            )
            // B's INSERT never ran: not before, and not after (the next query on the client comes after it would have)
            yield* PgAdapter.query(client, options, "SELECT 1")
            assert.strictEqual(yield* rowCount(monitor, "shared_rows", tag), 0)
          }
          assert.isFalse(PgAdapter.isRetired(client))
        }).pipe(Effect.provide(NodeTransport.layer)))
    }

    it.effect("a query issued outside the adapter is never cancelled; the interrupted one is withdrawn", () =>
      Effect.gen(function*() {
        const { cluster, monitor } = yield* setup
        const client = yield* PgAdapter.connect({ host: "127.0.0.1", port: cluster.port, user: "postgres" })
        const options = yield* ConnectionOptions.fromString(`host=127.0.0.1 port=${cluster.port}`)
        const info = yield* PgAdapter.sessionInfo(client, options)
        const foreign = client.query("SELECT pg_sleep(0.3) AS slept")
        yield* waitSleeping(monitor, info.key!.pid)
        const fiber = yield* PgAdapter.query(client, options, "INSERT INTO shared_rows VALUES ('foreign', 1)").pipe(
          Effect.forkChild
        )
        // our INSERT sits in node-postgres' own queue, behind the foreign query
        yield* waitFor("the INSERT in the client's queue", () => pgPrivate(client)._queryQueue.length === 1)
        const exit = yield* Fiber.interrupt(fiber).pipe(Effect.andThen(Fiber.await(fiber)))
        assert.isTrue(interruptedOnly(exit))
        assert.strictEqual(pgPrivate(client)._queryQueue.length, 0, "withdrawn from the client's queue")
        const result = yield* Effect.promise(() => foreign.then(() => "ok", (e: { code?: string }) => e.code))
        assert.strictEqual(result, "ok", "the foreign query was not cancelled")
        yield* PgAdapter.query(client, options, "SELECT 1")
        assert.strictEqual(yield* rowCount(monitor, "shared_rows", "foreign"), 0)
      }).pipe(Effect.provide(NodeTransport.layer)))

    it.effect("pipeline mode: a query written behind another's is never cancelled, it is waited for", () =>
      Effect.gen(function*() {
        const { cluster, monitor } = yield* setup
        const client = yield* PgAdapter.connect({
          host: "127.0.0.1",
          port: cluster.port,
          user: "postgres",
          pipeline: true
        })
        const options = yield* ConnectionOptions.fromString(`host=127.0.0.1 port=${cluster.port}`)
        const info = yield* PgAdapter.sessionInfo(client, options)
        const foreign = client.query("SELECT pg_sleep(0.3) AS slept")
        yield* waitSleeping(monitor, info.key!.pid)
        const fiber = yield* PgAdapter.query(client, options, "INSERT INTO shared_rows VALUES ('pipelined', 1)").pipe(
          Effect.forkChild
        )
        // pipelined: our INSERT is already written, behind the running foreign query
        yield* waitFor(
          "the INSERT to be written",
          () => (client as unknown as { _sentQueryQueue: ReadonlyArray<unknown> })._sentQueryQueue.length === 1
        )
        const exit = yield* Fiber.interrupt(fiber).pipe(Effect.andThen(Fiber.await(fiber)))
        const result = yield* Effect.promise(() => foreign.then(() => "ok", (e: { code?: string }) => e.code))
        assert.strictEqual(result, "ok", "the foreign query was not cancelled")
        // it could not be taken back: it ran, before the interruption completed
        assert.isTrue(interruptedOnly(exit))
        assert.strictEqual(yield* rowCount(monitor, "shared_rows", "pipelined"), 1)
        assert.isFalse(PgAdapter.isRetired(client))
      }).pipe(Effect.provide(NodeTransport.layer)))

    it.effect("a cancel that reached the backend before it read the query is sent again", () =>
      Effect.gen(function*() {
        const { cluster, monitor } = yield* setup
        const client = yield* PgAdapter.connect({ host: "127.0.0.1", port: cluster.port, user: "postgres" })
        const options = yield* ConnectionOptions.fromString(`host=127.0.0.1 port=${cluster.port}`)
        const info = yield* PgAdapter.sessionInfo(client, options)
        const base = yield* Transport
        const firstDispatched = yield* Deferred.make<void>()
        let cancelConnections = 0
        const counting = Transport.of({
          ...base,
          connect: (request, sink) => {
            cancelConnections++
            return base.connect(request, (event) => {
              // the server closed the cancel connection: the cancel was dispatched
              if (event._tag === "Eof") Deferred.doneUnsafe(firstDispatched, Effect.void)
              sink(event)
            })
          }
        })
        let notCanceled = 0
        const stream = client.connection.stream
        assert.isTrue(stream instanceof Net.Socket) // hold the Query message in Node's buffer: the backend is idle when the first cancel reaches it
        ;(stream as Net.Socket).cork()
        const fiber = yield* PgAdapter.query(client, options, "SELECT pg_sleep(60)", undefined, {
          recancelInterval: "200 millis",
          drainTimeout: "30 seconds",
          onNotCanceled: () => Effect.sync(() => notCanceled++)
        }).pipe(Effect.provideService(Transport, counting), Effect.forkChild)
        yield* waitFor("the query to be written", () => pgPrivate(client)._activeQuery != null)
        const interrupter = yield* Fiber.interrupt(fiber).pipe(Effect.forkChild)
        yield* Deferred.await(firstDispatched)
        ;(stream as Net.Socket).uncork()
        yield* Fiber.join(interrupter)
        assert.isTrue(interruptedOnly(yield* Fiber.await(fiber)))
        assert.isAtLeast(cancelConnections, 2, "the ignored cancel was sent again")
        assert.strictEqual(notCanceled, 0, "the statement ended cancelled")
        assert.isFalse(PgAdapter.isRetired(client))
        const state = yield* waitIdle(monitor, info.key!.pid)
        assert.strictEqual(state.rows[0]?.state, "idle")
        assert.strictEqual((yield* PgAdapter.query(client, options, "SELECT 7 AS n")).rows[0]?.n, 7)
      }).pipe(Effect.provide(NodeTransport.layer)))

    // random interleavings of fibers on one client, some interrupted at random moments (the generator and the
    // property every adapter shares)
    let run = 0

    it.effect.prop(
      "random interleavings: only interrupted queries are cancelled, none takes effect after its interruption",
      { scenario: Arbitraries.interruptScenario() },
      ({ scenario }) =>
        Effect.gen(function*() {
          const { cluster, monitor } = yield* setup
          const client = yield* PgAdapter.connect({ host: "127.0.0.1", port: cluster.port, user: "postgres" })
          const options = yield* ConnectionOptions.fromString(`host=127.0.0.1 port=${cluster.port}`)
          const tag = `prop-${run++}`
          yield* checkInterleaving(
            scenario,
            (step, id) =>
              PgAdapter.query(
                client,
                options,
                "INSERT INTO shared_rows SELECT $1, $2 FROM pg_sleep($3)",
                [tag, id, step.sleepMs / 1000],
                { onNotCanceled: () => Effect.void }
              ),
            (id) =>
              Effect.map(
                Effect.promise(() => monitor.query("SELECT 1 FROM shared_rows WHERE tag = $1 AND id = $2", [tag, id])),
                (present) => (present.rowCount ?? 0) > 0
              ),
            Effect.map(
              Effect.promise(() => monitor.query("SELECT id FROM shared_rows WHERE tag = $1", [tag])),
              (rows) => new Set(rows.rows.map((r) => r.id as number))
            )
          )
          assert.isFalse(PgAdapter.isRetired(client))
        }).pipe(Effect.provide(NodeTransport.layer)),
      { timeout: 90_000, arbitrary: { runs: 15, maxShrinks: 3 } }
    )
  }
)
