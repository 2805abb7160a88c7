/**
 * Metrics of cancels, with Effect's `Metric` module: every `CancelConnection.cancel` (and so `cancelAll`,
 * `CancelOnInterrupt` and the driver adapters) counts its outcome and records its latency, and every session that
 * `CancelOnInterrupt` retires as unsafe is counted.
 *
 * | metric                      | type      | attributes                                  | unit    |
 * | --------------------------- | --------- | ------------------------------------------- | ------- |
 * | `pqcancel.cancels`          | counter   | `transport`, `sslmode`, `outcome`           | cancels |
 * | `pqcancel.cancel.duration`  | histogram | `transport`, `sslmode`, `outcome`           | seconds |
 * | `pqcancel.sessions.retired` | counter   | `transport`, `sslmode`, `reason`            | sessions |
 *
 * - `transport`: `tcp` or `unix` (the address the cancel went to);
 * - `sslmode`: the session's sslmode (`disable` … `verify-full`);
 * - `outcome`: `dispatched` (the server read the request and closed the connection), `failed` (`CancelFailed`,
 *   `CancelCreateError`), `timed_out` (`CancelTimeout`). A cancel whose own fiber is interrupted is not counted,
 *   except under `cancelOnInterrupt` when the statement's own 57014 stopped it: it was dispatched, and counts so;
 * - `reason`: `cancel_not_confirmed`, `query_did_not_end` or `not_canceled` (see `CancelOnInterrupt.UnsafeReason`).
 *
 * Never the key, the pid, a host name or an address: the attribute values are the closed sets above, so the number
 * of series is bounded (2 × 6 × 3 each). Each series is a metric object built once when this module loads, so recording
 * allocates no attribute set per cancel. Metrics go to the `Metric.MetricRegistry` of the running fiber; export them
 * with your OpenTelemetry / Prometheus layer, or read them with `Metric.value` / `Metric.snapshot`.
 *
 * @example
 * ```ts
 * import * as Effect from "effect/Effect"
 * import * as Metric from "effect/Metric"
 * import { CancelMetrics } from "@pqcancel/core"
 *
 * // how many cancels over TLS (verify-full, TCP) were dispatched so far
 * const dispatched = Metric.value(CancelMetrics.cancels("tcp", "verify-full", "dispatched")).pipe(
 *   Effect.map((state) => state.count)
 * )
 * ```
 *
 * @module
 * @since 0.1.0
 */
import * as Clock from "effect/Clock"
import type * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Metric from "effect/Metric"
import type { SslMode } from "./ConnectionOptions.ts"

/**
 * The `transport` attribute: how the cancel reached the server.
 *
 * @category models
 * @since 0.1.0
 */
export type TransportLabel = "tcp" | "unix"

/**
 * The `outcome` attribute of a cancel.
 *
 * @category models
 * @since 0.1.0
 */
export type Outcome = "dispatched" | "failed" | "timed_out"

/**
 * The `reason` attribute of a retired session.
 *
 * @category models
 * @since 0.1.0
 */
export type RetiredReason = "cancel_not_confirmed" | "query_did_not_end" | "not_canceled"

/**
 * Metric names.
 *
 * @category constants
 * @since 0.1.0
 */
export const names = {
  cancels: "pqcancel.cancels",
  duration: "pqcancel.cancel.duration",
  retired: "pqcancel.sessions.retired"
} as const

/**
 * Bucket boundaries of `pqcancel.cancel.duration`, in seconds: 0.5 ms to 30 s (a cancel on a LAN takes 1–5 ms; a
 * timeout ends at `connect_timeout`).
 *
 * @category constants
 * @since 0.1.0
 */
export const durationBoundaries: ReadonlyArray<number> = [
  0.0005,
  0.001,
  0.002,
  0.005,
  0.01,
  0.02,
  0.05,
  0.1,
  0.2,
  0.5,
  1,
  2,
  5,
  10,
  30
]

const TRANSPORTS: ReadonlyArray<TransportLabel> = ["tcp", "unix"]
const SSL_MODES: ReadonlyArray<SslMode> = ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]
const OUTCOMES: ReadonlyArray<Outcome> = ["dispatched", "failed", "timed_out"]
const REASONS: ReadonlyArray<RetiredReason> = ["cancel_not_confirmed", "query_did_not_end", "not_canceled"]

const reasonOf: Readonly<Record<"CancelNotConfirmed" | "QueryDidNotEnd" | "NotCanceled", RetiredReason>> = {
  CancelNotConfirmed: "cancel_not_confirmed",
  QueryDidNotEnd: "query_did_not_end",
  NotCanceled: "not_canceled"
}

// one metric object per series, built once: recording looks one up, it never builds an attribute set
const table = <K extends string, A>(keys: ReadonlyArray<K>, f: (key: K) => A): Readonly<Record<K, A>> =>
  Object.fromEntries(keys.map((key) => [key, f(key)])) as Record<K, A>

const cancelSeries = table(TRANSPORTS, (transport) =>
  table(SSL_MODES, (sslmode) =>
    table(OUTCOMES, (outcome) => {
      const attributes = { transport, sslmode, outcome }
      return {
        count: Metric.counter(names.cancels, {
          description: "Cancel requests sent with CancelConnection.cancel, by outcome",
          attributes,
          incremental: true
        }),
        duration: Metric.histogram(names.duration, {
          description: "Time from the cancel call to its outcome, in seconds",
          attributes,
          boundaries: durationBoundaries
        })
      }
    })))

const retiredSeries = table(
  TRANSPORTS,
  (transport) =>
    table(SSL_MODES, (sslmode) =>
      table(REASONS, (reason) =>
        Metric.counter(names.retired, {
          description: "Sessions retired as unsafe after an interrupted query (never reused)",
          attributes: { transport, sslmode, reason },
          incremental: true
        })))
)

/**
 * The `pqcancel.cancels` series with these attributes.
 *
 * @category metrics
 * @since 0.1.0
 */
export const cancels = (transport: TransportLabel, sslmode: SslMode, outcome: Outcome): Metric.Counter<number> =>
  cancelSeries[transport][sslmode][outcome].count

/**
 * The `pqcancel.cancel.duration` series with these attributes (seconds).
 *
 * @category metrics
 * @since 0.1.0
 */
export const cancelDuration = (
  transport: TransportLabel,
  sslmode: SslMode,
  outcome: Outcome
): Metric.Histogram<number> => cancelSeries[transport][sslmode][outcome].duration

/**
 * The `pqcancel.sessions.retired` series with these attributes.
 *
 * @category metrics
 * @since 0.1.0
 */
export const sessionsRetired = (
  transport: TransportLabel,
  sslmode: SslMode,
  reason: RetiredReason
): Metric.Counter<number> => retiredSeries[transport][sslmode][reason]

/** What the metrics need from a session: its address kind and its sslmode (never its key). */
interface Labelled {
  readonly address: { readonly _tag: "Tcp" | "Unix" }
  readonly options: { readonly sslmode: SslMode }
}

const transportOf = (session: Labelled): TransportLabel => session.address._tag === "Unix" ? "unix" : "tcp"

const outcomeOf = (exit: Exit.Exit<unknown, unknown>): Outcome | undefined => {
  if (Exit.isSuccess(exit)) return "dispatched"
  const error = Exit.findErrorOption(exit)
  if (error._tag === "None") return undefined // interrupted or a defect: not an outcome of the cancel
  const tag = typeof error.value === "object" && error.value !== null && "_tag" in error.value
    ? error.value._tag
    : undefined
  return tag === "CancelTimeout" ? "timed_out" : "failed"
}

/**
 * Counts one cancel's outcome and records its latency, from a caller that already knows the outcome (the one-shot
 * cancel records it where its run ends, without an `onExit` wrapper).
 *
 * @internal
 */
export const recordOutcome = (
  session: Labelled,
  outcome: Outcome,
  seconds: number,
  context: Context.Context<never>
): void => {
  const series = cancelSeries[transportOf(session)][session.options.sslmode]?.[outcome]
  if (series === undefined) return
  series.count.updateUnsafe(1, context)
  series.duration.updateUnsafe(seconds, context)
}

const record = (
  session: Labelled,
  exit: Exit.Exit<unknown, unknown>,
  seconds: number,
  context: Context.Context<never>
): void => {
  const outcome = outcomeOf(exit)
  if (outcome !== undefined) recordOutcome(session, outcome, seconds, context)
}

/**
 * Counts the outcome of a cancel and records its latency (what `CancelConnection.cancel` applies to itself).
 *
 * @category combinators
 * @since 0.1.0
 */
export const trackCancel = (session: Labelled) => <A, E, R>(self: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
  Effect.withFiber((fiber) => {
    const clock = fiber.getRef(Clock.Clock)
    const start = clock.currentTimeNanosUnsafe()
    return Effect.onExit(self, (exit) => {
      record(session, exit, Number(clock.currentTimeNanosUnsafe() - start) / 1e9, fiber.context)
      return Effect.void
    })
  })

/**
 * Wraps a `CancelOnInterrupt` `onUnsafe` callback so that every retired session is counted first.
 *
 * @category combinators
 * @since 0.1.0
 */
export const countRetired = <Reason extends { readonly _tag: "CancelNotConfirmed" | "QueryDidNotEnd" | "NotCanceled" }>(
  session: Labelled | (() => Labelled),
  onUnsafe: ((reason: Reason) => Effect.Effect<void>) | undefined
) =>
(reason: Reason): Effect.Effect<void> => {
  const current = typeof session === "function" ? session() : session
  const series = retiredSeries[transportOf(current)][current.options.sslmode]?.[reasonOf[reason._tag]]
  const counted = series === undefined ? Effect.void : Metric.update(series, 1)
  return onUnsafe === undefined ? counted : Effect.andThen(counted, onUnsafe(reason))
}
