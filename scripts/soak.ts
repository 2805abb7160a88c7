/**
 * Soak (`pnpm soak`; 30 s of it in `.ci/run`): every adapter — a node-postgres Client per worker, postgres.js and
 * `@effect/sql-pg` pools shared by their workers — under a steady mix of statements, interrupts and faults for a
 * bounded time, through a FaultProxy in front of an embedded PostgreSQL 18. Cancel connections get random faults
 * (latency, 1–5 byte pieces, resets, held closes, blackholes), sessions latency or pieces; every few seconds an open
 * session is stalled both ways (half-open) and the listener refuses connections for a moment.
 *
 * Printed per adapter: statements, interrupts, cancels sent, connections retired, victims (a statement that was not
 * interrupted but ended cancelled: must be 0), hangs (an interruption past `cancelTimeout + drainTimeout` plus
 * slack: must be 0), other errors (connections lost to the faults); then the heap (after a GC) and the open file
 * descriptors before and after, the proxy's connections left open and unhandled rejections. Exits non-zero on a
 * victim, a hang, a leak (descriptors or connections left open, the heap grown by more than 32 MB) or an unhandled
 * rejection.
 *
 *   node --expose-gc scripts/soak.ts [--minutes N | --seconds N]   (default 2 minutes)
 */
import { CancelMetrics } from "@pqcancel/core"
import { EmbeddedPostgres, FaultProxy } from "@pqcancel/test-utils"
import * as Cause from "effect/Cause"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import * as References from "effect/References"
import * as Scope from "effect/Scope"
import * as Fs from "node:fs"
import { adapters, CANCELED } from "../packages/node/test/faultSubjects.ts"
import type { Adapter, Subject } from "../packages/node/test/faultSubjects.ts"

const argument = (name: string): number | undefined => {
  const index = process.argv.indexOf(name)
  if (index === -1) return undefined
  const value = Number(process.argv[index + 1])
  if (!Number.isFinite(value) || value <= 0) throw new Error(`${name} needs a positive number`)
  return value
}
const seconds = argument("--seconds") ?? (argument("--minutes") ?? 2) * 60

const CANCEL_TIMEOUT_MS = 1000
const DRAIN_TIMEOUT_MS = 1000
/** what a loaded machine may add to a bound: scheduling, not the cancel */
const SLACK_MS = 2000
const BOUND_MS = CANCEL_TIMEOUT_MS + DRAIN_TIMEOUT_MS + SLACK_MS
const bounds = { cancelTimeout: Duration.millis(CANCEL_TIMEOUT_MS), drainTimeout: Duration.millis(DRAIN_TIMEOUT_MS) }
const WORKERS = 4
const HEAP_GROWTH_LIMIT_MB = 32

const random = (n: number) => Math.floor(Math.random() * n)

/** A cancel connection's fault: mostly none */
const cancelFault = (): FaultProxy.Fault | undefined => {
  const r = random(100)
  if (r < 50) return undefined
  if (r < 65) return { latencyMs: { up: 10 + random(60), down: 10 + random(60) } }
  if (r < 75) return { slice: true }
  if (r < 85) return { resetAfter: { up: 0 } }
  if (r < 95) return { holdCloseMs: 1500 }
  return { blackhole: true }
}

/** A session's fault: mostly none */
const sessionFault = (): FaultProxy.Fault | undefined => {
  const r = random(100)
  if (r < 80) return undefined
  if (r < 90) return { latencyMs: { up: random(30), down: random(30) } }
  return { slice: true }
}

interface Counts {
  statements: number
  interrupts: number
  victims: number
  hangs: number
  errors: number
  cancels: number
  retired: number
  longest: number
}

const sum = (id: string) =>
  Effect.map(Metric.snapshot, (snapshots) =>
    snapshots.reduce(
      (total, s) => s.id === id && s.type === "Counter" ? total + Number(s.state.count) : total,
      0
    ))

/** Interrupts `fiber` and returns how long the interruption took */
const interruptTimed = (fiber: Fiber.Fiber<unknown, unknown>) =>
  Effect.gen(function*() {
    const started = performance.now()
    const done = yield* Fiber.interrupt(fiber).pipe(Effect.timeoutOption(Duration.millis(BOUND_MS * 3)))
    return Option.isNone(done) ? Number.POSITIVE_INFINITY : performance.now() - started
  })

/** One worker: statements until the deadline, some interrupted; reopens its subject when it is gone */
const worker = (
  counts: Counts,
  deadline: number,
  subjectOf: () => Effect.Effect<Subject | undefined>,
  reopen: (failed: Subject) => Effect.Effect<void>
) =>
  Effect.gen(function*() {
    while (performance.now() < deadline) {
      const subject = yield* subjectOf()
      if (subject === undefined) {
        // the listener refuses connections for a moment: try again shortly (the fault's timing, not a synchronisation)
        yield* Effect.sleep(Duration.millis(100))
        continue
      }
      const interrupted = random(100) < 40
      counts.statements++
      const fiber = yield* subject.run(interrupted ? "SELECT pg_sleep(0.3)" : "SELECT pg_sleep(0.002)").pipe(
        Effect.forkChild
      )
      let exit: Exit.Exit<unknown, unknown>
      if (interrupted) {
        // the workload's timing: interrupt somewhere between queued and running
        yield* Effect.sleep(Duration.millis(random(80)))
        counts.interrupts++
        const took = yield* interruptTimed(fiber)
        counts.longest = Math.max(counts.longest, took)
        if (took > BOUND_MS) counts.hangs++
        exit = yield* Fiber.await(fiber)
      } else {
        const ended = yield* Fiber.await(fiber).pipe(Effect.timeoutOption(Duration.millis(BOUND_MS)))
        if (Option.isSome(ended)) {
          exit = ended.value
        } else {
          // a stalled session never answers: the statement can only end by being interrupted
          counts.interrupts++
          const took = yield* interruptTimed(fiber)
          counts.longest = Math.max(counts.longest, took)
          if (took > BOUND_MS) counts.hangs++
          exit = yield* Fiber.await(fiber)
        }
      }
      if (Exit.isFailure(exit) && !Cause.hasInterruptsOnly(exit.cause)) {
        if (!interrupted && Cause.pretty(exit.cause).includes(CANCELED)) counts.victims++
        else counts.errors++
        yield* reopen(subject)
      } else if (subject.retired()) {
        yield* reopen(subject)
      }
    }
  })

/** Opens a subject in a Scope of its own: undefined when it cannot connect now */
const openIn = (adapter: Adapter, port: number, size: number) =>
  Effect.gen(function*() {
    const scope = yield* Scope.make()
    const opened = yield* Effect.exit(Scope.provide(adapter.open(port, bounds, size), scope))
    if (Exit.isSuccess(opened)) return { subject: opened.value, scope }
    yield* Scope.close(scope, Exit.void)
    return undefined
  })

const soakAdapter = (adapter: Adapter, port: number, deadline: number) =>
  Effect.gen(function*() {
    const counts: Counts = {
      statements: 0,
      interrupts: 0,
      victims: 0,
      hangs: 0,
      errors: 0,
      cancels: 0,
      retired: 0,
      longest: 0
    }
    const open: Array<Scope.Closeable> = []
    const perWorker = adapter.name === "node-postgres Client"
    // node-postgres: a Client per worker; the pools: one shared by all workers
    let shared: { subject: Subject; scope: Scope.Closeable } | undefined
    const openOne = Effect.gen(function*() {
      const opened = yield* openIn(adapter, port, 2)
      if (opened !== undefined) open.push(opened.scope)
      return opened
    })
    yield* Effect.forEach(Array.from({ length: WORKERS }, (_, i) => i), () =>
      Effect.gen(function*() {
        let own: { subject: Subject; scope: Scope.Closeable } | undefined
        yield* worker(
          counts,
          deadline,
          () =>
            Effect.gen(function*() {
              if (perWorker) return (own ??= yield* openOne)?.subject
              return (shared ??= yield* openOne)?.subject
            }),
          (failed) =>
            Effect.sync(() => {
              // a Client that failed or was retired is replaced; a pool reconnects by itself
              if (perWorker && own?.subject === failed) own = undefined
            })
        )
      }), { concurrency: "unbounded" })
    yield* Effect.forEach(open, (scope) => Scope.close(scope, Exit.void), { discard: true })
    counts.cancels = yield* sum(CancelMetrics.names.cancels)
    counts.retired = yield* sum(CancelMetrics.names.retired)
    return counts
  }).pipe(Effect.provideService(Metric.MetricRegistry, new Map()))

const openFds = (): number | undefined => {
  try {
    return Fs.readdirSync("/proc/self/fd").length
  } catch {
    return undefined
  }
}
const heapMb = () => {
  ;(globalThis as { gc?: () => void }).gc?.()
  return process.memoryUsage().heapUsed / 1024 / 1024
}

const program = Effect.gen(function*() {
  const cluster = yield* EmbeddedPostgres.make({ version: 18 })
  const proxy = yield* FaultProxy.make({ upstream: { port: cluster.port } })
  const sessions = new Set<number>()
  proxy.setRule((c) => {
    if (c.first === "CancelRequest") return cancelFault()
    sessions.add(c.index)
    return sessionFault()
  })
  const unhandled: Array<string> = []
  const onUnhandled = (reason: unknown) => {
    unhandled.push(reason instanceof Error ? reason.message : String(reason))
  }
  process.on("unhandledRejection", onUnhandled)
  const heapBefore = heapMb()
  const fdsBefore = openFds()
  console.log(
    `soak: ${seconds} s, ${adapters.map((a) => a.name).join(", ")}; ${WORKERS} workers each; cancelTimeout ` +
      `${CANCEL_TIMEOUT_MS} ms, drainTimeout ${DRAIN_TIMEOUT_MS} ms`
  )
  const deadline = performance.now() + seconds * 1000
  // the faults' schedule: every 4 s one open session stalls; every 9 s the listener refuses for 300 ms
  const chaos = yield* Effect.gen(function*() {
    for (let tick = 1;; tick++) {
      yield* Effect.sleep(Duration.seconds(1))
      if (tick % 4 === 0) {
        const open = proxy.records().filter((r) => sessions.has(r.index) && !r.closed)
        const victim = open[random(open.length)]
        if (victim !== undefined) proxy.stall((r) => r.index === victim.index)
      }
      if (tick % 9 === 0) {
        yield* proxy.refuse
        yield* Effect.sleep(Duration.millis(300))
        yield* proxy.accept
      }
    }
  }).pipe(Effect.forkChild)
  const results = yield* Effect.forEach(adapters, (adapter) => soakAdapter(adapter, proxy.port, deadline), {
    concurrency: "unbounded"
  })
  yield* Fiber.interrupt(chaos)
  yield* proxy.accept
  // every connection the adapters opened is closed by its client (a stalled one too); then the proxy's own sockets
  const closed = yield* proxy.settled(0, 10_000)
  const left = proxy.records().filter((r) => !r.clientClosed).length
  yield* proxy.drained(0, 10_000)
  process.off("unhandledRejection", onUnhandled)
  const heapAfter = heapMb()
  const fdsAfter = openFds()

  const pad = (s: string | number, n: number) => String(s).padStart(n)
  console.log(
    `${"adapter".padEnd(22)}${pad("statements", 11)}${pad("interrupts", 11)}${pad("cancels", 9)}${pad("retired", 9)}${
      pad("victims", 9)
    }${pad("hangs", 7)}${pad("errors", 8)}${pad("longest ms", 11)}`
  )
  for (const [i, c] of results.entries()) {
    console.log(
      `${adapters[i]!.name.padEnd(22)}${pad(c.statements, 11)}${pad(c.interrupts, 11)}${pad(c.cancels, 9)}${
        pad(c.retired, 9)
      }${pad(c.victims, 9)}${pad(c.hangs, 7)}${pad(c.errors, 8)}${pad(Math.round(c.longest), 11)}`
    )
  }
  console.log(
    `heap ${heapBefore.toFixed(1)} → ${heapAfter.toFixed(1)} MB; open fds ${fdsBefore ?? "?"} → ${
      fdsAfter ?? "?"
    }; proxy connections left open ${left}; unhandled rejections ${unhandled.length}`
  )
  const problems = [
    ...results.flatMap((c, i) => [
      ...(c.victims > 0 ? [`${adapters[i]!.name}: ${c.victims} victims`] : []),
      ...(c.hangs > 0 ? [`${adapters[i]!.name}: ${c.hangs} hangs`] : [])
    ]),
    ...(closed ? [] : [`${left} connections left open`]),
    ...(fdsBefore !== undefined && fdsAfter !== undefined && fdsAfter > fdsBefore + 4
      ? [`${fdsAfter - fdsBefore} descriptors more`]
      : []),
    ...(heapAfter - heapBefore > HEAP_GROWTH_LIMIT_MB ? [`heap grew ${(heapAfter - heapBefore).toFixed(1)} MB`] : []),
    ...unhandled.map((u) => `unhandled rejection: ${u}`)
  ]
  console.log(problems.length === 0 ? "soak: ok" : `soak: FAILED\n  ${problems.join("\n  ")}`)
  return problems.length === 0
}).pipe(
  Effect.scoped,
  // the adapters' warnings (a statement that completed before its cancel) would drown the report
  Effect.provideService(References.MinimumLogLevel, "Error")
)

Effect.runPromise(program).then(
  (ok) => process.exit(ok ? 0 : 1),
  (error: unknown) => {
    console.error("soak: crashed", error)
    process.exit(1)
  }
)
