/**
 * HTTP abort with `@effect/sql-pg`: an Effect HTTP server whose handler runs a slow statement through
 * `SqlPgAdapter`, and a `fetch` client that gives up after 200 ms. The server interrupts the handler's fiber, pqcancel
 * cancels the statement on the server (over TLS, at the session's own address), and the pool's one connection is
 * free again at once for the next request — without pqcancel it would be busy for the rest of the 60 s.
 *
 *   npx -y pnpm@10 exec node examples/http-abort.ts
 */
import * as NodeHttpServer from "@effect/platform-node/NodeHttpServer"
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import { NodeTransport } from "@pqcancel/node"
import * as SqlPgAdapter from "@pqcancel/node/SqlPgAdapter"
import * as Context from "effect/Context"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as HttpRouter from "effect/http/HttpRouter"
import * as HttpServer from "effect/http/HttpServer"
import * as HttpServerResponse from "effect/http/HttpServerResponse"
import * as Layer from "effect/Layer"
import * as SqlClient from "effect/sql/SqlClient"
import * as Http from "node:http"
import * as Database from "./Database.ts"

// instead of PgClient.layer(config): the same config and services, every statement cancelled on interrupt
const SqlLive = Layer.unwrap(Effect.gen(function*() {
  const db = yield* Database.Database
  return SqlPgAdapter.layer({ url: db.url, ssl: { ca: db.ca }, maxConnections: 1 })
})).pipe(Layer.provide(NodeTransport.layer))

const backendPid = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const rows = yield* sql<{ pid: number }>`SELECT pg_backend_pid() AS pid`
  return rows[0]!.pid
}).pipe(Effect.orDie)

const program = Effect.gen(function*() {
  const reportStarted = yield* Deferred.make<void>()
  const handlerInterrupted = yield* Deferred.make<void>()
  const Routes = Layer.mergeAll(
    HttpRouter.add(
      "GET",
      "/report",
      Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        yield* Deferred.succeed(reportStarted, undefined)
        const rows = yield* sql`SELECT pg_sleep(60) AS report`
        return yield* HttpServerResponse.json(rows)
      }).pipe(Effect.onInterrupt(() => Deferred.succeed(handlerInterrupted, undefined)), Effect.orDie)
    ),
    HttpRouter.add("GET", "/pid", Effect.map(backendPid, (pid) => HttpServerResponse.text(String(pid))))
  )
  const server = yield* Layer.build(
    HttpRouter.serve(Routes, { disableLogger: true, disableListenLog: true }).pipe(
      Layer.provideMerge(NodeHttpServer.layer(() => Http.createServer(), { port: 0, host: "127.0.0.1" })),
      Layer.provide(SqlLive)
    )
  )
  const address = Context.get(server, HttpServer.HttpServer).address
  const base = `http://127.0.0.1:${address._tag === "UnixPathAddress" ? 80 : address.port}`
  const get = (path: string, signal?: AbortSignal) =>
    Effect.promise(() =>
      fetch(`${base}${path}`, { signal: signal ?? null }).then((r) => r.text(), (e: Error) => `${e.name}`)
    )

  const pid = yield* get("/pid")
  console.log(`client: GET /pid → backend ${pid}`)

  const controller = new AbortController()
  const report = yield* Effect.forkChild(get("/report", controller.signal))
  yield* Deferred.await(reportStarted)
  yield* Effect.sleep("200 millis")
  controller.abort()
  console.log(`client: GET /report gave up after 200 ms: ${yield* Fiber.join(report)}`)

  yield* Deferred.await(handlerInterrupted)
  console.log("server: the handler's fiber was interrupted, its statement cancelled on the server")
  const started = performance.now()
  const next = yield* get("/pid").pipe(Effect.timeout("10 seconds"))
  const took = (performance.now() - started).toFixed(0)
  console.log(
    `client: GET /pid → backend ${next} in ${took} ms: ${next === pid ? "the same pooled connection, free again" : "?"}`
  )
  if (next !== pid) return yield* Effect.die(new Error("the pooled connection was not reused"))
})

program.pipe(Effect.scoped, Effect.provide(Database.layer), NodeRuntime.runMain)
