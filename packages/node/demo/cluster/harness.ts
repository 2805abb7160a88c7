/**
 * Starts runner processes (runner.ts) for the cluster demo and tests: each child process is owned by the caller's
 * Scope (killed with SIGKILL when it closes, also on failure) and its timeline events are read from its stdout.
 */
import { EmbeddedPostgres, TestSession } from "@pqcancel/test-utils"
import * as Data from "effect/Data"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Schedule from "effect/Schedule"
import type * as Scope from "effect/Scope"
import * as ChildProcess from "node:child_process"
import * as Path from "node:path"
import { type Event, now } from "./app.ts"
import type { RunnerConfig } from "./runner.ts"

/** A runner did not do what was awaited in time, or exited */
export class RunnerError extends Data.TaggedError("RunnerError")<{ readonly message: string }> {}

/** A running runner process */
export interface Runner {
  readonly name: string
  /** the runner's port (runner-to-runner RPC) */
  readonly runnerPort: number
  /** the process id */
  readonly pid: number
  /** the port of its HTTP endpoints (the `default` group's runner only) */
  readonly httpPort: number | undefined
  /** every event so far */
  readonly events: ReadonlyArray<Event>
  /** the first event (from index `since`) that satisfies `match`, once there is one (bounded) */
  readonly waitFor: (
    match: (event: Event) => boolean,
    options?: { readonly since?: number | undefined; readonly timeout?: Duration.Input | undefined }
  ) => Effect.Effect<Event, RunnerError>
  /** sends a signal to the process */
  readonly kill: (signal: NodeJS.Signals) => Effect.Effect<void>
  /** waits until the process exited (bounded); its exit code or signal */
  readonly exited: (timeout?: Duration.Input) => Effect.Effect<string, RunnerError>
  /** what it printed on stderr */
  readonly stderr: () => string
}

const runnerPath = Path.join(import.meta.dirname, "runner.ts")

/**
 * Starts one runner and waits until it is ready (bounded by `timeout`, default 60 s: a loaded machine loads Effect
 * slowly).
 */
export const spawnRunner = (
  config: Omit<RunnerConfig, "runnerPort">,
  options?: { readonly timeout?: Duration.Input | undefined }
): Effect.Effect<Runner, RunnerError | EmbeddedPostgres.StartupFailed, Scope.Scope> =>
  Effect.gen(function*() {
    const runnerPort = yield* EmbeddedPostgres.freePort(false)
    const events: Array<Event> = []
    const waiters = new Set<() => void>()
    let stderr = ""
    const exit = yield* Deferred.make<string>()
    const child = yield* Effect.acquireRelease(
      Effect.sync(() =>
        ChildProcess.spawn(process.execPath, [runnerPath], {
          env: { ...process.env, PQCANCEL_RUNNER: JSON.stringify({ ...config, runnerPort }) },
          stdio: ["ignore", "pipe", "pipe"]
        })
      ),
      (child) =>
        Effect.suspend(() => {
          if (child.exitCode !== null || child.signalCode !== null) return Effect.void
          child.kill("SIGKILL")
          return Deferred.await(exit).pipe(Effect.timeoutOption("10 seconds"), Effect.asVoid)
        })
    )
    child.on("exit", (code, signal) => {
      Deferred.doneUnsafe(exit, Effect.succeed(signal ?? `exit ${code}`))
      for (const wake of waiters) wake()
    })
    let pending = ""
    child.stdout.setEncoding("utf8").on("data", (chunk: string) => {
      pending += chunk
      const lines = pending.split("\n")
      pending = lines.pop()!
      for (const line of lines) {
        if (!line.startsWith("{")) continue
        try {
          events.push(JSON.parse(line) as Event)
        } catch {
          continue
        }
      }
      for (const wake of waiters) wake()
    })
    child.stderr.setEncoding("utf8").on("data", (chunk: string) => {
      stderr = (stderr + chunk).slice(-20_000)
    })

    const waitFor: Runner["waitFor"] = (match, waitOptions) => {
      const timeout = waitOptions?.timeout ?? Duration.seconds(20)
      const found = () => events.slice(waitOptions?.since ?? 0).find(match)
      return Effect.callback<Event, RunnerError>((resume) => {
        const check = () => {
          const event = found()
          if (event !== undefined) {
            waiters.delete(check)
            resume(Effect.succeed(event))
          } else if (child.exitCode !== null || child.signalCode !== null) {
            waiters.delete(check)
            resume(Effect.fail(new RunnerError({ message: `${config.name} exited; stderr:\n${stderr}` })))
          }
        }
        waiters.add(check)
        check()
        return Effect.sync(() => waiters.delete(check))
      }).pipe(
        Effect.timeoutOrElse({
          duration: timeout,
          orElse: () =>
            Effect.fail(
              new RunnerError({
                message:
                  `${config.name}: no awaited event within ${Duration.format(Duration.fromInputUnsafe(timeout))}; ` +
                  `events: ${JSON.stringify(events.slice(-10))}; stderr:\n${stderr}`
              })
            )
        })
      )
    }

    const ready = yield* waitFor((e) => e.event === "ready", { timeout: options?.timeout ?? Duration.seconds(60) })
    return {
      name: config.name,
      runnerPort,
      pid: child.pid!,
      httpPort: typeof ready.port === "number" ? ready.port : undefined,
      events,
      waitFor,
      kill: (signal) => Effect.sync(() => void child.kill(signal)),
      exited: (timeout = Duration.seconds(20)) =>
        Deferred.await(exit).pipe(
          Effect.timeoutOrElse({
            duration: timeout,
            orElse: () => Effect.fail(new RunnerError({ message: `${config.name} did not exit` }))
          })
        ),
      stderr: () => stderr
    }
  })

/** GET `path` on a runner's HTTP endpoints; its JSON body. `signal` aborts the request. */
export const get = (
  runner: Runner,
  path: string,
  signal?: AbortSignal
): Effect.Effect<Record<string, unknown>, RunnerError> =>
  Effect.tryPromise({
    try: () =>
      fetch(`http://127.0.0.1:${runner.httpPort}${path}`, signal ? { signal } : {}).then((r) =>
        r.json() as Promise<Record<string, unknown>>
      ),
    catch: (error) => new RunnerError({ message: `GET ${path}: ${String(error)}` })
  })

/** The server's log timestamp (`log_line_prefix = '%m [%p] %e '`, `log_timezone = UTC`) in epoch milliseconds */
export const logTime = (line: string): number => {
  const match = /(\d{4}-\d\d-\d\d) (\d\d:\d\d:\d\d\.\d{3}) UTC/.exec(line)
  return match === null ? Number.NaN : Date.parse(`${match[1]}T${match[2]}Z`)
}

/** The server log settings the scenarios read: each line stamped in UTC with its backend pid and SQLSTATE */
export const serverSettings: Record<string, string> = {
  log_line_prefix: "%m [%p] %e ",
  log_timezone: "UTC",
  // a backend whose client is gone stops at the next check instead of at the end of its statement
  client_connection_check_interval: "250ms"
}

/** The SQLSTATE-57014 lines of backend `pid` in a server log */
export const cancelledLines = (log: string, pid?: number): Array<string> =>
  log.split("\n").filter((line) =>
    line.includes(" 57014 ERROR:  canceling statement due to user request") &&
    (pid === undefined || line.includes(`[${pid}] `))
  )

/** The epoch milliseconds of backend `pid`'s last state change (pg_stat_activity.state_change) */
export const stateChange = (monitor: TestSession.TestSession, pid: number): Effect.Effect<number, RunnerError> =>
  Effect.flatMap(
    Effect.orDie(
      monitor.query(`SELECT extract(epoch FROM state_change) * 1000 FROM pg_stat_activity WHERE pid = ${pid}`)
    ),
    (result) =>
      result._tag === "Ok" && result.rows[0]?.[0] != null
        ? Effect.succeed(Number(result.rows[0][0]))
        : Effect.fail(new RunnerError({ message: `no pg_stat_activity row for backend ${pid}` }))
  )

/** One line of a printed timeline */
export interface Step {
  readonly at: number
  readonly who: string
  readonly what: string
}

/** What {@link interruptedCall} saw */
export interface InterruptedCall {
  /** the backend that ran the statement, and the one that served the next call */
  readonly pid: number
  readonly nextPid: number
  /** from the caller's interrupt on the caller's runner to the backend idle (pg_stat_activity.state_change) */
  readonly interruptToIdle: number
  /** the server log's 57014 lines for that backend */
  readonly cancelled: ReadonlyArray<string>
  /** every 57014 line the server logged meanwhile (any backend) */
  readonly allCancelled: ReadonlyArray<string>
  /** the worker's cancel connections meanwhile */
  readonly cancelConnects: number
  readonly timeline: ReadonlyArray<Step>
}

/**
 * The caller on runner `caller` calls `Reports` (`kind`: through SqlPgAdapter or PgAdapter) on runner `worker`,
 * waits until the statement sleeps on the server, then gives up: `abort` aborts the HTTP request, `timeout` lets
 * the caller's `Effect.timeout` fire (after that many ms from the call). Returns the timeline from the interrupt
 * to the backend idle and the next call's backend.
 */
export const interruptedCall = Effect.fnUntraced(function*(options: {
  readonly caller: Runner
  readonly worker: Runner
  readonly monitor: TestSession.TestSession
  readonly kind: "sql" | "pg"
  readonly giveUp: { readonly _tag: "abort" } | { readonly _tag: "timeout"; readonly millis: number }
  readonly entity?: string | undefined
}) {
  const { caller, monitor, worker } = options
  const cluster = yield* EmbeddedPostgres.EmbeddedPostgres
  const entity = options.entity ?? "reports"
  yield* get(caller, `/pid?kind=${options.kind}&entity=${entity}`)
  const sinceCaller = caller.events.length
  const sinceWorker = worker.events.length
  const logSince = yield* cluster.logSize
  const controller = new AbortController()
  const path = `/report?kind=${options.kind}&entity=${entity}&seconds=60` +
    (options.giveUp._tag === "timeout" ? `&timeout=${options.giveUp.millis}` : "")
  const request = yield* Effect.forkChild(Effect.exit(get(caller, path, controller.signal)))
  const started = yield* worker.waitFor((e) => e.event === "statement-started", { since: sinceWorker })
  const pid = Number(started.pid)
  yield* Effect.orDie(TestSession.waitUntilSleeping(monitor, pid, { timeout: "20 seconds" }))
  const steps: Array<Step> = [{ at: started.at, who: worker.name, what: `${String(started.what)}: backend ${pid}` }]
  if (options.giveUp._tag === "abort") {
    steps.push({ at: now(), who: "client", what: "AbortController.abort(): the HTTP client gives up" })
    controller.abort()
  }
  const interrupted = yield* caller.waitFor((e) => e.event === "caller-interrupted", { since: sinceCaller })
  steps.push({
    at: interrupted.at,
    who: caller.name,
    what: `the caller's fiber is interrupted (${String(interrupted.reason)})`
  })
  yield* Effect.orDie(TestSession.waitUntilIdle(monitor, pid, { timeout: "20 seconds" }))
  const idleAt = yield* stateChange(monitor, pid)
  const ended = yield* worker.waitFor((e) => e.event === "handler-interrupted", { since: sinceWorker })
  yield* Fiber.join(request)
  const line = yield* Effect.orDie(
    cluster.waitForLog(new RegExp(`\\[${pid}\\] 57014 ERROR`), { since: logSince, timeout: "20 seconds" })
  )
  const log = (yield* cluster.logs).slice(logSince)
  const nextPid = Number((yield* get(caller, `/pid?kind=${options.kind}&entity=${entity}`)).pid)
  const cancelEvents = worker.events.slice(sinceWorker).filter((e) => e.event.startsWith("cancel-"))
  for (const e of cancelEvents) {
    steps.push({
      at: e.at,
      who: worker.name,
      what: e.event === "cancel-connect"
        ? `pqcancel: cancel connection to ${String(e.to)} (the session's address), sslmode=${String(e.sslmode)}`
        : e.event === "cancel-tls"
        ? "pqcancel: TLS established on the cancel connection (server certificate verified)"
        : e.event === "cancel-request-written"
        ? `pqcancel: CancelRequest written (16 bytes, ${e.tls === true ? "inside TLS" : "PLAINTEXT"})`
        : "pqcancel: the server closed the cancel connection (the cancel was dispatched)"
    })
  }
  steps.push(
    { at: logTime(line), who: "server", what: `log: ${line.slice(line.indexOf("57014"))}` },
    { at: idleAt, who: "server", what: `backend ${pid} idle (pg_stat_activity.state_change)` },
    {
      at: ended.at,
      who: worker.name,
      what: "the handler fiber ended (interrupted); its connection is back in the pool"
    }
  )
  steps.sort((x, y) => x.at - y.at)
  return {
    pid,
    nextPid,
    interruptToIdle: idleAt - interrupted.at,
    cancelled: cancelledLines(log, pid),
    allCancelled: cancelledLines(log),
    cancelConnects: cancelEvents.filter((e) => e.event === "cancel-connect").length,
    timeline: steps
  } satisfies InterruptedCall
})

/** What {@link interruptedWorkflow} saw */
export interface InterruptedWorkflow {
  readonly pid: number
  /** from the workflow's interrupt on the caller's runner to the activity's backend idle */
  readonly interruptToIdle: number
  /** the workflow's result once it completed: `Interrupted`, `Success` or `Failure` */
  readonly exit: unknown
  readonly cancelled: ReadonlyArray<string>
  readonly allCancelled: ReadonlyArray<string>
  /** whether the interrupted activity completed anyway */
  readonly activityEnded: boolean
  readonly timeline: ReadonlyArray<Step>
}

/** Polls a runner endpoint until `done` holds for its answer (bounded) */
export const pollUntil = (runner: Runner, path: string, done: (body: Record<string, unknown>) => boolean) =>
  get(runner, path).pipe(
    Effect.repeat({ schedule: Schedule.spaced("50 millis"), until: done }),
    Effect.timeoutOrElse({
      duration: "20 seconds",
      orElse: () => Effect.fail(new RunnerError({ message: `${path} never satisfied the condition` }))
    })
  )

/**
 * The caller's runner starts `ReportWorkflow` (its activity sleeps 60 s on the worker), waits until the statement
 * sleeps on the server, and interrupts the workflow through the engine (`Workflow.interrupt`).
 */
export const interruptedWorkflow = Effect.fnUntraced(function*(options: {
  readonly caller: Runner
  readonly worker: Runner
  readonly monitor: TestSession.TestSession
  readonly id: string
}) {
  const { caller, monitor, worker } = options
  const cluster = yield* EmbeddedPostgres.EmbeddedPostgres
  const sinceCaller = caller.events.length
  const since = worker.events.length
  const logSince = yield* cluster.logSize
  const { executionId } = yield* get(caller, `/workflow/start?id=${options.id}&seconds=60`)
  const started = yield* worker.waitFor((e) => e.event === "activity-started", { since })
  const pid = Number(started.pid)
  yield* Effect.orDie(TestSession.waitUntilSleeping(monitor, pid, { timeout: "20 seconds" }))
  yield* get(caller, `/workflow/interrupt?executionId=${String(executionId)}`)
  const interrupt = yield* caller.waitFor((e) => e.event === "workflow-interrupt", { since: sinceCaller })
  yield* Effect.orDie(TestSession.waitUntilIdle(monitor, pid, { timeout: "20 seconds" }))
  const idleAt = yield* stateChange(monitor, pid)
  const stopped = yield* worker.waitFor((e) => e.event === "activity-interrupted", { since })
  const result = yield* pollUntil(
    caller,
    `/workflow/poll?executionId=${String(executionId)}`,
    (body) => body.result === "Complete"
  )
  const line = yield* Effect.orDie(
    cluster.waitForLog(new RegExp(`\\[${pid}\\] 57014 ERROR`), { since: logSince, timeout: "20 seconds" })
  )
  const log = (yield* cluster.logs).slice(logSince)
  const steps: Array<Step> = [
    { at: started.at, who: worker.name, what: `the workflow's activity runs its statement: backend ${pid}` },
    { at: interrupt.at, who: caller.name, what: "Workflow.interrupt(executionId): the engine stores the signal" },
    ...worker.events.slice(since).filter((e) => e.event === "cancel-connect").map((e) => ({
      at: e.at,
      who: worker.name,
      what: "the activity's watcher saw the signal: pqcancel's cancel connection"
    })),
    { at: logTime(line), who: "server", what: `log: ${line.slice(line.indexOf("57014"))}` },
    { at: idleAt, who: "server", what: `backend ${pid} idle (pg_stat_activity.state_change)` },
    { at: stopped.at, who: worker.name, what: "the activity's statement fiber ended (interrupted); it suspends" }
  ]
  steps.sort((x, y) => x.at - y.at)
  return {
    pid,
    interruptToIdle: idleAt - interrupt.at,
    exit: result.exit,
    cancelled: cancelledLines(log, pid),
    allCancelled: cancelledLines(log),
    activityEnded: worker.events.slice(since).some((e) => e.event === "activity-ended"),
    timeline: steps
  } satisfies InterruptedWorkflow
})

/** Prints a timeline as the HTTP-abort demo prints its own: milliseconds from the first step */
export const printTimeline = (steps: ReadonlyArray<Step>, origin = steps[0]?.at ?? 0): Effect.Effect<void> =>
  Effect.sync(() => {
    for (const step of steps) {
      console.log(`   ${`+${(step.at - origin).toFixed(1)}`.padStart(9)} ms  ${step.who.padEnd(6)} ${step.what}`)
    }
  })
