/**
 * One runner process of the cluster demo and tests: `node runner.ts` with its configuration as JSON in the
 * environment variable `PQCANCEL_RUNNER` ({@link RunnerConfig}). A socket runner (`NodeClusterSocket.layer`) with
 * its message and runner storage in PostgreSQL, through a `SqlPgAdapter` pool; the app's statements go through a
 * second `SqlPgAdapter` pool and a node-postgres pool (each of one connection, so "the connection went back to the
 * pool" shows as "the next call ran on the same backend").
 *
 * - a runner of the shard group `worker` hosts `Reports` and `ReportWorkflow` (app.ts);
 * - a runner of the shard group `default` hosts `JobDirectory` and serves the caller's HTTP endpoints
 *   (`/report`, `/pid`, `/workflow/*`, `/hog`, `/admin/cancel`).
 *
 * It prints `{"event":"ready"}` (with the HTTP port) once it serves, and its timeline as JSON lines.
 */
import * as NodeHttpServer from "@effect/platform-node/NodeHttpServer"
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import { CancelConnection, ConnectionOptions } from "@pqcancel/core"
import { NodeTransport } from "@pqcancel/node"
import * as SqlPgAdapter from "@pqcancel/node/SqlPgAdapter"
import * as ClusterWorkflowEngine from "effect/cluster/ClusterWorkflowEngine"
import * as RunnerAddress from "effect/cluster/RunnerAddress"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as HttpRouter from "effect/http/HttpRouter"
import * as HttpServer from "effect/http/HttpServer"
import * as HttpServerResponse from "effect/http/HttpServerResponse"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Schema from "effect/Schema"
import * as SqlClient from "effect/sql/SqlClient"
import * as Fs from "node:fs"
import * as Http from "node:http"
import pg from "pg"
import { narratedTransport } from "../narratedTransport.ts"
import {
  ActivityRunsTable,
  emit,
  JobDirectoryLive,
  Jobs,
  now,
  PgPool,
  Reports,
  ReportsLive,
  ReportWorkflow,
  ReportWorkflowLive,
  RunnerName
} from "./app.ts"
import * as SocketRunner from "./socketRunner.ts"

/** The configuration of one runner (JSON in `PQCANCEL_RUNNER`) */
export const RunnerConfig = Schema.Struct({
  name: Schema.String,
  /** `worker` (hosts the entity and the workflow) or `default` (the caller: HTTP endpoints, the job directory) */
  group: Schema.Literals(["worker", "default"]),
  /** the runner's own port (runner-to-runner RPC, loopback) */
  runnerPort: Schema.Finite,
  /** PostgreSQL on 127.0.0.1 with TLS: the app's and the storage's sessions are verify-full */
  pgPort: Schema.Finite,
  caCertPath: Schema.String,
  /** shards per group (the same on every runner) */
  shardsPerGroup: Schema.Finite
})

/** {@link RunnerConfig}'s type */
export type RunnerConfig = typeof RunnerConfig.Type

const config = Schema.decodeUnknownSync(Schema.fromJsonString(RunnerConfig))(process.env.PQCANCEL_RUNNER ?? "")
const ca = Fs.readFileSync(config.caCertPath, "utf8")

const pgConfig = (application: string, maxConnections: number) => ({
  host: "localhost",
  port: config.pgPort,
  username: "postgres",
  ssl: { ca },
  applicationName: application,
  maxConnections
})

// NodeTransport, narrating the cancel connections of the app's pools on the timeline
const NarratedTransport = narratedTransport((step) => {
  const { _tag, ...fields } = step
  const event = {
    Connect: "cancel-connect",
    TlsEstablished: "cancel-tls",
    RequestWritten: "cancel-request-written",
    Eof: "cancel-eof"
  }[_tag]
  process.stdout.write(`${JSON.stringify({ runner: config.name, event, at: now(), ...fields })}\n`)
})

// the cluster's storage: its own pool (SqlPgAdapter too: its polls are cancelled when the runner shuts down)
const StorageSql = SqlPgAdapter.layer(pgConfig(`${config.name}-storage`, 6)).pipe(Layer.provide(NodeTransport.layer))
// the app's statements: a pool of one connection
const AppSql = SqlPgAdapter.layer(pgConfig(`${config.name}-app`, 1)).pipe(Layer.provide(NarratedTransport))
const AppPg = Layer.effect(PgPool)(Effect.acquireRelease(
  Effect.sync(() =>
    new pg.Pool({
      host: "localhost",
      port: config.pgPort,
      user: "postgres",
      ssl: { ca, servername: "localhost" },
      application_name: `${config.name}-pg`,
      // the server's default (no check): a backend of this pool whose runner died is noticed only when it writes;
      // the SqlPgAdapter pools keep the server's setting (the tests and demo set 250ms)
      options: "-c client_connection_check_interval=0",
      max: 1
    })
  ),
  (pool) => Effect.promise(() => pool.end())
))

// NodeClusterSocket.layer({ storage: "sql", shardingConfig }) with TCP_NODELAY on the runner sockets (socketRunner.ts)
const Sharding = SocketRunner.layer({
  runnerAddress: Option.some(RunnerAddress.make("127.0.0.1", config.runnerPort)),
  availableShardGroups: ["default", "worker"],
  assignedShardGroups: [config.group],
  shardsPerGroup: config.shardsPerGroup,
  // small intervals: runners find each other and take shards over within a second or two
  refreshAssignmentsInterval: "250 millis",
  entityMessagePollInterval: "250 millis",
  entityReplyPollInterval: "100 millis",
  shardLockRefreshInterval: "1 second",
  shardLockExpiration: "5 seconds",
  entityTerminationTimeout: "5 seconds"
}).pipe(Layer.provide(StorageSql))

const Cluster = ClusterWorkflowEngine.layer.pipe(Layer.provideMerge(Sharding))

const Name = Layer.succeed(RunnerName)(config.name)

// the caller's endpoints
const json = (body: unknown) => HttpServerResponse.jsonUnsafe(body)
const params = (url: string) => new URL(url, "http://runner").searchParams

const Routes = Layer.mergeAll(
  // GET /report?kind=sql|pg&seconds=60[&timeout=ms]: calls Reports on the worker; the caller gives up by a timeout
  // or by aborting the HTTP request, either way its fiber is interrupted
  HttpRouter.add("GET", "/report", (request) =>
    Effect.gen(function*() {
      const query = params(request.url)
      const seconds = Number(query.get("seconds") ?? "60")
      const timeout = query.get("timeout")
      const reports = (yield* Reports.client)(query.get("entity") ?? "reports")
      const thenMillis = query.get("then")
      const call = query.get("kind") === "pg"
        ? reports.ReportPg({ seconds })
        : reports.Report({ seconds, ...(thenMillis === null ? {} : { thenMillis: Number(thenMillis) }) })
      yield* emit(config.name, "call-sent", { kind: query.get("kind") ?? "sql" })
      // the call in its own fiber, so the moment the caller gives up is stamped before the interrupt propagates
      const fiber = yield* Effect.forkChild(call, { startImmediately: true })
      const giveUp = (reason: string) =>
        Effect.andThen(emit(config.name, "caller-interrupted", { reason }), Fiber.interrupt(fiber))
      const waited = yield* Fiber.await(fiber).pipe(
        Effect.timeoutOption(timeout === null ? Duration.infinity : Duration.millis(Number(timeout))),
        Effect.onInterrupt(() => giveUp("the HTTP request was aborted"))
      )
      const exit = Option.isSome(waited)
        ? waited.value
        : yield* Effect.andThen(giveUp(`timeout ${timeout} ms`), Fiber.await(fiber))
      return json(Exit.isSuccess(exit) ? { outcome: "answered", ...exit.value } : { outcome: String(exit.cause) })
    })),
  HttpRouter.add("GET", "/pid", (request) =>
    Effect.gen(function*() {
      const query = params(request.url)
      const reports = (yield* Reports.client)(query.get("entity") ?? "reports")
      return json(yield* Effect.orDie(query.get("kind") === "pg" ? reports.PidPg() : reports.Pid()))
    })),
  // the workflow: start (discard: runs on the worker), interrupt (the engine's), poll
  HttpRouter.add("GET", "/workflow/start", (request) =>
    Effect.gen(function*() {
      const query = params(request.url)
      const resumed = query.get("resumed")
      const executionId = yield* ReportWorkflow.execute(
        {
          id: query.get("id") ?? "w",
          seconds: Number(query.get("seconds") ?? "60"),
          ...(resumed === null ? {} : { resumedSeconds: Number(resumed) })
        },
        { discard: true }
      )
      return json({ executionId })
    })),
  HttpRouter.add("GET", "/workflow/interrupt", (request) =>
    Effect.gen(function*() {
      const executionId = params(request.url).get("executionId") ?? ""
      yield* emit(config.name, "workflow-interrupt", { executionId })
      yield* ReportWorkflow.interrupt(executionId)
      return json({ ok: true })
    })),
  HttpRouter.add("GET", "/workflow/poll", (request) =>
    Effect.gen(function*() {
      const result = yield* ReportWorkflow.poll(params(request.url).get("executionId") ?? "")
      if (Option.isNone(result)) return json({ result: "none" })
      return json(
        result.value._tag === "Complete"
          ? {
            result: "Complete",
            exit: Exit.isSuccess(result.value.exit)
              ? "Success"
              : Exit.hasInterrupts(result.value.exit)
              ? "Interrupted"
              : "Failure"
          }
          : { result: result.value._tag }
      )
    })),
  // a job on the worker that publishes its CancelKey to this runner (discard: the call returns at once)
  HttpRouter.add("GET", "/job/start", (request) =>
    Effect.gen(function*() {
      const query = params(request.url)
      const reports = (yield* Reports.client)("jobs")
      yield* reports.Job({ job: query.get("job") ?? "job", seconds: Number(query.get("seconds") ?? "60") }, {
        discard: true
      })
      return json({ ok: true })
    })),
  // holds this runner's app pool (one connection) for `seconds`: pg_cancel_backend cannot get a connection then
  HttpRouter.add("GET", "/hog", (request) =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const seconds = Number(params(request.url).get("seconds") ?? "60")
      const pid = (yield* sql<{ pid: number }>`SELECT pg_backend_pid() AS pid`)[0]!.pid
      yield* emit(config.name, "hog-started", { pid })
      yield* sql`SELECT pg_sleep(${seconds})`
      return json({ pid })
    }).pipe(Effect.orDie)),
  // the admin endpoint: cancels a job by its published key, or first tries pg_cancel_backend on this runner's pool
  HttpRouter.add("GET", "/admin/cancel", (request) =>
    Effect.gen(function*() {
      const query = params(request.url)
      const job = (yield* Jobs).get(query.get("job") ?? "")
      if (job === undefined) return json({ outcome: "no such job" })
      if (query.get("try") === "pg_cancel_backend") {
        const sql = yield* SqlClient.SqlClient
        const tried = yield* sql`SELECT pg_cancel_backend(${job.key.pid})`.pipe(
          Effect.timeoutOption("300 millis"),
          Effect.orDie
        )
        if (Option.isSome(tried)) return json({ outcome: "pg_cancel_backend" })
        yield* emit(config.name, "pg_cancel_backend-no-connection", { job: job.job })
      }
      // the cancel's options: this runner's own view of the server (verify-full with its CA); the key and the
      // address the job's session is connected to come from the worker
      const options = yield* Effect.fromResult(ConnectionOptions.fromParams({
        host: "localhost",
        port: String(config.pgPort),
        sslmode: "verify-full",
        sslrootcert: config.caCertPath,
        connect_timeout: "5"
      }))
      yield* emit(config.name, "admin-cancel", { job: job.job, pid: job.key.pid })
      yield* CancelConnection.cancel({
        options,
        host: options.hosts[0]!,
        address: job.address,
        key: job.key
      })
      yield* emit(config.name, "admin-cancel-dispatched", { job: job.job })
      return json({ outcome: "CancelRequest" })
    }).pipe(Effect.orDie))
)

const HttpLive = HttpRouter.serve(Routes, { disableLogger: true, disableListenLog: true }).pipe(
  Layer.provideMerge(NodeHttpServer.layer(() => Http.createServer(), { port: 0, host: "127.0.0.1" }))
)

const Ready = Layer.effectDiscard(Effect.gen(function*() {
  const server = yield* Effect.serviceOption(HttpServer.HttpServer)
  const port = Option.match(server, {
    onNone: () => undefined,
    onSome: (s) => s.address._tag === "UnixPathAddress" ? undefined : s.address.port
  })
  yield* emit(config.name, "ready", { port, pid: process.pid })
}))

const Worker = Layer.mergeAll(ReportsLive, ReportWorkflowLive, ActivityRunsTable).pipe(
  Layer.provide([AppSql, AppPg, Name, NarratedTransport]),
  Layer.provide(Cluster)
)

const Caller = Layer.mergeAll(JobDirectoryLive, HttpLive).pipe(
  Layer.provide([AppSql, Name, Layer.sync(Jobs)(() => new Map()), NarratedTransport]),
  Layer.provide(Cluster)
)

const Main = Ready.pipe(Layer.provide(config.group === "worker" ? Worker : Caller))

Layer.launch(Main).pipe(NodeRuntime.runMain({ disableErrorReporting: false }))
