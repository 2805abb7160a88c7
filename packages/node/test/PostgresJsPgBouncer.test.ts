/**
 * postgres.js behind a real PgBouncer (session and transaction pooling), through the adapter with
 * `retireUnlessCanceled`: the cancel goes to PgBouncer (the session's address, with the key PgBouncer gave),
 * PgBouncer forwards it, the query ends with 57014, so the connection is kept and serves the next query.
 */
import { assert, describe, layer } from "@effect/vitest"
import { NodeTransport } from "@pqcancel/node"
import * as PostgresJsAdapter from "@pqcancel/node/PostgresJsAdapter"
import { EmbeddedPostgres, PgBouncer, TestSession } from "@pqcancel/test-utils"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import {
  forkPostgresJsSleep,
  interruptedOnly,
  makeWith,
  pgBouncerUnavailable,
  postgresJsDrivers,
  sleepingPid
} from "./fixtures.ts"

const reason = pgBouncerUnavailable("PostgresJsAdapter behind PgBouncer")

describe.skipIf(reason !== undefined)("PostgresJsAdapter behind PgBouncer", () => {
  layer(EmbeddedPostgres.layer18, { excludeTestServices: true, timeout: "60 seconds" })(
    "PostgresJsAdapter behind PgBouncer",
    (it) => {
      for (const d of postgresJsDrivers) {
        for (const poolMode of ["session", "transaction"] as const) {
          it.effect(`${poolMode} pooling: the cancel stops the query and the connection is kept [${d.name}]`, () =>
            Effect.gen(function*() {
              const cluster = yield* EmbeddedPostgres.EmbeddedPostgres
              const monitor = yield* TestSession.connectTo(cluster, { transport: "unix" })
              const bouncer = yield* PgBouncer.make(cluster, { poolMode })
              const app = `pgjs-bouncer-${poolMode}-${d.name.replace(/\W+/g, "_")}-${process.pid}`
              let closes = 0
              const sql = yield* makeWith(d.driver)({
                host: bouncer.host,
                port: bouncer.port,
                user: "postgres",
                database: "postgres",
                max: 1,
                // transaction pooling: no named prepared statements
                prepare: false,
                fetch_types: false,
                onnotice: () => {},
                onclose: () => {
                  closes++
                },
                connection: { application_name: app },
                cancel: { retireUnlessCanceled: true }
              })
              const { driverErrorCode, fiber } = yield* forkPostgresJsSleep(sql)
              yield* sleepingPid(monitor, app)
              const exit = yield* Fiber.interrupt(fiber).pipe(Effect.andThen(Fiber.await(fiber)))
              assert.isTrue(interruptedOnly(exit))
              assert.strictEqual(yield* driverErrorCode, "57014")
              // not retired: the same client connection to PgBouncer serves the next query (none was closed)
              const rows = yield* PostgresJsAdapter.query(sql, (sql) => sql`SELECT 1 AS one`)
              assert.strictEqual(rows[0]!.one, 1)
              assert.strictEqual(closes, 0)
            }).pipe(Effect.scoped, Effect.provide(NodeTransport.layer)))
        }
      }
    }
  )
})
