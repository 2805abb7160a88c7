/**
 * Interrupt the fiber ⇒ the query stops on the server, and the session is safe to reuse.
 *
 * `cancelOnInterrupt(query, { session })` runs `query` (an Effect that completes when the server has finished the
 * statement, with its result or its error). If the fiber is interrupted while the query runs, it:
 *
 * 1. asks `locate` where the query is: still queued on the client and taken back (`"withdrawn"`: nothing was sent,
 *    the query never runs, no cancel), being run by the session (`"running"`: cancel it), written behind another
 *    statement of a pipeline (`"behind"`: wait until it is the running one, then locate it again), or where a cancel
 *    could reach another statement (`"elsewhere"`: no cancel — wait for it to end, bounded);
 * 2. sends a CancelRequest over the session's own encryption (sslmode, sslnegotiation) and waits, bounded, until
 *    the server has closed the cancel connection — so the signal was issued before anything else happens — or until
 *    the query itself has ended cancelled (`isCanceled`: the session's SQLSTATE 57014 confirms the cancel, the cancel
 *    connection is then finished without waiting for the server's close — except with `retireUnlessCanceled`, as a
 *    pooler may end the session when its cancel connection is closed early). Transient failures (refused, reset,
 *    timeout) are retried with `retry`;
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
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import type * as Exit from "effect/Exit"
import type * as Schedule from "effect/Schedule"
import type * as CancelConnection from "./CancelConnection.ts"
import type { CancelCreateError, CancelFailed, CancelTimeout } from "./CancelError.ts"
import * as Interruption from "./internal/interruption.ts"
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
export type Location = "withdrawn" | "running" | "behind" | "elsewhere"

/**
 * How an interruption cancels, the same in every adapter (`PgAdapter`, `SqlPgAdapter`, `PostgresJsAdapter`, and
 * {@link Options} here): bounds, retries and what to do when the query could not be shown cancelled.
 *
 * @category models
 * @since 0.2.0
 */
export interface Policy {
  /**
   * bound on sending one cancel, its retries included (default: the session's connect_timeout, else 5 seconds)
   */
  readonly cancelTimeout?: Duration.Input | undefined
  /**
   * bound on waiting for the interrupted query to end, repeated cancels included (default 5 seconds); the session
   * is retired when it does not end in time
   */
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
   * retire the session unless the cancelled query ended cancelled (SQLSTATE 57014). Set it behind poolers and
   * proxies (PgBouncer, pgcat, RDS Proxy…) that close the cancel connection before they forward the request, so a
   * late cancel could hit the next query.
   */
  readonly retireUnlessCanceled?: boolean | undefined
  /**
   * called when a cancel was sent but the query ended without being cancelled (it had finished, or failed by
   * itself, before a cancel reached it): its effects, if any, took place before the interruption completed.
   * Default: a warning in the log.
   */
  readonly onNotCanceled?: ((exit: Exit.Exit<unknown, unknown>) => Effect.Effect<void>) | undefined
}

/**
 * Options of {@link cancelOnInterrupt}: the {@link Policy} and what the adapter knows of the session and the query.
 *
 * @category models
 * @since 0.1.0
 */
export interface Options extends Policy {
  /**
   * the session running the query (its options, address and cancel key); or a function that returns it, called
   * once `locate` said `"running"` — for drivers that choose the connection after the query started (a pool)
   */
  readonly session: CancelConnection.SessionInfo | (() => CancelConnection.SessionInfo)
  /**
   * called synchronously when the fiber is interrupted and before every repeated cancel: where the query is.
   * `"withdrawn"`: it was still queued on the client and has been taken out — it will never run, no cancel is sent
   * (the query effect is then interrupted); `"running"`: the session runs it, or has it and is about to run it —
   * cancel it; `"behind"`: it is written behind another statement of a pipeline — wait (`awaitTurn`, bounded by
   * `drainTimeout`) and locate it again; `"elsewhere"`: a cancel could reach another statement (e.g. one issued
   * outside the adapter runs, or statements are written behind it) — no cancel is sent, the query is waited for
   * (bounded by `drainTimeout`). Default: always `"running"`.
   */
  readonly locate?: (() => Location) | undefined
  /** completes when a query that was `"behind"` may have become the running one (default: `locate` is polled) */
  readonly awaitTurn?: Effect.Effect<void> | undefined
  /** whether the query ended cancelled (the driver's SQLSTATE 57014); the adapters supply it */
  readonly isCanceled?: ((exit: Exit.Exit<unknown, unknown>) => boolean) | undefined
  /** called when the session may still run the query or may receive a late cancel: discard it */
  readonly onUnsafe?: ((reason: UnsafeReason) => Effect.Effect<void>) | undefined
}

/**
 * Runs `query`; on interruption cancels it on the server, waits for it to end, then interrupts. The query runs in a
 * child fiber (so it keeps reading the server's answer while the cancel is sent); an adapter whose driver reports a
 * statement's end through a callback can avoid that fiber with `AdapterKit.statement`.
 *
 * @example
 * ```ts
 * import { CancelConnection, CancelOnInterrupt } from "@pqcancel/core"
 * import * as Effect from "effect/Effect"
 *
 * declare const session: CancelConnection.SessionInfo // the session that will run the query
 * declare const runQuery: Effect.Effect<ReadonlyArray<unknown>> // your driver's query on that session
 *
 * // a timeout interrupts ⇒ the query is cancelled on the server and has ended when the timeout completes
 * const bounded = CancelOnInterrupt.cancelOnInterrupt(runQuery, { session, drainTimeout: "5 seconds" }).pipe(
 *   Effect.timeout("1 second")
 * )
 * ```
 *
 * @category combinators
 * @since 0.1.0
 */
export const cancelOnInterrupt = <A, E, R>(
  query: Effect.Effect<A, E, R>,
  options: Options
): Effect.Effect<A, E, R | Transport> => Interruption.forked(query, () => settingsOf(options))

const alwaysRunning = Effect.succeed<Location>("running")

const settingsOf = (options: Options): Interruption.Settings => ({
  ...options,
  locate: options.locate === undefined ? alwaysRunning : Effect.sync(options.locate)
})
