/**
 * The application of the cluster demo and tests (packages/node/demo/cluster): what a user of `effect/cluster` and
 * `effect/workflow` writes, with pqcancel wired in.
 *
 * - `Reports`: an entity in the shard group `worker` whose handlers run statements through `SqlPgAdapter` (the
 *   `SqlClient`) and through `PgAdapter.withPoolClient` + `PgAdapter.query` (node-postgres). Interrupting a caller anywhere in the cluster
 *   interrupts the handler fiber on the runner that hosts the entity; the adapter then cancels the statement on the
 *   server.
 * - `ReportWorkflow`: a workflow (also in `worker`) whose activity runs a long statement (shorter when it runs again,
 *   e.g. resumed by a new owner after its shard moved). Effect runs activities
 *   uninterruptibly and lets a workflow interrupt take effect at the next step only; {@link cancellableStatement}
 *   watches the workflow's interrupt signal and interrupts the statement, so cancelling the workflow stops it on the
 *   server.
 * - `JobDirectory`: an entity in the shard group `default` (the caller's runner) to which a worker publishes the
 *   `CancelKey` of the session running a job, Schema-encoded (`CancelKey.schema`), so that an admin endpoint can
 *   cancel the job with `CancelConnection.cancel` while its own pool is exhausted.
 *
 * Every event worth a timeline is printed by the runner as one JSON line on stdout ({@link emit}); keys are never
 * printed (a `CancelKey`'s secret is `Redacted`).
 */
import { CancelKey } from "@pqcancel/core"
import * as PgAdapter from "@pqcancel/node/PgAdapter"
import * as Cause from "effect/Cause"
import * as ClusterSchema from "effect/cluster/ClusterSchema"
import * as Entity from "effect/cluster/Entity"
import * as Context from "effect/Context"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Rpc from "effect/rpc/Rpc"
import * as Schedule from "effect/Schedule"
import * as Schema from "effect/Schema"
import * as SqlClient from "effect/sql/SqlClient"
import * as Activity from "effect/workflow/Activity"
import * as DurableDeferred from "effect/workflow/DurableDeferred"
import * as Workflow from "effect/workflow/Workflow"
import * as WorkflowEngine from "effect/workflow/WorkflowEngine"
import type pg from "pg"

/** Wall-clock milliseconds with sub-millisecond resolution, comparable across processes on one machine */
export const now = (): number => performance.timeOrigin + performance.now()

/** One timeline event of a runner: a JSON line on stdout */
export interface Event {
  readonly runner: string
  readonly event: string
  readonly at: number
  readonly [field: string]: unknown
}

/** Prints one event as a JSON line (never a key: callers pass plain facts only) */
export const emit = (runner: string, event: string, fields: Record<string, unknown> = {}): Effect.Effect<void> =>
  Effect.sync(() => {
    process.stdout.write(`${JSON.stringify({ runner, event, at: now(), ...fields })}\n`)
  })

/** The runner's name, for its events */
export class RunnerName extends Context.Service<RunnerName, string>()("cluster-demo/RunnerName") {}

/** The node-postgres pool of the worker (one connection); the adapter derives each cancel's options from its client */
export class PgPool extends Context.Service<PgPool, pg.Pool>()("cluster-demo/PgPool") {}

/** A statement failed (not because it was cancelled: a cancelled statement interrupts its fiber) */
export class DbError extends Schema.TaggedError<DbError>("cluster-demo/DbError")("DbError", {
  message: Schema.String
}) {}

const Pid = Schema.Struct({ pid: Schema.Finite })

/** The entity whose statements a remote caller interrupts */
export const Reports = Entity.make("Reports", [
  Rpc.make("Pid", { success: Pid }),
  Rpc.make("PidPg", { success: Pid }),
  // `thenMillis`: work after the statement (rendering the report) that takes that long
  Rpc.make("Report", {
    payload: { seconds: Schema.Finite, thenMillis: Schema.optional(Schema.Finite) },
    success: Pid,
    error: DbError
  }),
  Rpc.make("ReportPg", { payload: { seconds: Schema.Finite }, success: Pid, error: DbError }),
  Rpc.make("Job", { payload: { job: Schema.String, seconds: Schema.Finite }, success: Pid, error: DbError })
]).annotate(ClusterSchema.ShardGroup, () => "worker")

/** What a worker publishes about a running job: the backend and the server address its session is connected to */
export const PublishedJob = Schema.Struct({
  job: Schema.String,
  key: CancelKey.schema,
  address: Schema.Union([
    Schema.Struct({
      _tag: Schema.Literal("Tcp"),
      address: Schema.String,
      port: Schema.Finite,
      family: Schema.Literals([4, 6])
    }),
    Schema.Struct({ _tag: Schema.Literal("Unix"), path: Schema.String })
  ])
})

/** The published jobs of the caller's runner, by job id (in memory) */
export class Jobs extends Context.Service<Jobs, Map<string, typeof PublishedJob.Type>>()("cluster-demo/Jobs") {}

/**
 * Where workers publish their running jobs. Not `Persisted`: the message goes straight to the runner that hosts
 * the directory and is never written to the cluster's message table.
 */
export const JobDirectory = Entity.make("JobDirectory", [
  Rpc.make("Publish", { payload: PublishedJob }),
  Rpc.make("Unpublish", { payload: { job: Schema.String } })
]).annotate(ClusterSchema.ShardGroup, () => "default")

const dbError = (error: { readonly message: string }) => new DbError({ message: error.message })

/** Marks a handler's life on the timeline: started (with its backend), interrupted, ended */
const traced = <A extends { readonly pid: number }, E, R>(
  what: string,
  pid: number,
  effect: Effect.Effect<A, E, R>
) =>
  Effect.gen(function*() {
    const runner = yield* RunnerName
    yield* emit(runner, "statement-started", { what, pid })
    return yield* effect.pipe(
      Effect.onExit((exit) =>
        exit._tag === "Success"
          ? emit(runner, "statement-ended", { what, pid })
          : Cause.hasInterrupts(exit.cause)
          ? emit(runner, "handler-interrupted", { what, pid })
          : emit(runner, "statement-failed", { what, pid })
      )
    )
  })

/** The handlers of {@link Reports}: `SqlClient` is a `SqlPgAdapter` pool, {@link PgPool} a node-postgres pool */
export const ReportsLive = Reports.toLayer(Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const pool = yield* PgPool
  const directory = (yield* JobDirectory.client)("directory")
  const sqlPid = Effect.map(
    Effect.mapError(sql<{ pid: number }>`SELECT pg_backend_pid() AS pid`, dbError),
    (rows) => ({ pid: rows[0]!.pid })
  )
  const pgPid = Effect.map(
    Effect.mapError(PgAdapter.poolQuery<{ pid: number }>(pool, undefined, "SELECT pg_backend_pid() AS pid"), dbError),
    (result) => ({ pid: result.rows[0]!.pid })
  )
  return Reports.of({
    Pid: () => Effect.orDie(sqlPid),
    PidPg: () => Effect.orDie(pgPid),
    // the statement runs through SqlPgAdapter: an interrupt of this fiber cancels it on the server
    Report: ({ payload }) =>
      Effect.flatMap(sqlPid, ({ pid }) =>
        traced(
          "Report (SqlPgAdapter)",
          pid,
          Effect.as(Effect.mapError(sql`SELECT pg_sleep(${payload.seconds})`, dbError), { pid })
        ).pipe(
          Effect.tap(() =>
            payload.thenMillis === undefined ? Effect.void : Effect.gen(function*() {
              const runner = yield* RunnerName
              yield* Effect.sleep(payload.thenMillis!).pipe(
                Effect.onInterrupt(() => emit(runner, "interrupted-after-statement", { pid }))
              )
            })
          )
        )),
    // the same through PgAdapter.withPoolClient + PgAdapter.query (node-postgres)
    ReportPg: ({ payload }) =>
      Effect.mapError(
        PgAdapter.withPoolClient(pool, (client) =>
          Effect.flatMap(PgAdapter.query<{ pid: number }>(client, undefined, "SELECT pg_backend_pid() AS pid"), (r) =>
            traced(
              "ReportPg (PgAdapter)",
              r.rows[0]!.pid,
              Effect.as(PgAdapter.query(client, undefined, "SELECT pg_sleep($1)", [payload.seconds]), {
                pid: r.rows[0]!.pid
              })
            ))),
        dbError
      ),
    // a job that publishes its session's CancelKey to the directory before it runs, and withdraws it after
    Job: ({ payload }) =>
      Effect.mapError(
        PgAdapter.withPoolClient(pool, (client) =>
          Effect.gen(function*() {
            const options = yield* PgAdapter.optionsFromClient(client)
            const info = yield* PgAdapter.sessionInfo(client, options)
            yield* directory.Publish({ job: payload.job, key: info.key!, address: info.address })
            return yield* traced(
              `Job ${payload.job} (PgAdapter)`,
              info.key!.pid,
              Effect.as(PgAdapter.query(client, undefined, "SELECT pg_sleep($1)", [payload.seconds]), {
                pid: info.key!.pid
              })
            ).pipe(Effect.ensuring(Effect.ignore(directory.Unpublish({ job: payload.job }))))
          })),
        (error) => new DbError({ message: `${error._tag}: ${error.message}` })
      )
  })
}))

/** The handlers of {@link JobDirectory}: keep what workers publish in memory */
export const JobDirectoryLive = JobDirectory.toLayer(Effect.gen(function*() {
  const jobs = yield* Jobs
  const runner = yield* RunnerName
  return JobDirectory.of({
    Publish: ({ payload }) =>
      Effect.andThen(
        Effect.sync(() => jobs.set(payload.job, payload)),
        emit(runner, "job-published", { job: payload.job, pid: payload.key.pid })
      ),
    Unpublish: ({ payload }) => Effect.sync(() => void jobs.delete(payload.job))
  })
}))

// ---------------------------------------------------------------------------------------------------------------------
// workflow
// ---------------------------------------------------------------------------------------------------------------------

/**
 * The signal `ClusterWorkflowEngine` stores when a workflow is interrupted (`Workflow.interrupt` /
 * `WorkflowEngine.interrupt`). Effect's own name (effect 4.1.5); the workflow test fails if it changes.
 */
const InterruptSignal = DurableDeferred.make("Workflow/InterruptSignal")

/**
 * Runs `statement` inside a workflow activity so that interrupting the workflow stops it. Effect runs an activity
 * uninterruptibly, and an interrupt of its workflow waits for the activity to end by itself; here the statement
 * runs interruptibly while a watcher polls the workflow's interrupt signal every `pollInterval`. Once it is set,
 * the statement's fiber is interrupted (the adapter cancels it on the server and waits until it ended) and the
 * activity suspends, so the engine applies the interrupt to the workflow. Each poll reads the engine's memory, or
 * its storage until the signal arrived: one to three small queries on the storage pool.
 */
export const cancellableStatement = <A, E, R>(
  statement: Effect.Effect<A, E, R>,
  pollInterval: Duration.Input = "100 millis"
): Effect.Effect<A, E, R | WorkflowEngine.WorkflowEngine | WorkflowEngine.WorkflowInstance> =>
  Effect.gen(function*() {
    const engine = yield* WorkflowEngine.WorkflowEngine
    const instance = yield* WorkflowEngine.WorkflowInstance
    const fiber = yield* Effect.forkChild(Effect.interruptible(statement), { startImmediately: true })
    const interrupted = engine.deferredResult(InterruptSignal).pipe(
      Effect.repeat({ schedule: Schedule.spaced(pollInterval), until: Option.isSome })
    )
    const watcher = yield* Effect.forkChild(Effect.interruptible(interrupted), { startImmediately: true })
    const exit = yield* Fiber.await(fiber).pipe(
      Effect.raceFirst(Effect.andThen(Fiber.join(watcher), Effect.andThen(Fiber.interrupt(fiber), Fiber.await(fiber))))
    )
    yield* Fiber.interrupt(watcher)
    if (exit._tag === "Failure" && Cause.hasInterrupts(exit.cause)) return yield* Workflow.suspend(instance)
    return yield* exit
  })

/** A workflow with one activity running a long statement on the worker's `SqlPgAdapter` pool */
export const ReportWorkflow = Workflow.make("ReportWorkflow", {
  // `resumedSeconds`: how long the activity's statement runs when the activity runs again (resumed elsewhere)
  payload: { id: Schema.String, seconds: Schema.Finite, resumedSeconds: Schema.optional(Schema.Finite) },
  success: Pid,
  error: DbError,
  idempotencyKey: ({ id }) => id,
  annotations: Context.make(ClusterSchema.ShardGroup, () => "worker")
})

/** The table of {@link ReportWorkflowLive}'s activity (created by each worker) */
export const ActivityRunsTable = Layer.effectDiscard(Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  yield* Effect.orDie(sql`CREATE TABLE IF NOT EXISTS demo_activity_runs (id text PRIMARY KEY, runs int NOT NULL)`)
}))

/** The workflow's implementation (registered on the worker) */
export const ReportWorkflowLive = ReportWorkflow.toLayer(Effect.fnUntraced(function*(payload) {
  const sql = yield* SqlClient.SqlClient
  const runner = yield* RunnerName
  return yield* Activity.make({
    name: "report",
    success: Pid,
    error: DbError,
    execute: Effect.gen(function*() {
      // how many times this activity started, counted in the database (it survives the runner)
      const rows = yield* Effect.mapError(
        sql<{ pid: number; runs: number }>`
          INSERT INTO demo_activity_runs (id, runs) VALUES (${payload.id}, 1)
          ON CONFLICT (id) DO UPDATE SET runs = demo_activity_runs.runs + 1
          RETURNING pg_backend_pid() AS pid, runs`,
        dbError
      )
      const { pid, runs } = rows[0]!
      const seconds = runs > 1 && payload.resumedSeconds !== undefined ? payload.resumedSeconds : payload.seconds
      yield* emit(runner, "activity-started", { id: payload.id, pid, runs })
      yield* cancellableStatement(Effect.mapError(sql`SELECT pg_sleep(${seconds})`, dbError)).pipe(
        Effect.onInterrupt(() => emit(runner, "activity-interrupted", { id: payload.id, pid }))
      )
      yield* emit(runner, "activity-ended", { id: payload.id, pid })
      return { pid }
    })
  })
}))
