/**
 * The session's 57014 confirms the cancel (issue 23's policy, in the adapter kit): when the cancel connection's close
 * is held (or slow), an interrupted statement that has ended cancelled does not wait for it — the connection is kept
 * and no second cancel is sent. node-postgres' Client and `@effect/sql-pg`, each through a FaultProxy in front of
 * PostgreSQL 18 (plaintext TCP). No timing is asserted: kept vs retired and the cancel connections counted at the proxy.
 */
import * as PgClient from "@effect/sql-pg/PgClient"
import { assert, layer } from "@effect/vitest"
import { NodeTransport } from "@pqcancel/node"
import * as PgAdapter from "@pqcancel/node/PgAdapter"
import * as SqlPgAdapter from "@pqcancel/node/SqlPgAdapter"
import { EmbeddedPostgres, FaultProxy, TestSession } from "@pqcancel/test-utils"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import type * as Scope from "effect/Scope"
import { retiredCount, sleepingPid } from "./fixtures.ts"

const faults: ReadonlyArray<{ readonly name: string; readonly fault: FaultProxy.Fault }> = [
  { name: "the server's close held 5 s", fault: { holdCloseMs: 5000 } },
  { name: "the server's close never passed on", fault: { holdCloseMs: "never" } },
  { name: "300 ms each way", fault: { latencyMs: { up: 300, down: 300 } } }
]

const policy = { cancelTimeout: "1 second", drainTimeout: "1 second" } as const

/** An adapter's session through the proxy: the statement to interrupt, the next one, and whether it was retired */
interface Session {
  readonly sleep: Effect.Effect<unknown>
  readonly next: Effect.Effect<string>
  readonly retired: () => boolean
}

const adapters: ReadonlyArray<{
  readonly name: string
  readonly open: (port: number, app: string) => Effect.Effect<Session, never, Scope.Scope>
}> = [
  {
    name: "node-postgres Client",
    open: (port, app) =>
      Effect.map(
        PgAdapter.connect({ host: "127.0.0.1", port, user: "postgres", application_name: app }),
        (client) => {
          const run = (text: string) =>
            PgAdapter.query(client, undefined, text, [], policy).pipe(Effect.provide(NodeTransport.layer))
          return {
            sleep: Effect.ignore(run("SELECT pg_sleep(10)")),
            next: Effect.map(run("SELECT 42 AS n"), (r) => String(r.rows[0]?.["n"])).pipe(
              Effect.orElseSucceed(() => "failed")
            ),
            retired: () => PgAdapter.isRetired(client)
          }
        }
      ).pipe(Effect.orDie)
  },
  {
    name: "@effect/sql-pg (multiplex)",
    open: (port, app) =>
      Effect.gen(function*() {
        const context = yield* Layer.build(
          SqlPgAdapter.layer(
            { host: "127.0.0.1", port, username: "postgres", applicationName: app, maxConnections: 1, multiplex: true },
            policy
          ).pipe(Layer.provide(NodeTransport.layer))
        )
        const sql = Context.get(context, PgClient.PgClient)
        return {
          sleep: Effect.ignore(sql`SELECT pg_sleep(10)`),
          next: Effect.map(sql<{ n: number }>`SELECT 42 AS n`, (r) => String(r[0]?.n)).pipe(
            Effect.orElseSucceed(() => "failed")
          ),
          retired: () => false // read from the metric below
        }
      }).pipe(Effect.orDie)
  }
]

let apps = 0

layer(EmbeddedPostgres.layer18, { excludeTestServices: true, timeout: "60 seconds" })("the session's 57014", (it) => {
  for (const adapter of adapters) {
    for (const { fault, name } of faults) {
      it.effect(`${adapter.name}, cancel connection ${name}: kept, one cancel`, () =>
        Effect.gen(function*() {
          const cluster = yield* EmbeddedPostgres.EmbeddedPostgres
          const monitor = yield* TestSession.connectTo(cluster, { transport: "unix" })
          const proxy = yield* FaultProxy.make({ upstream: { port: cluster.port } })
          proxy.setRule((c) => c.first === "CancelRequest" ? fault : undefined)
          const app = `confirmed-${++apps}`
          const session = yield* adapter.open(proxy.port, app)
          const fiber = yield* Effect.forkChild(session.sleep)
          yield* sleepingPid(monitor, app)
          yield* Fiber.interrupt(fiber)
          const cancels = proxy.records().filter((r) => r.first === "CancelRequest").length
          assert.strictEqual(cancels, 1, "no second cancel: the statement had ended 57014")
          assert.strictEqual(yield* retiredCount, 0, "the connection is kept")
          assert.isFalse(session.retired())
          assert.strictEqual(yield* session.next, "42")
          // the cancel connection was finished by the client, not left open
          assert.isTrue(yield* proxy.settled(1)) // connection 0 is the session
        }).pipe(Effect.provideService(Metric.MetricRegistry, new Map())))
    }
  }
})
