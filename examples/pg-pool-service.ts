/**
 * A `pg.Pool` as an Effect service with per-request timeouts: every query runs through `PgAdapter.poolQuery`, so a
 * request that runs out of time is cancelled on the server and its client goes back to the pool idle (or is
 * destroyed when that cannot be confirmed) — never handed to the next request with a statement still running.
 *
 *   npx -y pnpm@10 exec node examples/pg-pool-service.ts
 */
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import type { CancelError } from "@pqcancel/core"
import { Transport } from "@pqcancel/core"
import { NodeTransport } from "@pqcancel/node"
import * as PgAdapter from "@pqcancel/node/PgAdapter"
import type * as Cause from "effect/Cause"
import * as Context from "effect/Context"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import pg from "pg"
import * as Database from "./Database.ts"

type Failure =
  | PgAdapter.PgQueryError
  | PgAdapter.PgNotConnected
  | PgAdapter.PgInternalsChanged
  | CancelError.InvalidOption
  | Cause.TimeoutError

/** The application's database: a query with a time budget. */
class Db extends Context.Service<Db, {
  readonly query: <R extends pg.QueryResultRow>(
    text: string,
    values?: ReadonlyArray<unknown>,
    options?: { readonly timeout?: Duration.Input }
  ) => Effect.Effect<ReadonlyArray<R>, Failure>
  readonly pool: pg.Pool
}>()("examples/Db") {}

const DbLive: Layer.Layer<Db, never, Database.Database> = Layer.effect(
  Db,
  Effect.gen(function*() {
    const { url } = yield* Database.Database
    const transport = yield* Transport.Transport
    const pool = yield* Effect.acquireRelease(
      Effect.sync(() => new pg.Pool({ connectionString: Redacted.value(url), max: 4 })),
      (pool) => Effect.promise(() => pool.end())
    )
    pool.on("error", () => {}) // an idle client's connection error: the pool replaces it
    return Db.of({
      pool,
      query: <R extends pg.QueryResultRow>(
        text: string,
        values: ReadonlyArray<unknown> = [],
        options: { readonly timeout?: Duration.Input } = {}
      ) =>
        PgAdapter.poolQuery<R>(pool, undefined, text, [...values]).pipe(
          Effect.map((result) => result.rows),
          Effect.timeout(options.timeout ?? "5 seconds"), // interrupts ⇒ cancelled on the server
          Effect.provideService(Transport.Transport, transport)
        )
    })
  })
).pipe(Layer.provide(NodeTransport.layer))

const program = Effect.gen(function*() {
  const db = yield* Db
  // eight requests at once on a pool of four: four quick ones within 10 s, four that outlive their 500 ms budget
  const requests = Array.from({ length: 8 }, (_, i) => {
    const [seconds, timeout] = i % 2 === 0 ? [0.05, "10 seconds"] as const : [30, "500 millis"] as const
    return db.query(`SELECT pg_sleep(${seconds}), ${i} AS request`, [], { timeout }).pipe(
      Effect.match({
        onFailure: (e) => `request ${i} (${timeout}): ${e._tag}`,
        onSuccess: () => `request ${i} (${timeout}): answered`
      })
    )
  })
  for (const line of yield* Effect.all(requests, { concurrency: "unbounded" })) console.log(line)

  const running = yield* db.query<{ n: number }>(
    "SELECT count(*)::int AS n FROM pg_stat_activity WHERE state = 'active' AND query LIKE 'SELECT pg_sleep(30), % AS request'"
  )
  console.log(`statements still running on the server: ${running[0]!.n}`)
  console.log(`pool: ${db.pool.totalCount} clients, ${db.pool.idleCount} idle, ${db.pool.waitingCount} waiting`)
  if (running[0]!.n !== 0) return yield* Effect.die(new Error("a timed-out statement is still running"))
})

program.pipe(Effect.provide(DbLive.pipe(Layer.provide(Database.layer))), NodeRuntime.runMain)
