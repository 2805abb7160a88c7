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
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import { now } from "../demo/cluster/app.ts"
import {
  cancelledLines,
  get,
  interruptedCall,
  interruptedWorkflow,
  logTime,
  pollUntil,
  type Runner,
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
      const seen = yield* interruptedWorkflow({ caller, worker, monitor, id: "interrupted" })
      const pid = seen.pid
      assert.strictEqual(seen.exit, "Interrupted", "the workflow ended interrupted")
      assert.strictEqual(seen.cancelled.length, 1, "the activity's statement ended with 57014")
      assert.deepStrictEqual(seen.allCancelled, seen.cancelled, "nothing else was cancelled")
      assert.isFalse(seen.activityEnded, "the interrupted activity did not complete")

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

  it.effect("an admin endpoint cancels a worker's job by its published CancelKey while its own pool is exhausted", () =>
    Effect.gen(function*() {
      const { caller, worker } = yield* Runners
      const cluster = yield* EmbeddedPostgres.EmbeddedPostgres
      const monitor = yield* monitorOf(cluster)
      const sinceCaller = caller.events.length
      const sinceWorker = worker.events.length
      const logSince = yield* cluster.logSize
      // A's app pool (one connection) is busy: pg_cancel_backend cannot get a connection there
      const hogAbort = new AbortController()
      const hog = yield* Effect.forkChild(Effect.exit(get(caller, "/hog?seconds=60", hogAbort.signal)))
      const hogPid = Number((yield* caller.waitFor((e) => e.event === "hog-started", { since: sinceCaller })).pid)
      yield* TestSession.waitUntilSleeping(monitor, hogPid, { timeout: "20 seconds" })
      // the job runs on B, which published its session's key to A's directory
      yield* get(caller, "/job/start?job=nightly&seconds=60")
      const published = yield* caller.waitFor((e) => e.event === "job-published", { since: sinceCaller })
      const pid = Number(published.pid)
      yield* TestSession.waitUntilSleeping(monitor, pid, { timeout: "20 seconds" })

      const answer = yield* get(caller, "/admin/cancel?job=nightly&try=pg_cancel_backend")
      assert.strictEqual(answer.outcome, "CancelRequest", "cancelled by key, not by pg_cancel_backend")
      yield* caller.waitFor((e) => e.event === "pg_cancel_backend-no-connection", { since: sinceCaller })
      yield* TestSession.waitUntilIdle(monitor, pid, { timeout: "20 seconds" })
      yield* worker.waitFor((e) => e.event === "statement-failed" && e.pid === pid, { since: sinceWorker })
      const log = (yield* cluster.logs).slice(logSince)
      assert.strictEqual(cancelledLines(log, pid).length, 1, "the job's statement ended with 57014")
      assert.strictEqual(cancelledLines(log).length, 1, "nothing else was cancelled")
      const hogState = yield* monitor.query(`SELECT wait_event FROM pg_stat_activity WHERE pid = ${hogPid}`)
      assert.deepStrictEqual(hogState._tag === "Ok" ? hogState.rows : hogState, [["PgSleep"]], "A's query still runs")
      // the key never appears in what the runners print
      const printed = JSON.stringify([caller.events, worker.events]) + caller.stderr() + worker.stderr()
      assert.notInclude(printed, "secret")

      // A's own query: the aborted HTTP request cancels it (A's SqlPgAdapter pool)
      hogAbort.abort()
      yield* Fiber.join(hog)
      yield* TestSession.waitUntilIdle(monitor, hogPid, { timeout: "20 seconds" })
    }))

  it.effect("the interrupt reaches B after the statement ended: no cancel is sent, nothing is hit", () =>
    Effect.gen(function*() {
      const { caller, worker } = yield* Runners
      const cluster = yield* EmbeddedPostgres.EmbeddedPostgres
      const pid = Number((yield* get(caller, "/pid?entity=late")).pid)
      const sinceWorker = worker.events.length
      const logSince = yield* cluster.logSize
      // the statement is short; the handler then works (renders) for a minute without the database
      const controller = new AbortController()
      const request = yield* Effect.forkChild(
        Effect.exit(get(caller, "/report?entity=late&seconds=0.05&then=60000", controller.signal))
      )
      yield* worker.waitFor((e) => e.event === "statement-ended" && e.pid === pid, { since: sinceWorker })
      controller.abort()
      yield* worker.waitFor((e) => e.event === "interrupted-after-statement", { since: sinceWorker })
      yield* Fiber.join(request)
      // the next statement on the same connection runs to its end
      const next = yield* get(caller, "/report?entity=late&seconds=0.05")
      assert.strictEqual(next.outcome, "answered")
      assert.strictEqual(next.pid, pid, "the same pooled connection")
      const events = worker.events.slice(sinceWorker)
      assert.isUndefined(events.find((e) => e.event.startsWith("cancel-")), "no cancel connection was opened")
      assert.strictEqual(cancelledLines((yield* cluster.logs).slice(logSince)).length, 0, "no statement was cancelled")
    }))

  it.effect(
    "shards move while statements run (their runner shuts down): an entity's and a workflow activity's end with 57014, " +
      "the survivor serves the entity and resumes the workflow, whose activity runs again cleanly; then the survivor " +
      "dies mid-statement",
    () =>
      Effect.gen(function*() {
        const { caller, worker } = yield* Runners
        const cluster = yield* EmbeddedPostgres.EmbeddedPostgres
        const monitor = yield* monitorOf(cluster)
        const other = yield* spawnRunner({ ...base(cluster), name: "C", group: "worker" })
        const appOf = (pid: unknown) =>
          monitor.query(`SELECT application_name FROM pg_stat_activity WHERE pid = ${Number(pid)}`).pipe(
            Effect.map((r) => (r._tag === "Ok" ? r.rows[0]?.[0] : undefined))
          )
        // an entity id served by `app` (through the node-postgres pools: the SqlPgAdapter pool may be busy)
        const entityOn = (app: string, prefix: string) =>
          Effect.gen(function*() {
            for (let i = 0;; i++) {
              const entity = `${prefix}-${i % 64}`
              if ((yield* appOf((yield* get(caller, `/pid?kind=pg&entity=${entity}`)).pid)) === app) return entity
            }
          }).pipe(Effect.timeout("30 seconds"))
        // C serves some entity once the shards were rebalanced between B and C
        yield* entityOn("C-pg", "probe")

        const sinceB = worker.events.length
        const sinceC = other.events.length
        const logSince = yield* cluster.logSize
        const hostOf = (event: string) =>
          Effect.raceFirst(
            Effect.map(worker.waitFor((e) => e.event === event, { since: sinceB }), (e) => [worker, e] as const),
            Effect.map(other.waitFor((e) => e.event === event, { since: sinceC }), (e) => [other, e] as const)
          )
        // a workflow whose activity sleeps 60 s the first time it runs, 0.05 s when it runs again
        const { executionId } = yield* get(caller, "/workflow/start?id=moving&seconds=60&resumed=0.05")
        const [host, activity] = yield* hostOf("activity-started")
        const survivor = host === worker ? other : worker
        // and an entity statement on the same runner
        const entity = yield* entityOn(`${host.name}-pg`, "moving")
        const controller = new AbortController()
        const request = yield* Effect.forkChild(
          Effect.exit(get(caller, `/report?kind=pg&entity=${entity}&seconds=60`, controller.signal))
        )
        const statement = yield* host.waitFor((e) => e.event === "statement-started", {
          since: host === worker ? sinceB : sinceC
        })
        const pids = [Number(activity.pid), Number(statement.pid)]
        for (const pid of pids) yield* TestSession.waitUntilSleeping(monitor, pid, { timeout: "20 seconds" })
        const survivorSince = survivor.events.length

        // the host shuts down gracefully (SIGTERM): its entities are interrupted, its shards move to the survivor
        yield* host.kill("SIGTERM")
        for (const pid of pids) {
          yield* cluster.waitForLog(new RegExp(`\\[${pid}\\] 57014 ERROR`), { since: logSince, timeout: "20 seconds" })
        }
        // NodeRuntime.runMain's exit code once a signal interrupted the program and its finalizers ran
        assert.strictEqual(yield* host.exited(), "exit 130", "the runner shut down cleanly")
        controller.abort()
        yield* Fiber.join(request)
        const moved = yield* get(caller, `/pid?kind=pg&entity=${entity}`)
        assert.strictEqual(yield* appOf(moved.pid), `${survivor.name}-pg`, "the entity now lives on the survivor")
        // the survivor resumed the workflow: its activity ran again, to its end
        const result = yield* pollUntil(
          caller,
          `/workflow/poll?executionId=${String(executionId)}`,
          (body) => body.result === "Complete"
        )
        assert.strictEqual(result.exit, "Success", "the resumed workflow completed")
        const again = yield* survivor.waitFor((e) => e.event === "activity-ended", { since: survivorSince })
        assert.strictEqual(yield* appOf(again.pid), `${survivor.name}-app`)
        assert.strictEqual(
          cancelledLines((yield* cluster.logs).slice(logSince)).length,
          2,
          "only the two statements of the runner that shut down"
        )

        // the survivor dies (SIGKILL) while its two statements run: the SqlPgAdapter session's backend (the server's
        // client_connection_check_interval = 250ms) notices the lost client and ends; the node-postgres session
        // (check disabled) keeps sleeping until its statement would write its result
        const since = survivor.events.length
        const dieSince = yield* cluster.logSize
        const abortAll = new AbortController()
        const calls = yield* Effect.forkChild(Effect.exit(Effect.all([
          get(caller, "/report?entity=moving&seconds=60", abortAll.signal),
          get(caller, "/report?entity=moving-pg&kind=pg&seconds=60", abortAll.signal)
        ], { concurrency: 2 })))
        const sqlPid = Number(
          (yield* survivor.waitFor((e) => e.event === "statement-started" && String(e.what).startsWith("Report "), {
            since
          })).pid
        )
        const pgPid = Number(
          (yield* survivor.waitFor((e) => e.event === "statement-started" && String(e.what).startsWith("ReportPg"), {
            since
          })).pid
        )
        yield* TestSession.waitUntilSleeping(monitor, sqlPid, { timeout: "20 seconds" })
        yield* TestSession.waitUntilSleeping(monitor, pgPid, { timeout: "20 seconds" })
        const killedAt = now()
        yield* survivor.kill("SIGKILL")
        assert.strictEqual(yield* survivor.exited(), "SIGKILL")
        const lost = yield* cluster.waitForLog(new RegExp(`\\[${sqlPid}\\] 08006 FATAL:  connection to client lost`), {
          since: dieSince,
          timeout: "20 seconds"
        })
        yield* TestSession.waitUntilGone(monitor, sqlPid, { timeout: "20 seconds" })
        yield* Effect.logInfo(`runner killed → the server ended its checked backend: ${logTime(lost) - killedAt} ms`)
        const pgState = yield* monitor.query(`SELECT wait_event FROM pg_stat_activity WHERE pid = ${pgPid}`)
        assert.deepStrictEqual(pgState._tag === "Ok" ? pgState.rows : pgState, [["PgSleep"]], "unchecked: still runs")
        assert.strictEqual(cancelledLines((yield* cluster.logs).slice(dieSince)).length, 0, "nothing was cancelled")
        yield* monitor.query(`SELECT pg_terminate_backend(${pgPid})`)
        abortAll.abort()
        yield* Fiber.join(calls)
      }),
    // three runners' shard handovers and a graceful shutdown: more than the default 30 s on a loaded machine
    90_000
  )
})
