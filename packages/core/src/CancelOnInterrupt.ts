/**
 * Interrupt the fiber ⇒ the query stops on the server, and the session is safe to reuse.
 *
 * `cancelOnInterrupt(query, { session })` runs `query` (an Effect that completes when the server has finished the
 * statement, with its result or its error). If the fiber is interrupted while the query runs, it:
 *
 * 1. asks `locate` where the query is: still queued on the client and taken back (`"withdrawn"`: nothing was sent,
 *    the query never runs, no cancel), being run by the session (`"running"`: cancel it), or behind another
 *    statement the session is running (`"elsewhere"`: no cancel — it would hit that statement — wait for it, bounded);
 * 2. sends a CancelRequest over the session's own encryption (sslmode, sslnegotiation) and waits, bounded, until
 *    the server has closed the cancel connection — so the signal was issued before anything else happens. Transient
 *    failures (refused, reset, timeout) are retried with `retry`;
 * 3. waits, bounded by `drainTimeout`, for the query itself to end (normally with SQLSTATE 57014). While it still
 *    runs, the cancel is sent again every `recancelInterval`: a CancelRequest that reaches the backend before it has
 *    read the query (the query was written but not yet started) is ignored by PostgreSQL, and the statement would
 *    otherwise run to completion;
 * 4. then completes the interruption. The 57014 never reaches the caller as an error.
 *
 * Sending the cancel again is safe: as long as the query has not ended, the session cannot be running another of
 * the caller's statements, and a cancel that reaches an idle backend is discarded by PostgreSQL (it resets a pending
 * cancel before it runs the next command it reads).
 *
 * If a cancel could not be confirmed, or the query did not end in time, the session might still be running the
 * query or receive a late cancel: `onUnsafe` is called so the caller can discard it (close it, evict it from the
 * pool) instead of running the next query on it. This is the guard against a cancel hitting the next query. Note
 * that ending the session does **not** end the query: the backend keeps running the statement until it next checks
 * its client socket (PostgreSQL's `client_connection_check_interval`, off by default) or the statement finishes,
 * which is why the cancel is retried, within the bounds, before the session is retired.
 *
 * Behind a pooler or proxy (PgBouncer, pgcat, a cloud proxy) that closes the cancel connection before it forwards
 * the request, "dispatched, and the query ended" does not prove that no late cancel is still travelling: set
 * `retireUnlessCanceled` (with `isCanceled`, which recognises the driver's SQLSTATE 57014) and the session is
 * retired unless the query ended cancelled.
 *
 * @example
 * ```ts
 * import * as Effect from "effect/Effect"
 * import { CancelOnInterrupt } from "@pqcancel/core"
 * import type { CancelConnection } from "@pqcancel/core"
 *
 * declare const session: CancelConnection.SessionInfo
 * declare const runQuery: Effect.Effect<ReadonlyArray<unknown>, Error>
 * declare const closeSession: Effect.Effect<void>
 *
 * const rows = CancelOnInterrupt.cancelOnInterrupt(runQuery, {
 *   session,
 *   onUnsafe: () => closeSession
 * }).pipe(Effect.timeout("2 seconds")) // the timeout interrupts ⇒ the server query is cancelled
 * ```
 *
 * @module
 * @since 0.1.0
 */
import * as Clock from "effect/Clock"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Option from "effect/Option"
import * as Schedule from "effect/Schedule"
import * as CancelConnection from "./CancelConnection.ts"
import { type CancelCreateError, type CancelFailed, type CancelTimeout, isTransient } from "./CancelError.ts"
import * as CancelMetrics from "./CancelMetrics.ts"
import type { Transport } from "./Transport.ts"

/**
 * Why a session must not be reused after an interrupted query.
 *
 * - `CancelNotConfirmed`: a cancel was sent but its dispatch could not be confirmed: it may still arrive.
 * - `QueryDidNotEnd`: the query still ran when `drainTimeout` expired.
 * - `NotCanceled`: `retireUnlessCanceled` is set and the query ended without SQLSTATE 57014 (behind a pooler a
 *   late cancel may still be travelling).
 *
 * @category models
 * @since 0.1.0
 */
export type UnsafeReason =
  | { readonly _tag: "CancelNotConfirmed"; readonly error: CancelCreateError | CancelFailed | CancelTimeout }
  | { readonly _tag: "QueryDidNotEnd" }
  | { readonly _tag: "NotCanceled" }

/**
 * Where the interrupted query is, as the client sees it (see {@link Options.locate}).
 *
 * @category models
 * @since 0.1.0
 */
export type Location = "withdrawn" | "running" | "elsewhere"

/**
 * Options of {@link cancelOnInterrupt}.
 *
 * @category models
 * @since 0.1.0
 */
export interface Options {
  /**
   * the session running the query (its options, address and cancel key); or a function that returns it, called
   * once `locate` said `"running"` — for drivers that choose the connection after the query started (a pool)
   */
  readonly session: CancelConnection.SessionInfo | (() => CancelConnection.SessionInfo)
  /**
   * bound on sending one cancel, its retries included (default: the session's connect_timeout, else 5 seconds)
   */
  readonly cancelTimeout?: Duration.Input | undefined
  /** bound on waiting for the cancelled query to end, repeated cancels included (default 5 seconds) */
  readonly drainTimeout?: Duration.Input | undefined
  /**
   * when a cancel fails transiently (connection refused or reset, timeout — never a TLS verification failure or
   * anything that would fail again), whether and when to send it again; it is bounded by `cancelTimeout` anyway.
   * Default: exponential from 20 ms.
   */
  readonly retry?: Schedule.Schedule<unknown, CancelFailed | CancelTimeout> | undefined
  /**
   * while the query has not ended after a dispatched cancel, send the cancel again after this long (default 500
   * ms): a cancel that reached the backend before it read the query is ignored by PostgreSQL
   */
  readonly recancelInterval?: Duration.Input | undefined
  /**
   * called synchronously when the fiber is interrupted and before every repeated cancel: where the query is.
   * `"withdrawn"`: it was still queued on the client and has been taken out — it will never run, no cancel is sent
   * (the query effect is then interrupted); `"running"`: the session runs it, or has it and is about to run it —
   * cancel it; `"elsewhere"`: the session runs another statement (e.g. one issued outside the adapter) — no cancel
   * is sent, the query is waited for (bounded by `drainTimeout`). Default: always `"running"`.
   */
  readonly locate?: (() => Location) | undefined
  /** whether the query ended cancelled (the driver's SQLSTATE 57014); the adapters supply it */
  readonly isCanceled?: ((exit: Exit.Exit<unknown, unknown>) => boolean) | undefined
  /**
   * retire the session (`onUnsafe` with `NotCanceled`) unless the cancelled query ended cancelled (`isCanceled`).
   * Use it behind poolers and proxies that close the cancel connection before forwarding the request.
   */
  readonly retireUnlessCanceled?: boolean | undefined
  /** called when the session may still run the query or may receive a late cancel: discard it */
  readonly onUnsafe?: ((reason: UnsafeReason) => Effect.Effect<void>) | undefined
  /**
   * called when a cancel was sent but the query ended without being cancelled (it had finished, or failed by
   * itself, before a cancel reached it; `isCanceled` tells): its effects, if any, took place before the interruption
   * completed. Default: a warning in the log.
   */
  readonly onNotCanceled?: ((exit: Exit.Exit<unknown, unknown>) => Effect.Effect<void>) | undefined
}

const defaultRetry: Schedule.Schedule<unknown, CancelFailed | CancelTimeout> = Schedule.exponential("20 millis")

/**
 * Runs `query`; on interruption cancels it on the server, waits for it to end, then interrupts.
 *
 * @category combinators
 * @since 0.1.0
 */
export const cancelOnInterrupt = <A, E, R>(
  query: Effect.Effect<A, E, R>,
  options: Options
): Effect.Effect<A, E, R | Transport> =>
  Effect.uninterruptibleMask((restore) =>
    Effect.gen(function*() {
      // the query runs in its own fiber, so it keeps reading the server's answer while we cancel
      const fiber = yield* Effect.forkChild(query)
      return yield* restore(Fiber.join(fiber)).pipe(
        Effect.onInterrupt(() => afterInterrupt(fiber, options))
      )
    })
  )

const afterInterrupt = Effect.fnUntraced(function*<A, E>(fiber: Fiber.Fiber<A, E>, options: Options) {
  if (fiber.pollUnsafe() !== undefined) return
  const locate = options.locate ?? (() => "running" as const)
  const onUnsafe = CancelMetrics.countRetired(options.session, options.onUnsafe) // pqcancel.sessions.retired
  const drainTimeout = Duration.fromInputUnsafe(options.drainTimeout ?? Duration.seconds(5))
  const where = locate()
  if (where === "withdrawn") return yield* Fiber.interrupt(fiber)
  if (where === "elsewhere") {
    // another statement runs: a cancel would hit it. Wait for ours (queued behind it) to end.
    const ended = yield* Effect.timeoutOption(Fiber.await(fiber), drainTimeout)
    if (Option.isNone(ended)) {
      yield* onUnsafe({ _tag: "QueryDidNotEnd" })
      yield* Fiber.interrupt(fiber)
    }
    return
  }
  const session = typeof options.session === "function" ? options.session() : options.session
  const cancelTimeout = Duration.fromInputUnsafe(
    options.cancelTimeout ?? Duration.seconds(session.options.connectTimeout ?? 5)
  )
  const retry = (options.retry ?? defaultRetry).pipe(Schedule.upTo({ duration: cancelTimeout }))
  const sendCancel = CancelConnection.cancel(session, { timeout: cancelTimeout, retry })
  const recancelInterval = Duration.fromInputUnsafe(options.recancelInterval ?? Duration.millis(500))
  const deadline = (yield* Clock.currentTimeMillis) + Duration.toMillis(drainTimeout)
  let unconfirmed: CancelCreateError | CancelFailed | CancelTimeout | undefined
  let retired = false
  let ended: Exit.Exit<A, E> | undefined
  while (ended === undefined) {
    const sent = yield* Effect.exit(sendCancel)
    if (Exit.isFailure(sent)) {
      const failure = Option.getOrUndefined(Exit.findErrorOption(sent))
      unconfirmed = failure ?? unconfirmed
      if (failure !== undefined && !isTransient(failure) && !retired) {
        // sending it again would fail the same way: retire the session now (the query may still run)
        retired = true
        yield* onUnsafe({ _tag: "CancelNotConfirmed", error: failure })
      }
    }
    const remaining = deadline - (yield* Clock.currentTimeMillis)
    if (remaining <= 0) break
    const wait = retired ? remaining : Math.min(remaining, Duration.toMillis(recancelInterval))
    const outcome = yield* Effect.timeoutOption(Fiber.await(fiber), Duration.millis(wait))
    if (Option.isSome(outcome)) ended = outcome.value
    else if (retired || locate() !== "running") {
      // nothing more to send: wait out the bound
      const rest = deadline - (yield* Clock.currentTimeMillis)
      if (rest <= 0) break
      const last = yield* Effect.timeoutOption(Fiber.await(fiber), Duration.millis(rest))
      if (Option.isSome(last)) ended = last.value
      break
    }
  }
  if (ended === undefined) {
    if (!retired) {
      yield* onUnsafe(
        unconfirmed === undefined ? { _tag: "QueryDidNotEnd" } : { _tag: "CancelNotConfirmed", error: unconfirmed }
      )
    }
    return yield* Fiber.interrupt(fiber)
  }
  if (retired) return
  if (unconfirmed !== undefined) {
    // a cancel whose dispatch was not confirmed may still reach the backend
    return yield* onUnsafe({ _tag: "CancelNotConfirmed", error: unconfirmed })
  }
  if (options.isCanceled === undefined || options.isCanceled(ended)) return
  if (options.retireUnlessCanceled === true) return yield* onUnsafe({ _tag: "NotCanceled" })
  yield* (options.onNotCanceled ?? defaultNotCanceled)(ended)
})

const defaultNotCanceled = (exit: Exit.Exit<unknown, unknown>): Effect.Effect<void> =>
  Effect.logWarning(
    Exit.isSuccess(exit)
      ? "pqcancel: the interrupted query completed before a cancel reached it; its effects took place"
      : "pqcancel: the interrupted query failed by itself before a cancel reached it"
  )
