/**
 * Demo section: the story our users live. An Effect HTTP server (effect's own, on Node) whose handler runs a slow
 * query through `@effect/sql-pg` over TLS (verify-full); a real HTTP client (`fetch` + `AbortController`) gives up
 * after ~200 ms. The server interrupts the handler fiber, pqcancel sends the CancelRequest over TLS to the session's
 * address, the backend is idle again in pg_stat_activity, and the next request is served by the same pooled
 * connection (same backend pid).
 */
import * as NodeHttpServer from "@effect/platform-node/NodeHttpServer"
import * as SqlPgAdapter from "@pqcancel/node/SqlPgAdapter"
import { EmbeddedPostgres, TestSession } from "@pqcancel/test-utils"
import * as Context from "effect/Context"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as HttpRouter from "effect/http/HttpRouter"
import * as HttpServer from "effect/http/HttpServer"
import * as HttpServerResponse from "effect/http/HttpServerResponse"
import * as Layer from "effect/Layer"
import * as SqlClient from "effect/sql/SqlClient"
import * as Fs from "node:fs"
import * as Http from "node:http"
import { narratedTransport } from "./narratedTransport.ts"

const t0 = performance.now()
const stamp = () => `+${(performance.now() - t0).toFixed(1).padStart(8)} ms`
const say = (line: string) => console.log(`   ${stamp()}  ${line}`)
const log = (line: string) => Effect.sync(() => say(line))

/** NodeTransport, narrating the cancel connection: where it goes, the TLS handshake, the CancelRequest inside it */
const narrated = narratedTransport((step) => {
  switch (step._tag) {
    case "Connect":
      return say(`pqcancel: cancel connection to ${step.to} (the session's own address), sslmode=${step.sslmode}`)
    case "TlsEstablished":
      return say("pqcancel: TLS established on the cancel connection (server certificate verified)")
    case "RequestWritten":
      return say(`pqcancel: CancelRequest written (16 bytes, ${step.tls ? "inside TLS" : "PLAINTEXT"})`)
    case "Eof":
      return say("pqcancel: the server closed the cancel connection: the cancel was dispatched")
  }
})

/**
 * Runs the HTTP-abort story against the cluster; everything it starts is owned by the caller's Scope.
 */
export const httpAbortScenario = Effect.fn("httpAbortScenario")(function*() {
  const cluster = yield* EmbeddedPostgres.EmbeddedPostgres
  yield* Effect.sync(() =>
    console.log(
      "\n== An Effect HTTP server, @effect/sql-pg over TLS, and a client that gives up (fetch + AbortController)"
    )
  )
  const monitor = yield* TestSession.connectTo(cluster, { transport: "unix" })
  const started = yield* Deferred.make<number>()

  const SqlLive = SqlPgAdapter.layer({
    host: "localhost",
    port: cluster.port,
    username: "postgres",
    ssl: { ca: Fs.readFileSync(cluster.caCertPath, "utf8") },
    maxConnections: 1
  }).pipe(Layer.provide(narrated))

  const backendPid = Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const rows = yield* sql<{ pid: number }>`SELECT pg_backend_pid() AS pid`
    return rows[0]!.pid
  })

  const Routes = Layer.mergeAll(
    HttpRouter.add(
      "GET",
      "/report",
      Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        yield* Deferred.succeed(started, yield* backendPid)
        const rows = yield* sql`SELECT pg_sleep(60) AS slow_report`
        return yield* HttpServerResponse.json(rows)
      }).pipe(
        Effect.onInterrupt(() => log("server: the handler fiber was interrupted (its query had been cancelled)")),
        Effect.orDie
      )
    ),
    HttpRouter.add("GET", "/pid", Effect.map(Effect.orDie(backendPid), (pid) => HttpServerResponse.text(String(pid))))
  )

  const server = yield* Layer.build(
    HttpRouter.serve(Routes, { disableLogger: true, disableListenLog: true }).pipe(
      Layer.provideMerge(NodeHttpServer.layer(() => Http.createServer(), { port: 0, host: "127.0.0.1" })),
      Layer.provide(SqlLive)
    )
  )
  const address = Context.get(server, HttpServer.HttpServer).address
  const base = address._tag === "UnixPathAddress" ? "http://127.0.0.1" : `http://127.0.0.1:${address.port}`
  yield* log(`server: listening on ${base}`)

  const firstPid = yield* Effect.promise(() => fetch(`${base}/pid`).then((r) => r.text()))
  yield* log(`client: GET /pid → served by backend pid ${firstPid} (the pool's one TLS connection)`)

  // the client: GET /report, and give up after ~200 ms
  const controller = new AbortController()
  const requested = performance.now()
  const response = fetch(`${base}/report`, { signal: controller.signal }).then(
    (r) => `answered ${r.status} (not aborted!)`,
    (error: Error) => `${error.name} after ${(performance.now() - requested).toFixed(0)} ms`
  )
  yield* log("client: GET /report (runs SELECT pg_sleep(60))")
  const pid = yield* Deferred.await(started)
  yield* TestSession.waitUntilSleeping(monitor, pid)
  yield* log(`server: backend ${pid} is inside pg_sleep (pg_stat_activity)`)
  const remaining = Math.max(0, 200 - (performance.now() - requested))
  yield* Effect.sleep(`${remaining} millis`)
  controller.abort()
  yield* log("client: AbortController.abort()")
  yield* log(`client: fetch rejected with ${yield* Effect.promise(() => response)}`)

  yield* TestSession.waitUntilIdle(monitor, pid)
  const state = yield* monitor.query(`SELECT state, wait_event FROM pg_stat_activity WHERE pid = ${pid}`)
  const [status, waitEvent] = state._tag === "Ok" ? state.rows[0]! : ["?", "?"]
  yield* log(`pg_stat_activity: backend ${pid} is ${status} (wait_event ${waitEvent}): the query stopped`)

  const nextPid = yield* Effect.promise(() => fetch(`${base}/pid`).then((r) => r.text()))
  yield* log(
    `client: next GET /pid → backend pid ${nextPid}: ${
      nextPid === String(pid) ? "the same pooled connection, reused" : "A DIFFERENT CONNECTION"
    }`
  )
  if (nextPid !== String(pid)) return yield* Effect.die(new Error("the pooled connection was not reused"))
}, Effect.scoped)
