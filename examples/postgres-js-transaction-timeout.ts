/**
 * A postgres.js transaction with a time budget: `PostgresJsAdapter.transaction` runs BEGIN … COMMIT on a reserved
 * connection; when the budget runs out in the middle of a statement, that statement is cancelled on the server, the
 * transaction is rolled back, and nothing of it commits.
 *
 *   npx -y pnpm@10 exec node examples/postgres-js-transaction-timeout.ts
 */
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import { NodeTransport } from "@pqcancel/node"
import * as PostgresJsAdapter from "@pqcancel/node/PostgresJsAdapter"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Database from "./Database.ts"

const program = Effect.gen(function*() {
  const db = yield* Database.Database
  const sql = yield* PostgresJsAdapter.make({
    host: db.host,
    port: db.port,
    username: "postgres",
    database: "postgres",
    ssl: { ca: db.ca }, // verify-full against this CA; the cancel verifies the server the same way
    max: 2,
    onnotice: () => {} // quiet about DROP TABLE IF EXISTS
  })
  const query = PostgresJsAdapter.query
  yield* query(sql, (sql) => sql`DROP TABLE IF EXISTS example_account`)
  yield* query(sql, (sql) => sql`CREATE TABLE example_account (id int PRIMARY KEY, balance int NOT NULL)`)
  yield* query(sql, (sql) => sql`INSERT INTO example_account VALUES (1, 100), (2, 0)`)

  const transfer = PostgresJsAdapter.transaction(sql, (tx) =>
    Effect.gen(function*() {
      yield* query(tx, (tx) => tx`UPDATE example_account SET balance = balance - 10 WHERE id = 1`)
      yield* query(tx, (tx) => tx`SELECT pg_sleep(30) AS slow_step`) // a step that takes far longer than the budget
      yield* query(tx, (tx) => tx`UPDATE example_account SET balance = balance + 10 WHERE id = 2`)
    }))
  const started = performance.now()
  const exit = yield* Effect.exit(transfer.pipe(Effect.timeout("1 second")))
  const took = ((performance.now() - started) / 1000).toFixed(2)
  console.log(`transfer: ${Exit.isFailure(exit) ? "timed out" : "committed"} after ${took} s`)

  const rows = yield* query(
    sql,
    (sql) => sql<Array<{ id: number; balance: number }>>`SELECT id, balance FROM example_account ORDER BY id`
  )
  console.log(`balances: ${rows.map((r) => `${r.id}=${r.balance}`).join(", ")} (rolled back: nothing committed)`)
  const running = yield* query(sql, (sql) =>
    sql<Array<{ n: number }>>`SELECT count(*)::int AS n FROM pg_stat_activity
      WHERE state <> 'idle' AND query LIKE '%AS slow_step'`)
  console.log(`statements still running on the server: ${running[0]!.n}`)
  yield* query(sql, (sql) => sql`DROP TABLE example_account`)
  if (rows[0]!.balance !== 100 || rows[1]!.balance !== 0 || running[0]!.n !== 0) {
    return yield* Effect.die(new Error("the transaction was not rolled back, or its statement still runs"))
  }
})

program.pipe(Effect.scoped, Effect.provide(Layer.merge(Database.layer, NodeTransport.layer)), NodeRuntime.runMain)
