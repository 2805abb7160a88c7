/**
 * What happens once a fiber running a statement is interrupted: locate the statement, cancel it over the session's
 * encryption (retried, bounded), wait for it to end (bounded, re-cancelling while it still runs), and retire the
 * session when its safety cannot be confirmed. Shared by `CancelOnInterrupt.cancelOnInterrupt` (the statement runs in
 * a child fiber) and `AdapterKit` (the statement is a driver callback: no fiber at all until an interruption).
 */
import * as Clock from "effect/Clock"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Option from "effect/Option"
import * as Schedule from "effect/Schedule"
import type * as Scope from "effect/Scope"
import * as CancelConnection from "../CancelConnection.ts"
import { type CancelCreateError, type CancelFailed, type CancelTimeout, isTransient } from "../CancelError.ts"
import * as CancelMetrics from "../CancelMetrics.ts"
import type { Location, Policy, UnsafeReason } from "../CancelOnInterrupt.ts"
import { Transport } from "../Transport.ts"

export type { Location, Policy, UnsafeReason }

/** The interrupted statement, however it runs (a child fiber, or a driver callback). */
export interface Statement<A, E> {
  /** its outcome, if it has ended */
  readonly poll: () => Exit.Exit<A, E> | undefined
  /** waits until it ends */
  readonly await: Effect.Effect<Exit.Exit<A, E>>
  /** stop waiting for it: it was withdrawn, or it did not end in time and the session is being retired */
  readonly abandon: Effect.Effect<void>
}

/** Everything the interruption needs, read only once an interruption happened. */
export interface Settings extends Policy {
  readonly session: CancelConnection.SessionInfo | (() => CancelConnection.SessionInfo)
  /** where the statement is; may hold the driver's turn in the scope (released when the interruption is over) */
  readonly locate: Effect.Effect<Location, never, Scope.Scope>
  /** completes when a statement that was `"behind"` may have become the running one (default: a 2 ms poll) */
  readonly awaitTurn?: Effect.Effect<void> | undefined
  readonly isCanceled?: ((exit: Exit.Exit<unknown, unknown>) => boolean) | undefined
  readonly onUnsafe?: ((reason: UnsafeReason) => Effect.Effect<void>) | undefined
  /**
   * the transport the cancel uses, when the adapter holds one: provided to the interruption only (providing it
   * around every statement would merge a context per statement)
   */
  readonly transport?: Transport["Service"] | undefined
}

const defaultRetry: Schedule.Schedule<unknown, CancelFailed | CancelTimeout> = Schedule.exponential("20 millis")
const defaultTurnPoll = Effect.sleep(Duration.millis(2))

/** A statement's end raced against a cancel in flight */
type Raced = { readonly _tag: "Sent"; readonly exit: Exit.Exit<void, unknown> } | {
  readonly _tag: "Confirmed"
}

/**
 * Runs after the fiber was interrupted while `statement` had not ended; completes when the interruption may complete
 * (the statement ended, was withdrawn, or the session was retired).
 */
export const afterInterrupt = <A, E>(
  statement: Statement<A, E>,
  settings: Settings
): Effect.Effect<void, never, Transport> =>
  Effect.suspend(() => {
    if (statement.poll() !== undefined) return Effect.void
    const run = Effect.scoped(interrupted(statement, settings))
    return settings.transport === undefined ? run : Effect.provideService(run, Transport, settings.transport)
  })

/**
 * Runs `query` in a child fiber (so it keeps reading the server's answer while the cancel is sent); on interruption,
 * {@link afterInterrupt} with the settings for that fiber.
 */
export const forked = <A, E, R>(
  query: Effect.Effect<A, E, R>,
  settings: (fiber: Fiber.Fiber<A, E>) => Settings
): Effect.Effect<A, E, R | Transport> =>
  Effect.uninterruptibleMask((restore) =>
    // started at once (not one scheduler turn later): the statement is written as the driver would write it
    Effect.flatMap(Effect.forkChild(query, { startImmediately: true }), (fiber) =>
      restore(Fiber.join(fiber)).pipe(
        Effect.onInterrupt(() =>
          afterInterrupt(
            { poll: () => fiber.pollUnsafe(), await: Fiber.await(fiber), abandon: Fiber.interrupt(fiber) },
            settings(fiber)
          )
        )
      ))
  )

const interrupted = Effect.fnUntraced(function*<A, E>(statement: Statement<A, E>, settings: Settings) {
  const onUnsafe = CancelMetrics.countRetired(settings.session, settings.onUnsafe) // pqcancel.sessions.retired
  const drainTimeout = Duration.fromInputUnsafe(settings.drainTimeout ?? Duration.seconds(5))
  const deadline = (yield* Clock.currentTimeMillis) + Duration.toMillis(drainTimeout)
  const remaining = Effect.map(Clock.currentTimeMillis, (now) => deadline - now)
  // bounded wait for the statement's end; undefined when the bound passed first
  const awaitEnd = (millis: number) =>
    Effect.map(Effect.timeoutOption(statement.await, Duration.millis(Math.max(0, millis))), Option.getOrUndefined)
  const giveUp = Effect.suspend(() => Effect.andThen(onUnsafe({ _tag: "QueryDidNotEnd" }), statement.abandon))

  let where = yield* settings.locate
  // written behind another statement of the session: a cancel now would hit that one. Wait for its turn.
  while (where === "behind") {
    const left = yield* remaining
    if (left <= 0) return yield* giveUp
    const turn = yield* Effect.timeoutOption(
      Effect.raceFirst(settings.awaitTurn ?? defaultTurnPoll, Effect.asVoid(statement.await)),
      Duration.millis(left)
    )
    if (Option.isNone(turn)) return yield* giveUp
    if (statement.poll() !== undefined) return
    where = yield* settings.locate
  }
  if (where === "withdrawn") return yield* statement.abandon
  if (where === "elsewhere") {
    // another statement runs, or runs right behind it: a cancel could hit it. Wait for ours to end, bounded.
    if ((yield* awaitEnd(yield* remaining)) === undefined) yield* giveUp
    return
  }
  const session = typeof settings.session === "function" ? settings.session() : settings.session
  const cancelTimeout = Duration.fromInputUnsafe(
    settings.cancelTimeout ?? Duration.seconds(session.options.connectTimeout ?? 5)
  )
  const retry = (settings.retry ?? defaultRetry).pipe(Schedule.upTo({ duration: cancelTimeout }))
  const isCanceled = settings.isCanceled
  // the session's own 57014 confirms the cancel: once the statement ended cancelled, the cancel connection is
  // finished (not waited for) and no other cancel of ours is in flight. Not behind a pooler (retireUnlessCanceled):
  // PgBouncer 1.18 drops the client's session when the cancel connection is closed before it answered
  let confirmedByStatement = false
  const confirmed: Effect.Effect<Raced> | undefined = isCanceled === undefined || settings.retireUnlessCanceled === true
    ? undefined
    : Effect.flatMap(
      statement.await,
      (exit) =>
        isCanceled(exit)
          ? Effect.sync((): Raced => {
            confirmedByStatement = true
            return { _tag: "Confirmed" }
          })
          : Effect.never
    )
  // a cancel run stopped because the statement's 57014 came first (it usually does, ~0.4 ms before the server closes
  // the cancel connection) was dispatched all the same: count it as such (pqcancel.cancels), as its run would have
  const send = Effect.withFiber((fiber) => {
    const clock = fiber.getRef(Clock.Clock)
    const start = clock.currentTimeNanosUnsafe()
    return Effect.map(
      Effect.exit(CancelConnection.cancel(session, { timeout: cancelTimeout, retry })),
      (exit): Raced => ({ _tag: "Sent", exit })
    ).pipe(Effect.onInterrupt(() =>
      Effect.sync(() => {
        if (!confirmedByStatement) return
        const seconds = Number(clock.currentTimeNanosUnsafe() - start) / 1e9
        CancelMetrics.recordOutcome(session, "dispatched", seconds, fiber.context)
      })
    ))
  })
  const sendCancel = confirmed === undefined ? send : Effect.raceFirst(send, confirmed)
  const recancelInterval = Duration.toMillis(
    Duration.fromInputUnsafe(settings.recancelInterval ?? Duration.millis(500))
  )
  let unconfirmed: CancelCreateError | CancelFailed | CancelTimeout | undefined
  let retired = false
  let ended: Exit.Exit<A, E> | undefined
  while (ended === undefined) {
    const sent = yield* sendCancel
    if (sent._tag === "Confirmed") {
      ended = statement.poll()
      break
    }
    if (Exit.isFailure(sent.exit)) {
      const failure = Option.getOrUndefined(Exit.findErrorOption(sent.exit)) as
        | CancelCreateError
        | CancelFailed
        | CancelTimeout
        | undefined
      unconfirmed = failure ?? unconfirmed
      if (failure !== undefined && !isTransient(failure) && !retired) {
        // sending it again would fail the same way: retire the session now (the statement may still run)
        retired = true
        yield* onUnsafe({ _tag: "CancelNotConfirmed", error: failure })
      }
    }
    const left = yield* remaining
    if (left <= 0) break
    ended = yield* awaitEnd(retired ? left : Math.min(left, recancelInterval))
    if (ended !== undefined) break
    // a second cancel only while the statement still runs (and is still the one the session runs)
    if (retired || (yield* settings.locate) !== "running") {
      ended = yield* awaitEnd(yield* remaining)
      break
    }
  }
  if (ended === undefined) {
    if (!retired) {
      yield* onUnsafe(
        unconfirmed === undefined ? { _tag: "QueryDidNotEnd" } : { _tag: "CancelNotConfirmed", error: unconfirmed }
      )
    }
    return yield* statement.abandon
  }
  if (retired) return
  if (unconfirmed !== undefined) {
    // an earlier cancel whose dispatch was not confirmed may still reach the backend
    return yield* onUnsafe({ _tag: "CancelNotConfirmed", error: unconfirmed })
  }
  if (isCanceled === undefined || isCanceled(ended)) return
  if (settings.retireUnlessCanceled === true) return yield* onUnsafe({ _tag: "NotCanceled" })
  yield* (settings.onNotCanceled ?? defaultNotCanceled)(ended)
})

const defaultNotCanceled = (exit: Exit.Exit<unknown, unknown>): Effect.Effect<void> =>
  Effect.logWarning(
    Exit.isSuccess(exit)
      ? "pqcancel: the interrupted query completed before a cancel reached it; its effects took place"
      : "pqcancel: the interrupted query failed by itself before a cancel reached it"
  )
