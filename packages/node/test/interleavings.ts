/**
 * The one property every adapter's random-interrupt test checks, over `Arbitraries.interruptScenario` (the shared
 * generator in `@pqcancel/test-utils`): each step runs a statement that inserts its row after sleeping on the server,
 * some are interrupted at random moments. Then:
 * - a statement that was not interrupted succeeded and its row is there (no cancel ever reached it);
 * - a statement interrupted whose row was absent when its interruption completed never inserts it later (the
 *   interruption waited for the statement's end: nothing takes effect after it).
 *
 * The node-postgres, `@effect/sql-pg` (with and without `multiplex`) and postgres.js tests use it. The statement of
 * step `id` must be `INSERT INTO <table> SELECT <tag>, <id> FROM pg_sleep(<step.sleepMs / 1000>)` (or the same effect).
 */
import { assert } from "@effect/vitest"
import type { Arbitraries } from "@pqcancel/test-utils"
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import { interruptedOnly } from "./fixtures.ts"

/** What happened to one step */
export interface StepOutcome {
  readonly id: number
  readonly exit: Exit.Exit<unknown, unknown>
  /** for an interrupted step: its row was there when the interruption completed */
  readonly presentAfter: boolean
}

/**
 * Runs every step of `scenario` concurrently (each after its `startAfterMs`), interrupting those with an
 * `interruptAfterMs`; `present(id)` reads (on another connection) whether step `id`'s row is there; `ids()` reads
 * all the rows at the end. Then checks the property.
 */
export const checkInterleaving = <E1, R1, E2, R2, E3, R3>(
  scenario: ReadonlyArray<Arbitraries.InterruptStep>,
  statement: (step: Arbitraries.InterruptStep, id: number) => Effect.Effect<unknown, E1, R1>,
  present: (id: number) => Effect.Effect<boolean, E2, R2>,
  ids: Effect.Effect<ReadonlySet<number>, E3, R3>
): Effect.Effect<ReadonlyArray<StepOutcome>, E2 | E3, R1 | R2 | R3> =>
  Effect.gen(function*() {
    const outcomes = yield* Effect.forEach(
      scenario,
      (step, id) =>
        Effect.gen(function*() {
          // the workload's timing (when each statement is issued and interrupted), not a synchronisation
          if (step.startAfterMs > 0) yield* Effect.sleep(step.startAfterMs)
          const fiber = yield* statement(step, id).pipe(Effect.forkChild)
          if (step.interruptAfterMs === null) {
            return { id, exit: yield* Fiber.await(fiber), presentAfter: true } satisfies StepOutcome
          }
          yield* Effect.sleep(step.interruptAfterMs)
          const exit = yield* Fiber.interrupt(fiber).pipe(Effect.andThen(Fiber.await(fiber)))
          return { id, exit, presentAfter: yield* present(id) } satisfies StepOutcome
        }),
      { concurrency: "unbounded" }
    )
    const final = yield* ids
    for (const outcome of outcomes) {
      if (interruptedOnly(outcome.exit)) {
        // absent when its interruption completed ⇒ absent for ever
        if (!outcome.presentAfter) assert.isFalse(final.has(outcome.id), `row ${outcome.id} appeared later`)
      } else {
        // never cancelled, never failed: only interrupted statements are cancelled
        const exit = outcome.exit
        assert.isTrue(
          Exit.isSuccess(exit),
          `statement ${outcome.id}: ${Exit.isFailure(exit) ? Cause.pretty(exit.cause) : ""}`
        )
        assert.isTrue(final.has(outcome.id), `row ${outcome.id} is missing`)
      }
    }
    return outcomes
  })
