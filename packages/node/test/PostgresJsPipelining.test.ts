/**
 * postgres.js through the adapter with its pipelining on (3.4, 4.1, 4.2), on a real PostgreSQL 18: statements
 * interrupted at random on one pipelined connection never cancel, fail or misdeliver another statement; 20 fibers
 * sharing `max: 1` complete; postgres.js 4's `.signal()` cancels through the adapter, once; an unsupported driver
 * fails at once with a typed error naming its version.
 */
import { assert, layer } from "@effect/vitest"
import { Transport } from "@pqcancel/core"
import { NodeTransport } from "@pqcancel/node"
import * as PostgresJsAdapter from "@pqcancel/node/PostgresJsAdapter"
import { Arbitraries, EmbeddedPostgres, TestSession } from "@pqcancel/test-utils"
import * as Cause from "effect/Cause"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import { interruptedOnly, makeWith, postgresJsDrivers, postgresJsPlain, sleepingPid } from "./fixtures.ts"

let counter = 0
const appName = (): string => `pgjs-pipe-${process.pid}-${++counter}`

/** postgres.js 4's `.signal()` (not in the types of the postgres.js 3 the workspace compiles against) */
const withSignal = <Q>(query: Q, signal: AbortSignal): Q =>
  (query as unknown as { readonly signal: (signal: AbortSignal) => Q }).signal(signal)

/** NodeTransport, counting the cancel connections it opens */
const countingTransport = () => {
  let connections = 0
  const layer = Layer.succeed(
    Transport.Transport,
    Transport.Transport.of({
      ...NodeTransport.make,
      connect: (request, sink) => {
        connections++
        return NodeTransport.make.connect(request, sink)
      }
    })
  )
  return { layer, count: () => connections }
}

// random interleavings of fibers on one pipelined connection, some interrupted at random moments (the adapters'
// shared generator)
const Scenario = Arbitraries.interruptScenario({ maxLength: 12, maxStartMs: 10, maxSleepMs: 20, maxInterruptMs: 30 })

layer(EmbeddedPostgres.layer18, { excludeTestServices: true, timeout: "90 seconds" })("PostgresJsPipelining", (it) => {
  for (const d of postgresJsDrivers) {
    const make = makeWith(d.driver)
    let run = 0

    it.effect.prop(
      `random interrupts on one pipelined connection: no other statement fails, is cancelled or gets another's reply [${d.name}]`,
      { scenario: Scenario },
      ({ scenario }) =>
        Effect.gen(function*() {
          const cluster = yield* EmbeddedPostgres.EmbeddedPostgres
          const sql = yield* make({
            ...postgresJsPlain(cluster, appName()),
            max: 1,
            cancel: { onNotCanceled: () => Effect.void }
          })
          const check = yield* make({ ...postgresJsPlain(cluster, appName()), max: 1 })
          const table = `pipelined_${process.pid}_${run}_${d.name.replace(/\W/g, "_")}`
          yield* PostgresJsAdapter.query(check, (sql) => sql`CREATE TABLE ${sql(table)} (tag text, id int)`)
          // the connection is open: postgres.js 3 writes nothing behind a connection's first query
          yield* PostgresJsAdapter.query(sql, (sql) => sql`SELECT 1`)
          const tag = `${d.name}-${run++}`
          const outcomes = yield* Effect.forEach(
            scenario,
            (step, id) =>
              Effect.gen(function*() {
                // the workload's timing (when each statement is issued and interrupted), not a synchronisation
                if (step.startAfterMs > 0) yield* Effect.sleep(step.startAfterMs)
                const fiber = yield* PostgresJsAdapter.query(
                  sql,
                  (sql) =>
                    sql`INSERT INTO ${sql(table)} SELECT ${tag}, ${id}::int FROM pg_sleep(${
                      step.sleepMs / 1000
                    }) RETURNING id`
                ).pipe(Effect.forkChild)
                if (step.interruptAfterMs === null) return { id, exit: yield* Fiber.await(fiber), presentAfter: true }
                yield* Effect.sleep(step.interruptAfterMs) // the workload's timing, not a synchronisation
                const exit = yield* Fiber.interrupt(fiber).pipe(Effect.andThen(Fiber.await(fiber)))
                const present = yield* PostgresJsAdapter.query(
                  check,
                  (sql) => sql`SELECT 1 FROM ${sql(table)} WHERE tag = ${tag} AND id = ${id}::int`
                )
                return { id, exit, presentAfter: present.length > 0 }
              }),
            { concurrency: "unbounded" }
          )
          const rows = yield* PostgresJsAdapter.query(check, (sql) =>
            sql`SELECT id FROM ${sql(table)} WHERE tag = ${tag}`)
          const final = new Set(rows.map((r) =>
            r.id as number
          ))
          for (const outcome of outcomes) {
            const exit = outcome.exit
            if (interruptedOnly(exit)) {
              // absent when its interruption completed ⇒ absent for ever
              if (!outcome.presentAfter) assert.isFalse(final.has(outcome.id), `row ${outcome.id} appeared later`)
              continue
            }
            // never cancelled, never failed, and its own reply
            assert.isTrue(
              Exit.isSuccess(exit),
              `statement ${outcome.id}: ${Exit.isFailure(exit) ? Cause.pretty(exit.cause) : ""}`
            )
            if (Exit.isSuccess(exit)) assert.deepStrictEqual(exit.value.map((r) => r.id), [outcome.id])
            assert.isTrue(final.has(outcome.id))
          }
          yield* PostgresJsAdapter.query(check, (sql) => sql`DROP TABLE ${sql(table)}`)
        }).pipe(Effect.scoped, Effect.provide(NodeTransport.layer)),
      { timeout: 90_000, arbitrary: { runs: 12, maxShrinks: 3 } }
    )

    it.effect(`max: 1, 20 fibers × 100 short statements complete [${d.name}]`, () =>
      Effect.gen(function*() {
        const cluster = yield* EmbeddedPostgres.EmbeddedPostgres
        const sql = yield* make({ ...postgresJsPlain(cluster, appName()), max: 1 })
        const sums = yield* Effect.forEach(
          Array.from({ length: 20 }, (_, fiber) => fiber),
          (fiber) =>
            Effect.gen(function*() {
              let sum = 0
              for (let i = 0; i < 100; i++) {
                const rows = yield* PostgresJsAdapter.query(sql, (sql) => sql`SELECT ${fiber * 1000 + i}::int AS n`)
                sum += rows[0]!.n as number
              }
              return sum
            }),
          { concurrency: "unbounded" }
        ).pipe(Effect.timeout("60 seconds"))
        assert.deepStrictEqual(sums, Array.from({ length: 20 }, (_, f) => f * 100_000 + 4950))
      }).pipe(Effect.scoped, Effect.provide(NodeTransport.layer)))

    it.effect(`an interrupted query with another written behind it is not cancelled (the cancel could reach that one) [${d.name}]`, () =>
      Effect.gen(function*() {
        const cluster = yield* EmbeddedPostgres.EmbeddedPostgres
        const monitor = yield* TestSession.connectTo(cluster, { transport: "unix" })
        const counting = countingTransport()
        const app = appName()
        const sql = yield* make({
          ...postgresJsPlain(cluster, app),
          max: 1,
          cancel: { onNotCanceled: () => Effect.void }
        })
        // the connection is open: postgres.js 3 writes nothing behind a connection's first query
        yield* PostgresJsAdapter.query(sql, (sql) => sql`SELECT 1`)
        let captured: Promise<unknown> | undefined
        const a = yield* PostgresJsAdapter.query(sql, (sql) => {
          const q = sql`SELECT pg_sleep(0.5), 1 AS a`
          captured = q.catch((error: unknown) => error)
          return q
        }).pipe(Effect.provide(counting.layer), Effect.forkChild)
        const pid = yield* sleepingPid(monitor, app)
        const queued = yield* Deferred.make<void>()
        const b = yield* PostgresJsAdapter.query(sql, (sql) => {
          Deferred.doneUnsafe(queued, Effect.void)
          return sql`SELECT 2 AS b`
        }).pipe(Effect.forkChild)
        yield* Deferred.await(queued)
        // B is on the wire: postgres.js writes in the next turn of the event loop (3.4: setImmediate, 4: nextTick)
        yield* Effect.promise(() => new Promise((resolve) => setImmediate(() => setImmediate(resolve))))
        // A's interruption waits for A's end: no cancel was sent, A ran to its end, B got its own row
        assert.isTrue(interruptedOnly(yield* Fiber.interrupt(a).pipe(Effect.andThen(Fiber.await(a)))))
        assert.strictEqual(counting.count(), 0)
        const outcome = (yield* Effect.promise(() => captured!)) as ReadonlyArray<{ readonly a?: number }>
        assert.strictEqual(outcome[0]?.a, 1)
        const rows = yield* Fiber.join(b)
        assert.strictEqual(rows[0]!.b, 2)
        const again = yield* PostgresJsAdapter.query(sql, (sql) => sql`SELECT pg_backend_pid() AS pid`)
        assert.strictEqual(again[0]!.pid, pid)
      }).pipe(Effect.scoped, Effect.provide(NodeTransport.layer)))

    if (d.major === 4) {
      it.effect(`.signal(): an abort cancels through the adapter (57014); abort and interrupt cancel once [${d.name}]`, () =>
        Effect.gen(function*() {
          const cluster = yield* EmbeddedPostgres.EmbeddedPostgres
          const monitor = yield* TestSession.connectTo(cluster, { transport: "unix" })
          const counting = countingTransport()
          const app = appName()
          const sql = yield* make({ ...postgresJsPlain(cluster, app), max: 1 })
          // an abort alone: the query fails with 57014, the backend is idle again
          const controller = new AbortController()
          const fiber = yield* PostgresJsAdapter.query(
            sql,
            (sql) => withSignal(sql`SELECT pg_sleep(60)`, controller.signal)
          ).pipe(Effect.provide(counting.layer), Effect.forkChild)
          const pid = yield* sleepingPid(monitor, app)
          controller.abort()
          const exit = yield* Fiber.await(fiber)
          assert.isTrue(Exit.isFailure(exit))
          const error = Exit.isFailure(exit) ? Cause.squash(exit.cause) : undefined
          assert.strictEqual((error as { readonly code?: string }).code, "57014")
          yield* TestSession.waitUntilIdle(monitor, pid)
          assert.strictEqual(counting.count(), 1)
          // an abort, then an interrupt: one cancel
          const second = new AbortController()
          const other = yield* PostgresJsAdapter.query(
            sql,
            (sql) => withSignal(sql`SELECT pg_sleep(60)`, second.signal)
          ).pipe(Effect.provide(counting.layer), Effect.forkChild)
          yield* sleepingPid(monitor, app)
          second.abort()
          yield* Fiber.interrupt(other)
          yield* TestSession.waitUntilIdle(monitor, pid)
          assert.strictEqual(counting.count(), 2)
          const rows = yield* PostgresJsAdapter.query(sql, (sql) => sql`SELECT pg_backend_pid() AS pid`)
          assert.strictEqual(rows[0]!.pid, pid)
        }).pipe(Effect.scoped, Effect.provide(NodeTransport.layer)))
    }

    it.effect(`an unsupported version or a driver of another shape fails at once with a typed error [${d.name}]`, () =>
      Effect.gen(function*() {
        const future = yield* Effect.exit(
          PostgresJsAdapter.make({ host: "127.0.0.1", driver: PostgresJsAdapter.driver(d.driver.postgres, "5.0.0") })
        )
        assert.isTrue(Exit.isFailure(future))
        const error = Exit.isFailure(future) ? Cause.squash(future.cause) : undefined
        assert.strictEqual((error as { readonly _tag?: string })._tag, "PostgresJsAdapterError")
        assert.include(String((error as { readonly message?: string }).message), "postgres.js 5.0.0 is not supported")
        const other = yield* Effect.exit(
          PostgresJsAdapter.make({
            host: "127.0.0.1",
            driver: PostgresJsAdapter.driver(() => ({ options: {} }), d.driver.version)
          })
        )
        assert.isTrue(Exit.isFailure(other))
        assert.include(
          String(Exit.isFailure(other) ? Cause.squash(other.cause) : ""),
          `postgres.js ${d.driver.version} is not supported`
        )
      }).pipe(Effect.scoped))
  }
})
