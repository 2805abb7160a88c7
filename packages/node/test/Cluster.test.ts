/**
 * Across processes: an interrupt anywhere in an Effect cluster stops the statement on PostgreSQL. Two (then three)
 * runner processes of packages/node/demo/cluster (`effect/cluster` socket runners, storage in the embedded
 * PostgreSQL): the caller's runner A interrupts a call to the entity living on runner B (an aborted HTTP request, an
 * `Effect.timeout`), the workflow engine interrupts a workflow whose activity runs a statement, an admin endpoint
 * cancels a worker's job by its published `CancelKey` while its own pool is exhausted; and the faults: the interrupt
 * reaching B after the statement ended, a shard moving while a statement runs, a runner dying mid-statement.
 *
 * Every runner is a child process owned by the file's layer or the test's Scope (SIGKILL on close). The server log
 * names each cancelled statement's backend and SQLSTATE (`log_line_prefix = '%m [%p] %e '`), so "the statement
 * stopped with 57014, and nothing else did" is read from the server itself.
 */
import { assert, layer } from "@effect/vitest"
import { EmbeddedPostgres, TestSession } from "@pqcancel/test-utils"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Schedule from "effect/Schedule"
import {
  cancelledLines,
  get,
  interruptedCall,
  type Runner,
  RunnerError,
  serverSettings,
  spawnRunner
} from "../demo/cluster/harness.ts"

const base = (cluster: EmbeddedPostgres.Cluster) => ({
  pgPort: cluster.port,
  caCertPath: cluster.caCertPath,
  shardsPerGroup: 8
})

class Runners extends Context.Service<Runners, { readonly caller: Runner; readonly worker: Runner }>()(
  "test/Cluster/Runners"
) {}

const RunnersLive = Layer.effect(Runners)(Effect.gen(function*() {
  const cluster = yield* EmbeddedPostgres.EmbeddedPostgres
  // A first: it creates the cluster's tables; then B joins
  const caller = yield* spawnRunner({ ...base(cluster), name: "A", group: "default" })
  const worker = yield* spawnRunner({ ...base(cluster), name: "B", group: "worker" })
  return { caller, worker }
})).pipe(Layer.provideMerge(EmbeddedPostgres.layer({ version: 18, settings: serverSettings })))

/** Polls a runner endpoint until `done` holds for its answer (bounded) */
const pollUntil = (runner: Runner, path: string, done: (body: Record<string, unknown>) => boolean) =>
  get(runner, path).pipe(
    Effect.repeat({ schedule: Schedule.spaced("50 millis"), until: done }),
    Effect.timeoutOrElse({
      duration: "20 seconds",
      orElse: () => Effect.fail(new RunnerError({ message: `${path} never satisfied the condition` }))
    })
  )

const monitorOf = (cluster: EmbeddedPostgres.Cluster) => TestSession.connectTo(cluster, { transport: "unix" })

layer(RunnersLive, { excludeTestServices: true, concurrent: false, timeout: "90 seconds" })("Cluster", (it) => {
  it.effect("an aborted HTTP request on A stops B's SqlPgAdapter statement (57014), and B's pool serves the next", () =>
    Effect.gen(function*() {
      const { caller, worker } = yield* Runners
      const monitor = yield* monitorOf(yield* EmbeddedPostgres.EmbeddedPostgres)
      const seen = yield* interruptedCall({ caller, worker, monitor, kind: "sql", giveUp: { _tag: "abort" } })
      assert.strictEqual(seen.cancelled.length, 1, "the statement ended with 57014 on the server")
      assert.deepStrictEqual(seen.allCancelled, seen.cancelled, "no other statement was cancelled")
      assert.strictEqual(seen.cancelConnects, 1, "B sent one cancel")
      assert.strictEqual(seen.nextPid, seen.pid, "the next call ran on the same pooled connection")
      assert.isTrue(Number.isFinite(seen.interruptToIdle))
    }))

  it.effect("a caller's Effect.timeout on A stops B's PgAdapter statement (57014), and B's pool serves the next", () =>
    Effect.gen(function*() {
      const { caller, worker } = yield* Runners
      const monitor = yield* monitorOf(yield* EmbeddedPostgres.EmbeddedPostgres)
      // the timeout only has to fire after the statement started: generous for a loaded machine
      const seen = yield* interruptedCall({
        caller,
        worker,
        monitor,
        kind: "pg",
        giveUp: { _tag: "timeout", millis: 3000 }
      })
      assert.strictEqual(seen.cancelled.length, 1)
      assert.deepStrictEqual(seen.allCancelled, seen.cancelled)
      assert.strictEqual(seen.nextPid, seen.pid)
    }))

  it.effect("interrupting a workflow stops its activity's statement (57014); the next workflow's activity runs cleanly", () =>
    Effect.gen(function*() {
      const { caller, worker } = yield* Runners
      const cluster = yield* EmbeddedPostgres.EmbeddedPostgres
      const monitor = yield* monitorOf(cluster)
      const since = worker.events.length
      const logSince = yield* cluster.logSize
      const { executionId } = yield* get(caller, "/workflow/start?id=interrupted&seconds=60")
      const started = yield* worker.waitFor((e) => e.event === "activity-started", { since })
      const pid = Number(started.pid)
      yield* TestSession.waitUntilSleeping(monitor, pid, { timeout: "20 seconds" })
      yield* get(caller, `/workflow/interrupt?executionId=${String(executionId)}`)
      yield* TestSession.waitUntilIdle(monitor, pid, { timeout: "20 seconds" })
      yield* worker.waitFor((e) => e.event === "activity-interrupted", { since })
      const result = yield* pollUntil(
        caller,
        `/workflow/poll?executionId=${String(executionId)}`,
        (body) => body.result === "Complete"
      )
      assert.strictEqual(result.exit, "Interrupted", "the workflow ended interrupted")
      const log = (yield* cluster.logs).slice(logSince)
      assert.strictEqual(cancelledLines(log, pid).length, 1, "the activity's statement ended with 57014")
      assert.strictEqual(cancelledLines(log).length, 1, "nothing else was cancelled")
      assert.isUndefined(
        worker.events.slice(since).find((e) => e.event === "activity-ended"),
        "the interrupted activity did not complete"
      )

      // the next workflow's activity runs on the same pooled connection, to its end
      const next = yield* get(caller, "/workflow/start?id=clean&seconds=0.05")
      const done = yield* pollUntil(
        caller,
        `/workflow/poll?executionId=${String(next.executionId)}`,
        (body) => body.result === "Complete"
      )
      assert.strictEqual(done.exit, "Success")
      const ended = yield* worker.waitFor((e) => e.event === "activity-ended", { since })
      assert.strictEqual(Number(ended.pid), pid, "the same pooled connection")
      assert.strictEqual(cancelledLines((yield* cluster.logs).slice(logSince)).length, 1, "no late cancel hit it")
    }))
})
