/**
 * Where the examples' PostgreSQL is: the server in `DATABASE_URL` (with its CA in `PGSSLROOTCERT`) when set, as
 * `examples/test` does with one shared cluster; otherwise a throwaway embedded PostgreSQL 18 with TLS, started
 * for the program and stopped when it ends (`@pqcancel/test-utils`, as the demo does).
 */
import { EmbeddedPostgres } from "@pqcancel/test-utils"
import * as Config from "effect/Config"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as Fs from "node:fs"

/** A database the examples connect to over TLS with `sslmode=verify-full`. */
export class Database extends Context.Service<Database, {
  /** `postgres://…?sslmode=verify-full&sslrootcert=…` (node-postgres reads the CA from it; other drivers need `ca`) */
  readonly url: Redacted.Redacted<string>
  /** the CA certificate (PEM), for drivers given it in memory (`ssl: { ca }`) */
  readonly ca: string
  /** libpq's keywords for the same server, e.g. for `ConnectionOptions.fromString` */
  readonly conninfo: string
  readonly host: string
  readonly port: number
}>()("examples/Database") {}

const of = (host: string, port: number, caPath: string) =>
  Database.of({
    url: Redacted.make(
      `postgres://postgres@${host}:${port}/postgres?sslmode=verify-full&sslrootcert=${encodeURIComponent(caPath)}`
    ),
    ca: Fs.readFileSync(caPath, "utf8"),
    conninfo: `host=${host} port=${port} user=postgres dbname=postgres sslmode=verify-full sslrootcert=${caPath}`,
    host,
    port
  })

/** `DATABASE_URL` + `PGSSLROOTCERT` when set, else an embedded PostgreSQL 18 owned by the layer. */
export const layer = Layer.effect(
  Database,
  Effect.gen(function*() {
    const given = yield* Config.option(
      Config.all({ url: Config.URL("DATABASE_URL"), ca: Config.String("PGSSLROOTCERT") })
    )
    if (Option.isSome(given)) {
      const { url, ca } = given.value
      return of(url.hostname, Number(url.port || 5432), ca)
    }
    const cluster = yield* EmbeddedPostgres.make({ version: 18 })
    return of("localhost", cluster.port, cluster.caCertPath)
  })
)
