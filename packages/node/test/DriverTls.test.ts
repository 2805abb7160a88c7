/**
 * The cancel derived from a driver session presents exactly the TLS material the session had: with libpq's default
 * files present (`~/.postgresql/root.crt` from another CA, an unreadable `postgresql.crt` / `postgresql.key` — HOME
 * pointed at a directory holding them), a node-postgres, postgres.js or `@effect/sql-pg` session that verified nothing, or verified
 * with its own CA and had no client certificate, still cancels: the cancel reads none of those files (reading the
 * root certificate would make `require` verify against the wrong CA; reading the client certificate would fail).
 */
import * as PgClient from "@effect/sql-pg/PgClient"
import { assert, layer } from "@effect/vitest"
import { NodeTransport } from "@pqcancel/node"
import * as PgAdapter from "@pqcancel/node/PgAdapter"
import * as PostgresJsAdapter from "@pqcancel/node/PostgresJsAdapter"
import * as SqlPgAdapter from "@pqcancel/node/SqlPgAdapter"
import { EmbeddedPostgres, TestSession } from "@pqcancel/test-utils"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import { retiredCount, sleepingPid } from "./fixtures.ts"

/** HOME pointed at a directory whose ~/.postgresql holds a wrong root certificate and an unreadable client pair */
const homeWithDefaultFiles = Effect.acquireRelease(
  Effect.sync(() => {
    const home = Fs.mkdtempSync(Path.join(Os.tmpdir(), "pqcancel-home-"))
    const dir = Path.join(home, ".postgresql")
    Fs.mkdirSync(dir)
    Fs.copyFileSync(EmbeddedPostgres.fixturePath("wrong-ca.crt"), Path.join(dir, "root.crt"))
    Fs.writeFileSync(Path.join(dir, "postgresql.crt"), "not a certificate")
    Fs.writeFileSync(Path.join(dir, "postgresql.key"), "not a key")
    const previous = process.env["HOME"]
    process.env["HOME"] = home
    assert.strictEqual(Os.homedir(), home)
    return { home, previous }
  }),
  ({ home, previous }) =>
    Effect.sync(() => {
      if (previous === undefined) delete process.env["HOME"]
      else process.env["HOME"] = previous
      Fs.rmSync(home, { recursive: true, force: true })
    })
)

const sessions = [
  { name: "unverified (rejectUnauthorized: false)", ssl: (_ca: string) => ({ rejectUnauthorized: false }) },
  { name: "verified with its own CA, no client certificate", ssl: (ca: string) => ({ ca }) }
]

let apps = 0

layer(EmbeddedPostgres.layer18, { excludeTestServices: true, timeout: "60 seconds" })(
  "the cancel presents the session's TLS material only",
  (it) => {
    for (const session of sessions) {
      it.effect(`node-postgres, ${session.name}: libpq's default files are not read`, () =>
        Effect.gen(function*() {
          const cluster = yield* EmbeddedPostgres.EmbeddedPostgres
          const monitor = yield* TestSession.connectTo(cluster, { transport: "unix" })
          yield* homeWithDefaultFiles
          const app = `tls-home-${++apps}`
          const client = yield* PgAdapter.connect({
            host: "localhost",
            port: cluster.port,
            user: "postgres",
            application_name: app,
            ssl: session.ssl(Fs.readFileSync(cluster.caCertPath, "utf8"))
          })
          const fiber = yield* PgAdapter.query(client, undefined, "SELECT pg_sleep(60)", [], {
            cancelTimeout: "5 seconds"
          }).pipe(Effect.forkChild)
          yield* sleepingPid(monitor, app)
          yield* Fiber.interrupt(fiber)
          assert.isFalse(PgAdapter.isRetired(client), "the cancel was dispatched and the statement ended 57014")
          assert.strictEqual((yield* PgAdapter.query(client, undefined, "SELECT 42 AS n")).rows[0]?.["n"], 42)
        }).pipe(Effect.provide(NodeTransport.layer), Effect.provideService(Metric.MetricRegistry, new Map())))

      it.effect(`postgres.js, ${session.name}: libpq's default files are not read`, () =>
        Effect.gen(function*() {
          const cluster = yield* EmbeddedPostgres.EmbeddedPostgres
          const monitor = yield* TestSession.connectTo(cluster, { transport: "unix" })
          yield* homeWithDefaultFiles
          const app = `tls-home-${++apps}`
          const sql = yield* PostgresJsAdapter.make({
            host: "localhost",
            port: cluster.port,
            user: "postgres",
            database: "postgres",
            max: 1,
            onnotice: () => {},
            connection: { application_name: app },
            ssl: session.ssl(Fs.readFileSync(cluster.caCertPath, "utf8")),
            cancel: { cancelTimeout: "5 seconds" }
          })
          const fiber = yield* Effect.forkChild(PostgresJsAdapter.query(sql, (s) => s`SELECT pg_sleep(60)`))
          yield* sleepingPid(monitor, app)
          yield* Fiber.interrupt(fiber)
          assert.strictEqual(yield* retiredCount, 0, "the cancel was dispatched and the statement ended 57014")
          const rows = yield* PostgresJsAdapter.query(sql, (s) => s`SELECT 42 AS n`)
          assert.strictEqual(rows[0]?.["n"], 42)
        }).pipe(Effect.provide(NodeTransport.layer), Effect.provideService(Metric.MetricRegistry, new Map())))

      it.effect(`@effect/sql-pg, ${session.name}: libpq's default files are not read`, () =>
        Effect.gen(function*() {
          const cluster = yield* EmbeddedPostgres.EmbeddedPostgres
          const monitor = yield* TestSession.connectTo(cluster, { transport: "unix" })
          yield* homeWithDefaultFiles
          const app = `tls-home-${++apps}`
          const context = yield* Layer.build(
            SqlPgAdapter.layer({
              host: "localhost",
              port: cluster.port,
              username: "postgres",
              applicationName: app,
              maxConnections: 1,
              ssl: session.ssl(Fs.readFileSync(cluster.caCertPath, "utf8"))
            }, { cancelTimeout: "5 seconds" }).pipe(Layer.provide(NodeTransport.layer))
          )
          const sql = Context.get(context, PgClient.PgClient)
          const fiber = yield* Effect.forkChild(sql`SELECT pg_sleep(60)`)
          yield* sleepingPid(monitor, app)
          yield* Fiber.interrupt(fiber)
          assert.strictEqual(yield* retiredCount, 0, "the cancel was dispatched and the statement ended 57014")
          assert.strictEqual((yield* sql<{ n: number }>`SELECT 42 AS n`)[0]?.n, 42)
        }).pipe(Effect.provideService(Metric.MetricRegistry, new Map())))
    }
  }
)
