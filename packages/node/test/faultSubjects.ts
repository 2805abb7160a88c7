/**
 * The three adapters as the fault property test and `pnpm soak` drive them: statements through an adapter's public
 * entry points, with the cancel's bounds, and whether it retired its connection. node-postgres: a Client (shared by
 * the caller's fibers; the adapter queues them); postgres.js and `@effect/sql-pg`: a pool of `size` connections
 * (postgres.js pipelines on them).
 */
import * as PgClient from "@effect/sql-pg/PgClient"
import { NodeTransport } from "@pqcancel/node"
import * as PgAdapter from "@pqcancel/node/PgAdapter"
import * as PostgresJsAdapter from "@pqcancel/node/PostgresJsAdapter"
import * as SqlPgAdapter from "@pqcancel/node/SqlPgAdapter"
import * as Context from "effect/Context"
import * as Data from "effect/Data"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import type * as Scope from "effect/Scope"

/** The cancel's bounds */
export interface Bounds {
  readonly cancelTimeout: Duration.Duration
  readonly drainTimeout: Duration.Duration
}

/** A statement's failure, with the driver's message */
export class StatementFailed extends Data.TaggedError("StatementFailed")<{ readonly message: string }> {}
const failed = (error: { readonly message: string }) => new StatementFailed({ message: error.message })

/** An adapter's session (or pool): statements, and whether the adapter retired it */
export interface Subject {
  readonly run: (sql: string) => Effect.Effect<unknown, StatementFailed>
  /** a Client the adapter ended (pools reconnect a retired slot: false) */
  readonly retired: () => boolean
}

export interface Adapter {
  readonly name: string
  /** a session (or pool of `size`) to 127.0.0.1:`port`; failing to open it is a defect */
  readonly open: (port: number, bounds: Bounds, size: number) => Effect.Effect<Subject, never, Scope.Scope>
}

export const adapters: ReadonlyArray<Adapter> = [
  {
    name: "node-postgres Client",
    open: (port, bounds) =>
      Effect.map(
        Effect.orDie(PgAdapter.connect({ host: "127.0.0.1", port, user: "postgres" })),
        (client): Subject => ({
          run: (text) =>
            PgAdapter.query(client, undefined, text, [], bounds).pipe(
              Effect.mapError(failed),
              Effect.provide(NodeTransport.layer)
            ),
          retired: () => PgAdapter.isRetired(client)
        })
      )
  },
  {
    name: "postgres.js",
    open: (port, bounds, size) =>
      Effect.map(
        Effect.orDie(PostgresJsAdapter.make({
          host: "127.0.0.1",
          port,
          user: "postgres",
          database: "postgres",
          max: size,
          onnotice: () => {},
          cancel: bounds
        })),
        (sql): Subject => ({
          run: (text) =>
            PostgresJsAdapter.query(sql, (s) => s.unsafe(text)).pipe(
              Effect.mapError(failed),
              Effect.provide(NodeTransport.layer)
            ),
          retired: () => false
        })
      )
  },
  {
    name: "@effect/sql-pg",
    open: (port, bounds, size) =>
      Effect.gen(function*() {
        const context = yield* Layer.build(
          SqlPgAdapter.layer({ host: "127.0.0.1", port, username: "postgres", maxConnections: size }, bounds).pipe(
            Layer.provide(NodeTransport.layer)
          )
        )
        const sql = Context.get(context, PgClient.PgClient)
        return {
          run: (text: string) => Effect.mapError(sql.unsafe(text), failed),
          retired: () => false
        } satisfies Subject
      }).pipe(Effect.orDie)
  }
]

/** SQLSTATE 57014's text: a statement that ends with it was cancelled */
export const CANCELED = "canceling statement due to user request"
