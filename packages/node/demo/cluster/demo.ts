/**
 * `pnpm demo:cluster`: an interrupt anywhere in an Effect cluster stops the query on PostgreSQL. On a throwaway
 * embedded PostgreSQL 18 (TLS): two runner processes (`effect/cluster` socket runners, their storage in that
 * PostgreSQL). Runner A serves HTTP and calls the entity `Reports`, which lives on runner B; B runs the statement
 * through `SqlPgAdapter` (then through `PgAdapter`). The HTTP client gives up (AbortController), then a caller's
 * `Effect.timeout` fires: each time, the timeline from the interrupt on A to the backend idle on the server, and the
 * next call served by the same pooled connection. Then a workflow on B whose activity runs a long statement is
 * interrupted through its engine. Exits 0 and leaves nothing running.
 */
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import { EmbeddedPostgres, TestSession } from "@pqcancel/test-utils"
import * as Effect from "effect/Effect"
import { interruptedCall, interruptedWorkflow, printTimeline, serverSettings, spawnRunner } from "./harness.ts"

const log = (line: string) => Effect.sync(() => console.log(line))

const program = Effect.gen(function*() {
  const cluster = yield* EmbeddedPostgres.EmbeddedPostgres
  yield* log(`embedded PostgreSQL ${cluster.version} on 127.0.0.1:${cluster.port} (TLS on)`)
  const base = { pgPort: cluster.port, caCertPath: cluster.caCertPath, shardsPerGroup: 16 }
  const caller = yield* spawnRunner({ ...base, name: "A", group: "default" })
  const worker = yield* spawnRunner({ ...base, name: "B", group: "worker" })
  yield* log(
    `runner A (pid ${caller.pid}, HTTP on 127.0.0.1:${caller.httpPort}) and runner B (pid ${worker.pid}, ` +
      `hosts the entity Reports): socket runners on 127.0.0.1:${caller.runnerPort} and :${worker.runnerPort}`
  )
  const monitor = yield* TestSession.connectTo(cluster, { transport: "unix" })
  const runs = [
    { title: "GET /report on A, the HTTP client aborts; B runs it through SqlPgAdapter", kind: "sql", abort: true },
    { title: "GET /report on A, the caller's Effect.timeout(500 ms) fires; B runs it through PgAdapter", kind: "pg" },
    { title: "Once more: the HTTP client aborts (B's code paths warm now); SqlPgAdapter", kind: "sql", abort: true }
  ] as const
  for (const run of runs) {
    yield* log(`\n== ${run.title}`)
    const seen = yield* interruptedCall({
      caller,
      worker,
      monitor,
      kind: run.kind,
      giveUp: "abort" in run ? { _tag: "abort" } : { _tag: "timeout", millis: 500 }
    })
    yield* printTimeline(seen.timeline)
    yield* log(`   interrupt on A → backend idle on the server: ${seen.interruptToIdle.toFixed(1)} ms`)
    yield* log(
      `   next call → backend ${seen.nextPid}: ${
        seen.nextPid === seen.pid ? "the same pooled connection, reused" : "A DIFFERENT CONNECTION"
      }; 57014 lines in the server log: ${seen.allCancelled.length} (only backend ${seen.pid})`
    )
    if (seen.nextPid !== seen.pid || seen.allCancelled.length !== 1 || seen.cancelled.length !== 1) {
      return yield* Effect.die(new Error("the cancel did not stop exactly the interrupted statement"))
    }
  }
  yield* log("\n== A workflow on B whose activity runs SELECT pg_sleep(60); A interrupts the workflow (its engine)")
  const workflow = yield* interruptedWorkflow({ caller, worker, monitor, id: "demo" })
  yield* printTimeline(workflow.timeline)
  yield* log(`   Workflow.interrupt on A → backend idle on the server: ${workflow.interruptToIdle.toFixed(1)} ms`)
  yield* log(
    `   the workflow completed ${String(workflow.exit)}; 57014 lines in the server log: ${workflow.allCancelled.length}`
  )
  if (workflow.exit !== "Interrupted" || workflow.allCancelled.length !== 1 || workflow.cancelled.length !== 1) {
    return yield* Effect.die(new Error("the workflow's statement was not stopped exactly"))
  }
  yield* log("\nStopping the runners and PostgreSQL.")
})

program.pipe(
  Effect.scoped,
  Effect.provide(EmbeddedPostgres.layer({ version: 18, settings: serverSettings })),
  NodeRuntime.runMain
)
