/**
 * Interrupt the fiber ⇒ the query stops on the server: node-postgres sessions over TLS and unix sockets, the 57014
 * never reaches the caller, the session is reusable, and a session whose cancel cannot be confirmed is ended.
 */
import { assert, layer } from "@effect/vitest"
import { ConnectionOptions } from "@pqcancel/core"
import { NodeTransport } from "@pqcancel/node"
import * as PgAdapter from "@pqcancel/node/PgAdapter"
import { EmbeddedPostgres } from "@pqcancel/test-utils"
import * as Cause from "effect/Cause"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import { tlsRoute, unixRoute, waitIdle, waitSleeping } from "./pgMonitor.ts"

layer(EmbeddedPostgres.layer18, { excludeTestServices: true, timeout: "60 seconds" })("PgAdapter", (it) => {
  const cases = [
    { name: "TLS, sslmode=verify-full", ...tlsRoute },
    { name: "unix socket", ...unixRoute }
  ]
  for (const testCase of cases) {
    it.effect(`interrupting the fiber cancels the server query (${testCase.name})`, () =>
      Effect.gen(function*() {
        const cluster = yield* EmbeddedPostgres.EmbeddedPostgres
        const client = yield* PgAdapter.connect(testCase.session(cluster))
        const monitor = yield* PgAdapter.connect({ host: cluster.socketDir, port: cluster.port, user: "postgres" })
        const options = yield* ConnectionOptions.fromString(testCase.conninfo(cluster))
        const info = yield* PgAdapter.sessionInfo(client, options)
        const fiber = yield* PgAdapter.query(client, options, "SELECT pg_sleep(60)").pipe(Effect.forkChild)
        yield* waitSleeping(monitor, info.key!.pid)
        const exit = yield* Fiber.interrupt(fiber).pipe(Effect.andThen(Fiber.await(fiber)))
        // the caller sees an interruption, not the server's 57014
        assert.isTrue(Exit.isFailure(exit) && Cause.hasInterruptsOnly(exit.cause))
        // the server ended the query and the session is idle and reusable
        const state = yield* waitIdle(monitor, info.key!.pid)
        assert.strictEqual(state.rows[0]?.state, "idle")
        const next = yield* PgAdapter.query(client, options, "SELECT 7 AS n")
        assert.strictEqual(next.rows[0]?.n, 7)
      }).pipe(Effect.provide(NodeTransport.layer)))
  }

  it.effect("a query that finishes is not cancelled and errors stay typed", () =>
    Effect.gen(function*() {
      const cluster = yield* EmbeddedPostgres.EmbeddedPostgres
      const client = yield* PgAdapter.connect({ host: cluster.socketDir, port: cluster.port, user: "postgres" })
      const options = yield* ConnectionOptions.fromString(`host=${cluster.socketDir} port=${cluster.port}`)
      const ok = yield* PgAdapter.query(client, options, "SELECT 1 AS one")
      assert.strictEqual(ok.rows[0]?.one, 1)
      const error = yield* Effect.flip(PgAdapter.query(client, options, "SELECT 1/0"))
      assert.strictEqual(error._tag, "PgQueryError")
      assert.strictEqual(error._tag === "PgQueryError" ? error.code : undefined, "22012")
    }).pipe(Effect.provide(NodeTransport.layer)))

  it.effect("a session the server ends is reported by the next query, not raised as an uncaught error", () =>
    Effect.gen(function*() {
      const cluster = yield* EmbeddedPostgres.EmbeddedPostgres
      const client = yield* PgAdapter.connect({ host: cluster.socketDir, port: cluster.port, user: "postgres" })
      const monitor = yield* PgAdapter.connect({ host: cluster.socketDir, port: cluster.port, user: "postgres" })
      const options = yield* ConnectionOptions.fromString(`host=${cluster.socketDir} port=${cluster.port}`)
      const info = yield* PgAdapter.sessionInfo(client, options)
      const ended = yield* Deferred.make<void>()
      client.once("end", () => Deferred.doneUnsafe(ended, Effect.void))
      yield* PgAdapter.query(monitor, options, `SELECT pg_terminate_backend(${info.key!.pid})`)
      // the FATAL 57P01 reached the client as its error event before the session ended: with no listener of the
      // adapter's, an uncaught exception that fails the run
      yield* Deferred.await(ended).pipe(Effect.timeout("10 seconds"))
      const error = yield* Effect.flip(PgAdapter.query(client, options, "SELECT 1"))
      assert.strictEqual(error._tag, "PgNotConnected")
    }).pipe(Effect.provide(NodeTransport.layer)))

  it.effect("a session whose cancel cannot be confirmed is ended, never reused", () =>
    Effect.gen(function*() {
      const cluster = yield* EmbeddedPostgres.EmbeddedPostgres
      const client = yield* PgAdapter.connect({ host: cluster.socketDir, port: cluster.port, user: "postgres" })
      const monitor = yield* PgAdapter.connect({ host: cluster.socketDir, port: cluster.port, user: "postgres" })
      // require TLS over TCP while the session is on a unix socket address: the cancel fails
      const options = yield* ConnectionOptions.fromString(
        `host=${cluster.socketDir} port=${cluster.port} gssencmode=require`
      )
      const info = yield* PgAdapter.sessionInfo(client, options)
      const ended = yield* Deferred.make<void>()
      client.once("end", () => Deferred.doneUnsafe(ended, Effect.void))
      const fiber = yield* PgAdapter.query(client, options, "SELECT pg_sleep(60)").pipe(Effect.forkChild)
      yield* waitSleeping(monitor, info.key!.pid)
      yield* Fiber.interrupt(fiber)
      // pg emits "end" once its socket has closed: at once on Node, a turn later on Deno
      yield* Deferred.await(ended).pipe(Effect.timeout("10 seconds"))
    }).pipe(Effect.provide(NodeTransport.layer)))
})
