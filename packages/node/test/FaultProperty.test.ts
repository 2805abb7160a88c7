/**
 * Random fault schedules × random interrupt times × adapters: statements run concurrently on one adapter (a shared
 * node-postgres Client, postgres.js pipelining on one connection, `@effect/sql-pg` with two pooled connections)
 * through a FaultProxy whose cancel connections and sessions get a random fault, a session maybe stalled half-way;
 * some statements are interrupted at random moments. Then:
 * - every interruption ended within its bound (`cancelTimeout + drainTimeout`, plus scheduling slack);
 * - no statement but an interrupted one ended with SQLSTATE 57014 (cancelled);
 * - no unhandled rejection;
 * - every connection ends healthy (the next statement runs) or retired (the adapter ended it);
 * - once the adapter's Scope closed, no socket of it is left open (the proxy saw every connection closed).
 */
import { assert, layer } from "@effect/vitest"
import { Arbitraries, EmbeddedPostgres, FaultProxy } from "@pqcancel/test-utils"
import * as Arbitrary from "effect/Arbitrary"
import * as Cause from "effect/Cause"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Schema from "effect/Schema"
import { adapters, CANCELED } from "./faultSubjects.ts"
import { interruptedOnly } from "./fixtures.ts"

const CANCEL_TIMEOUT_MS = 500
const DRAIN_TIMEOUT_MS = 800
/** what a loaded 2-core machine may add to a bound: scheduling, not the cancel */
const SLACK_MS = 1500
const bounds = { cancelTimeout: Duration.millis(CANCEL_TIMEOUT_MS), drainTimeout: Duration.millis(DRAIN_TIMEOUT_MS) }
const sizes: Record<string, string> = {
  "node-postgres Client": "one Client, shared",
  // two connections: see docs/reliability.md's known issues
  "postgres.js": "one pipelining connection",
  "@effect/sql-pg": "two pooled connections"
}

/** The faults of one run */
interface Schedule {
  readonly cancel: "none" | "latency" | "slices" | "blackhole" | "reset-once" | "reset" | "held-close"
  readonly session: "none" | "latency" | "slices"
  readonly latencyMs: number
  /** stall the open sessions this long after the statements began (null: never) */
  readonly stallAfterMs: number | null
}

const int = (maximum: number) => Schema.Int.check(Schema.isBetween({ minimum: 0, maximum }))
const schedule: Arbitrary.Arbitrary<Schedule> = Arbitrary.schema(Schema.Struct({
  cancel: Schema.Literals(["none", "latency", "slices", "blackhole", "reset-once", "reset", "held-close"]),
  session: Schema.Literals(["none", "latency", "slices"]),
  latencyMs: int(60),
  stallAfterMs: Schema.NullOr(int(150).check(Schema.isGreaterThanOrEqualTo(20)))
}))

const cancelFault = (s: Schedule, attempt: number): FaultProxy.Fault | undefined => {
  switch (s.cancel) {
    case "none":
      return undefined
    case "latency":
      return { latencyMs: { up: s.latencyMs, down: s.latencyMs } }
    case "slices":
      return { slice: true }
    case "blackhole":
      return { blackhole: true }
    case "reset-once":
      return attempt === 0 ? { resetAfter: { up: 0 } } : undefined
    case "reset":
      return { resetAfter: { up: 0 } }
    case "held-close":
      return { holdCloseMs: 3000 }
  }
}

const sessionFault = (s: Schedule): FaultProxy.Fault | undefined =>
  s.session === "latency"
    ? { latencyMs: { up: s.latencyMs, down: s.latencyMs } }
    : s.session === "slices"
    ? { slice: true }
    : undefined

layer(EmbeddedPostgres.layer18, { excludeTestServices: true, timeout: "60 seconds" })("faults × interrupts", (it) => {
  for (const adapter of adapters) {
    it.effect.prop(
      `${adapter.name} (${sizes[adapter.name]}): interrupts within their bound, no victim, no leak, healthy or retired`,
      {
        faults: schedule,
        scenario: Arbitraries.interruptScenario({ maxLength: 4, maxSleepMs: 300, maxInterruptMs: 150 })
      },
      ({ faults, scenario }) =>
        Effect.gen(function*() {
          const cluster = yield* EmbeddedPostgres.EmbeddedPostgres
          const unhandled: Array<string> = []
          const onUnhandled = (reason: unknown) => {
            unhandled.push(reason instanceof Error ? `${reason.message}\n${reason.stack}` : String(reason))
          }
          process.on("unhandledRejection", onUnhandled)
          const proxy = yield* FaultProxy.make({ upstream: { port: cluster.port } })
          const sessions = new Set<number>()
          let cancels = 0
          proxy.setRule((c) => {
            if (c.first === "CancelRequest") return cancelFault(faults, cancels++)
            sessions.add(c.index)
            return sessionFault(faults)
          })
          const outcomes = yield* Effect.scoped(
            Effect.gen(function*() {
              const subject = yield* adapter.open(proxy.port, bounds, adapter.name === "postgres.js" ? 1 : 2)
              // the session is up before the statements (and the stall) begin
              yield* Effect.orDie(subject.run("SELECT 1"))
              if (faults.stallAfterMs !== null) {
                const after = faults.stallAfterMs
                // the fault schedule's timing, not a synchronisation
                yield* Effect.sleep(after).pipe(
                  Effect.andThen(Effect.sync(() => proxy.stall((r) => sessions.has(r.index)))),
                  Effect.forkScoped
                )
              }
              // a stalled session never answers: its statements can only end by being interrupted
              const steps = faults.stallAfterMs === null
                ? scenario
                : scenario.map((step) => ({ ...step, interruptAfterMs: step.interruptAfterMs ?? 300 }))
              const outcomes = yield* Effect.forEach(steps, (step) =>
                Effect.gen(function*() {
                  // the workload's timing (when each statement is issued and interrupted), not a synchronisation
                  if (step.startAfterMs > 0) yield* Effect.sleep(step.startAfterMs)
                  const fiber = yield* subject.run(`SELECT pg_sleep(${step.sleepMs / 1000})`).pipe(Effect.forkChild)
                  if (step.interruptAfterMs === null) return { exit: yield* Fiber.await(fiber), elapsed: 0 }
                  yield* Effect.sleep(step.interruptAfterMs)
                  const started = Date.now()
                  yield* Fiber.interrupt(fiber)
                  return { exit: yield* Fiber.await(fiber), elapsed: Date.now() - started }
                }), { concurrency: "unbounded" })
              // healthy or retired: a connection the adapter kept runs the next statement
              const final = subject.retired() || faults.stallAfterMs !== null
                ? undefined
                : yield* Effect.exit(subject.run("SELECT 1"))
              return { outcomes, final, retired: subject.retired() }
            })
          )
          process.off("unhandledRejection", onUnhandled)

          for (const [i, outcome] of outcomes.outcomes.entries()) {
            assert.isBelow(outcome.elapsed, CANCEL_TIMEOUT_MS + DRAIN_TIMEOUT_MS + SLACK_MS, `interrupt ${i}'s bound`)
            if (!interruptedOnly(outcome.exit) && Exit.isFailure(outcome.exit)) {
              assert.notInclude(Cause.pretty(outcome.exit.cause), CANCELED, `statement ${i} was cancelled`)
            }
          }
          if (outcomes.final !== undefined) {
            assert.isTrue(
              Exit.isSuccess(outcomes.final),
              `the connection is neither healthy nor retired: ${
                Exit.isFailure(outcomes.final) ? Cause.pretty(outcomes.final.cause) : ""
              }`
            )
          }
          assert.strictEqual(unhandled.join("\n---\n"), "", "unhandled rejections")
          assert.isTrue(yield* proxy.settled(0), "a socket left open")
        }),
      { timeout: 60_000, arbitrary: { runs: 6, maxShrinks: 2 } }
    )
  }
})
