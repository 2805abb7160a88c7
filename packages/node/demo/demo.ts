/**
 * pqcancel demo: on a throwaway embedded PostgreSQL 18 with TLS, run a slow query from a node-postgres session and
 * cancel it with pqcancel — over TLS with sslmode=verify-full, over direct TLS, over a unix socket, and by simply
 * interrupting the fiber — printing every status transition with its time, the query's SQLSTATE, and proof that
 * the session is still usable; then an Effect HTTP server whose @effect/sql-pg query is cancelled when the HTTP
 * client aborts (`httpAbort.ts`). Exits 0 and leaves nothing running.
 *
 * Run it with `npx -y pnpm@10 demo`.
 */
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import { CancelConnection, ConnectionOptions } from "@pqcancel/core"
import { NodeTransport } from "@pqcancel/node"
import * as PgAdapter from "@pqcancel/node/PgAdapter"
import { EmbeddedPostgres } from "@pqcancel/test-utils"
import * as Clock from "effect/Clock"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Schedule from "effect/Schedule"
import * as Stream from "effect/Stream"
import * as Fs from "node:fs"
import type pg from "pg"
import { gssDemo } from "./gss.ts"
import { httpAbortScenario } from "./httpAbort.ts"

const log = (line: string) => Effect.sync(() => console.log(line))

// Wait on pg_stat_activity until the backend is really inside pg_sleep (bounded)
const waitUntil = (monitor: pg.Client, pid: number, condition: string) =>
  Effect.promise(() => monitor.query(`SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND ${condition}`, [pid])).pipe(
    Effect.repeat({ schedule: Schedule.spaced("5 millis"), until: (r) => (r.rowCount ?? 0) > 0 }),
    Effect.timeout("10 seconds"),
    Effect.orDie
  )

const scenario = Effect.fn("scenario")(function*(
  title: string,
  session: pg.ClientConfig,
  cancelConninfo: string
) {
  const cluster = yield* EmbeddedPostgres.EmbeddedPostgres
  yield* log(`\n== ${title}`)
  const client = yield* PgAdapter.connect(session)
  const monitor = yield* PgAdapter.connect({ host: cluster.socketDir, port: cluster.port, user: "postgres" })
  const options = yield* ConnectionOptions.fromString(cancelConninfo)
  const info = yield* PgAdapter.sessionInfo(client, options)
  const where = info.address._tag === "Unix" ? info.address.path : `${info.address.address}:${info.address.port}`
  yield* log(`   session: backend pid ${info.key!.pid}, connected to ${where}; cancel options: ${cancelConninfo}`)

  const running = yield* Effect.promise(() =>
    client.query("SELECT pg_sleep(60)").then(
      () => "finished (not cancelled!)",
      (error: { code?: string; message: string }) => `failed with SQLSTATE ${error.code}: ${error.message}`
    )
  ).pipe(Effect.forkChild)
  yield* waitUntil(monitor, info.key!.pid, "wait_event = 'PgSleep'")
  yield* log("   query `SELECT pg_sleep(60)` is running on the server")

  const cancel = yield* CancelConnection.make(info)
  const watching = yield* Deferred.make<void>()
  const finished = yield* Deferred.make<void>()
  const t0 = Number(yield* Clock.currentTimeNanos) / 1e6
  yield* cancel.changes.pipe(
    Stream.runForEach((t) =>
      Effect.gen(function*() {
        yield* Deferred.succeed(watching, undefined)
        yield* log(`   +${(t.at - t0).toFixed(2).padStart(7)} ms  ${t.status}`)
        if (t.status === "OK" || t.status === "BAD") yield* Deferred.succeed(finished, undefined)
      })
    ),
    Effect.forkChild
  )
  yield* Deferred.await(watching)
  yield* cancel.blocking()
  yield* Deferred.await(finished)
  yield* log(`   cancel dispatched in ${(Number(yield* Clock.currentTimeNanos) / 1e6 - t0).toFixed(2)} ms`)
  yield* log(`   the query ${yield* Fiber.join(running)}`)
  const still = yield* Effect.promise(() => client.query("SELECT 'still usable' AS ok"))
  yield* log(`   same session afterwards: ${still.rows[0].ok}`)
})

const interruptScenario = Effect.fn("interruptScenario")(function*() {
  const cluster = yield* EmbeddedPostgres.EmbeddedPostgres
  yield* log("\n== Interrupt the fiber ⇒ the query stops on the server (PgAdapter.query + Effect.timeout)")
  const ca = Fs.readFileSync(cluster.caCertPath, "utf8")
  const client = yield* PgAdapter.connect({
    host: "localhost",
    port: cluster.port,
    user: "postgres",
    ssl: { ca, servername: "localhost" }
  })
  const options = yield* ConnectionOptions.fromString(
    `host=localhost port=${cluster.port} sslmode=verify-full sslrootcert=${cluster.caCertPath} connect_timeout=5`
  )
  const t0 = performance.now()
  const exit = yield* PgAdapter.query(client, options, "SELECT pg_sleep(60)").pipe(
    Effect.timeout("300 millis"),
    Effect.exit
  )
  yield* log(
    `   Effect.timeout("300 millis") fired; the fiber ended (${exit._tag}) after ${
      (performance.now() - t0).toFixed(1)
    } ms, once the server had stopped the query`
  )
  const still = yield* Effect.promise(() => client.query("SELECT 'still usable' AS ok"))
  yield* log(`   same session afterwards: ${still.rows[0].ok}`)
})

const program = Effect.gen(function*() {
  const cluster = yield* EmbeddedPostgres.EmbeddedPostgres
  yield* log(`embedded PostgreSQL ${cluster.version} on 127.0.0.1:${cluster.port} and ${cluster.socketPath} (TLS on)`)
  const ca = Fs.readFileSync(cluster.caCertPath, "utf8")
  const tls = { ca, servername: "localhost" }
  yield* scenario(
    "TLS via SSLRequest, sslmode=verify-full",
    { host: "localhost", port: cluster.port, user: "postgres", ssl: tls },
    `host=localhost port=${cluster.port} sslmode=verify-full sslrootcert=${cluster.caCertPath} connect_timeout=5`
  )
  yield* scenario(
    "Direct TLS (sslnegotiation=direct, ALPN postgresql), sslmode=verify-full",
    { host: "localhost", port: cluster.port, user: "postgres", ssl: tls },
    `host=localhost port=${cluster.port} sslmode=verify-full sslnegotiation=direct sslrootcert=${cluster.caCertPath} connect_timeout=5`
  )
  yield* scenario(
    "Unix socket",
    { host: cluster.socketDir, port: cluster.port, user: "postgres" },
    `host=${cluster.socketDir} port=${cluster.port} connect_timeout=5`
  )
  yield* interruptScenario()
  yield* httpAbortScenario()
  // GSSAPI encryption on its own Kerberos realm and GSS-enabled server (skipped with a message where unavailable)
  yield* gssDemo(scenario)
  yield* log("\nAll cancels dispatched over the session's encryption; stopping PostgreSQL.")
})

program.pipe(
  Effect.scoped,
  Effect.provide(Layer.merge(EmbeddedPostgres.layer({ version: 18 }), NodeTransport.layer)),
  NodeRuntime.runMain
)
