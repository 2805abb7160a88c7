/**
 * The drivers of `pnpm bench:adapters`, each twice: bare (its defaults, each query wrapped in Effect the way an Effect
 * user calls it) and through its pqcancel adapter. Every adapter call is in one small function here (`*Adapter`), so
 * a change of an adapter's API is made in one place.
 */
import * as PgClient from "@effect/sql-pg/PgClient"
import type { Transport } from "@pqcancel/core/Transport"
import * as PgAdapter from "@pqcancel/node/PgAdapter"
import * as PostgresJsAdapter from "@pqcancel/node/PostgresJsAdapter"
import * as SqlPgAdapter from "@pqcancel/node/SqlPgAdapter"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import type * as Scope from "effect/Scope"
import * as SqlClient from "effect/sql/SqlClient"
import type { SqlError } from "effect/sql/SqlError"
import * as Fs from "node:fs"
import * as Path from "node:path"
import * as Url from "node:url"
import pg from "pg"
import postgres from "postgres"
import postgres4 from "postgres4"
import type { BenchError } from "./node-systems.ts"
import { benchError } from "./node-systems.ts"

/** The version of an installed package, from the package.json above its entry point. */
export const packageVersion = (name: string): string => {
  let dir = Path.dirname(Url.fileURLToPath(import.meta.resolve(name)))
  for (;;) {
    const manifest = Path.join(dir, "package.json")
    if (Fs.existsSync(manifest)) {
      const version = (JSON.parse(Fs.readFileSync(manifest, "utf8")) as { readonly version?: string }).version
      if (version !== undefined) return version
    }
    const parent = Path.dirname(dir)
    if (parent === dir) return "?"
    dir = parent
  }
}

/** Where the drivers connect: plain TCP on loopback, as the `postgres` superuser. */
export interface Target {
  readonly host: string
  readonly port: number
}

/** The pool size of every system. */
export const poolSize = 8

/** A statement as each driver's users write it (postgres.js and sql-pg: a tagged template, so a prepared one). */
export interface Statement {
  readonly id: "select1" | "sleep1ms"
  readonly label: string
  readonly text: string
  readonly postgresJs: (sql: postgres.Sql<{}>) => postgres.PendingQuery<ReadonlyArray<postgres.Row>>
  readonly sqlPg: (sql: SqlClient.SqlClient) => Effect.Effect<unknown, SqlError>
}

export const statements: ReadonlyArray<Statement> = [
  {
    id: "select1",
    label: "SELECT 1",
    text: "SELECT 1",
    postgresJs: (sql) => sql`SELECT 1`,
    sqlPg: (sql) => sql`SELECT 1`
  },
  {
    id: "sleep1ms",
    label: "SELECT pg_sleep(0.001)",
    text: "SELECT pg_sleep(0.001)",
    postgresJs: (sql) => sql`SELECT pg_sleep(0.001)`,
    sqlPg: (sql) => sql`SELECT pg_sleep(0.001)`
  }
]

/**
 * Runs one statement; built once per system (its pool lives in the Scope). An adapter's statements need the
 * `Transport` (for a cancel): the bench provides it once around all slices, as an application provides it once at its
 * root — providing it per query would merge a context per query, which the bare side does not pay.
 */
export type Runner = (statement: Statement) => Effect.Effect<unknown, BenchError, Transport>

export interface Driver {
  readonly id: string
  readonly label: string
  /** the npm package (or alias) the bare side imports, for its version */
  readonly package: string
  readonly bare: (target: Target) => Effect.Effect<Runner, BenchError, Scope.Scope>
  readonly adapter: (target: Target) => Effect.Effect<Runner, BenchError, Scope.Scope | Transport>
}

// ---------------------------------------------------------------------------------------------------------------------
// node-postgres: pool.query (its default: the simple protocol for a statement without parameters)
// ---------------------------------------------------------------------------------------------------------------------

const pgPool = (target: Target) =>
  Effect.acquireRelease(
    Effect.sync(() =>
      new pg.Pool({ host: target.host, port: target.port, user: "postgres", database: "postgres", max: poolSize })
        .on("error", () => undefined)
    ),
    (pool) => Effect.promise(() => pool.end())
  )

const pgAdapter = (pool: pg.Pool): Runner => (statement) =>
  PgAdapter.poolQuery(pool, undefined, statement.text).pipe(Effect.mapError(benchError("PgAdapter.poolQuery")))

// ---------------------------------------------------------------------------------------------------------------------
// postgres.js: its defaults (pipelining on), tagged templates
// ---------------------------------------------------------------------------------------------------------------------

const postgresJsOptions = (target: Target) => ({
  host: target.host,
  port: target.port,
  user: "postgres",
  database: "postgres",
  max: poolSize,
  ssl: false as const,
  onnotice: () => undefined
})

const postgresJsAdapter = Effect.fnUntraced(function*(target: Target, driver?: PostgresJsAdapter.Driver) {
  const sql = yield* PostgresJsAdapter.make({ ...postgresJsOptions(target), driver }).pipe(
    Effect.mapError(benchError("PostgresJsAdapter.make"))
  )
  return ((statement) =>
    PostgresJsAdapter.query(sql, statement.postgresJs).pipe(
      Effect.mapError(benchError("PostgresJsAdapter.query"))
    )) satisfies Runner
})

const postgresJs = (
  id: string,
  packageName: string,
  make: typeof postgres,
  adapter: (target: Target) => Effect.Effect<Runner, BenchError, Scope.Scope | Transport>
): Driver => ({
  id,
  label: "postgres.js",
  package: packageName,
  bare: (target) =>
    Effect.map(
      Effect.acquireRelease(
        Effect.sync(() => make(postgresJsOptions(target))),
        (sql) => Effect.promise(() => sql.end({ timeout: 0 }))
      ),
      (sql): Runner => (statement) =>
        Effect.tryPromise({ try: () => statement.postgresJs(sql), catch: benchError("postgres.js") })
    ),
  adapter
})

// ---------------------------------------------------------------------------------------------------------------------
// @effect/sql-pg: PgClient.layer against SqlPgAdapter.layer, the same config
// ---------------------------------------------------------------------------------------------------------------------

const sqlPgConfig = (target: Target, multiplex: boolean): PgClient.PgPoolConfig => ({
  host: target.host,
  port: target.port,
  username: "postgres",
  database: "postgres",
  ssl: false,
  maxConnections: poolSize,
  multiplex
})

const sqlPgRunner = <E, R>(layer: Layer.Layer<SqlClient.SqlClient, E, R>) =>
  Layer.build(layer).pipe(
    Effect.mapError(benchError("sql-pg layer")),
    Effect.map((context): Runner => {
      const sql = Context.get(context, SqlClient.SqlClient)
      return (statement) => Effect.mapError(statement.sqlPg(sql), benchError("sql-pg"))
    })
  )

const sqlPgAdapter = (target: Target, multiplex: boolean) =>
  sqlPgRunner(SqlPgAdapter.layer(sqlPgConfig(target, multiplex)))

const sqlPg = (multiplex: boolean): Driver => ({
  id: multiplex ? "sqlpg-multiplex" : "sqlpg",
  label: `@effect/sql-pg${multiplex ? " (multiplex)" : ""}`,
  package: "@effect/sql-pg",
  bare: (target) => sqlPgRunner(PgClient.layer(sqlPgConfig(target, multiplex))),
  adapter: (target) => sqlPgAdapter(target, multiplex)
})

export const drivers: ReadonlyArray<Driver> = [
  {
    id: "pg",
    label: "node-postgres",
    package: "pg",
    bare: (target) =>
      Effect.map(
        pgPool(target),
        (pool): Runner => (statement) =>
          Effect.tryPromise({ try: () => pool.query(statement.text), catch: benchError("pg") })
      ),
    adapter: (target) =>
      Effect.gen(function*() {
        return pgAdapter(yield* pgPool(target))
      })
  },
  postgresJs("postgresjs", "postgres", postgres, (target) => postgresJsAdapter(target)),
  postgresJs(
    "postgresjs4",
    "postgres4",
    postgres4 as unknown as typeof postgres,
    (target) => postgresJsAdapter(target, PostgresJsAdapter.driver(postgres4, packageVersion("postgres4")))
  ),
  sqlPg(false),
  sqlPg(true)
]
