/**
 * Interrupt the fiber ⇒ the query stops on the server, and the session is safe to reuse.
 *
 * `cancelOnInterrupt(query, { session })` runs `query` (an Effect that completes when the server has finished the
 * statement, with its result or its error). If the fiber is interrupted while the query runs, it:
 *
 * 1. sends a CancelRequest over the session's own encryption (sslmode, sslnegotiation) and waits, bounded, until
 *    the server has closed the cancel connection — so the signal was issued before anything else happens;
 * 2. waits, bounded, for the query itself to end (normally with SQLSTATE 57014), so the session is idle again;
 * 3. then completes the interruption. The 57014 never reaches the caller as an error.
 *
 * If the cancel could not be confirmed or the query did not end in time, the session might still be running the
 * query or receive a late cancel: `onUnsafe` is called so the caller can discard it (close it, evict it from the
 * pool) instead of running the next query on it. This is the guard against a cancel hitting the next query.
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
 * @since 0.1.0
 */
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Option from "effect/Option"
import * as CancelConnection from "./CancelConnection.ts"
import type { CancelCreateError, CancelFailed, CancelTimeout } from "./CancelError.ts"
import type { Transport } from "./Transport.ts"

/**
 * Why a session must not be reused after an interrupted query.
 *
 * @category models
 * @since 0.1.0
 */
export type UnsafeReason =
  | { readonly _tag: "CancelNotConfirmed"; readonly error: CancelCreateError | CancelFailed | CancelTimeout }
  | { readonly _tag: "QueryDidNotEnd" }

/**
 * Options of {@link cancelOnInterrupt}.
 *
 * @category models
 * @since 0.1.0
 */
export interface Options {
  /** the session running the query (its options, address and cancel key) */
  readonly session: CancelConnection.SessionInfo
  /** bound on sending the cancel (default: the session's connect_timeout, else 5 seconds) */
  readonly cancelTimeout?: Duration.Input | undefined
  /** bound on waiting for the cancelled query to end (default 5 seconds) */
  readonly drainTimeout?: Duration.Input | undefined
  /** called when the session may still run the query or may receive a late cancel: discard it */
  readonly onUnsafe?: ((reason: UnsafeReason) => Effect.Effect<void>) | undefined
}

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
        Effect.onInterrupt(() =>
          Effect.gen(function*() {
            if (fiber.pollUnsafe() !== undefined) return
            const cancelTimeout = options.cancelTimeout ?? Duration.seconds(options.session.options.connectTimeout ?? 5)
            const sent = yield* Effect.exit(CancelConnection.cancel(options.session, { timeout: cancelTimeout }))
            const onUnsafe = options.onUnsafe ?? (() => Effect.void)
            if (Exit.isFailure(sent)) {
              // the cancel was not confirmed: retire the session now (this also ends the query)
              const error = Option.getOrUndefined(Exit.findErrorOption(sent))
              if (error !== undefined) yield* onUnsafe({ _tag: "CancelNotConfirmed", error })
            }
            const ended = yield* Effect.timeoutOption(Fiber.await(fiber), options.drainTimeout ?? Duration.seconds(5))
            if (Exit.isSuccess(sent) && Option.isNone(ended)) yield* onUnsafe({ _tag: "QueryDidNotEnd" })
            if (Option.isNone(ended)) yield* Fiber.interrupt(fiber)
          })
        )
      )
    })
  )
