/**
 * libpq's `PGcancelConn` as a scoped Effect resource: create it from what the session knows (options, the host
 * entry and remote address it connected to, its cancel key), then `blocking`, or `start` + `poll`, and read
 * `status`, `socket` and `errorMessage` along the way. The Scope it was made in closes its socket and TLS session,
 * as `PQcancelFinish` does; `reset` makes it ready to send the same key again.
 *
 * Every path steps the pure {@link CancelMachine}; this module only performs its actions through the
 * {@link Transport} service and feeds back the events. `blocking`, `cancel` and `cancelAll` step it straight from
 * the socket's callbacks inside one `Effect.callback` (no queue or fiber hop per event; `cancel` makes no Scope or
 * connection object at all); `start` + `poll` buffer the socket's events and apply one per `poll`.
 *
 * @example
 * ```ts
 * import * as Effect from "effect/Effect"
 * import { CancelConnection } from "@pqcancel/core"
 *
 * declare const session: CancelConnection.SessionInfo
 *
 * // cancel whatever the session is running, over the session's encryption, bounded by connect_timeout
 * const program = Effect.scoped(
 *   Effect.gen(function*() {
 *     const cancel = yield* CancelConnection.make(session)
 *     yield* cancel.blocking()
 *   })
 * )
 * ```
 *
 * @module
 * @since 0.1.0
 */
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import type * as Fiber from "effect/Fiber"
import * as Queue from "effect/Queue"
import * as References from "effect/References"
import * as Result from "effect/Result"
import type * as Schedule from "effect/Schedule"
import type * as Scope from "effect/Scope"
import * as Semaphore from "effect/Semaphore"
import * as Stream from "effect/Stream"
import * as Tracer from "effect/Tracer"
import { CancelCreateError, CancelFailed, CancelTimeout, isTransient } from "./CancelError.ts"
import type { CancelKey } from "./CancelKey.ts"
import * as CancelMachine from "./CancelMachine.ts"
import * as CancelMetrics from "./CancelMetrics.ts"
import type { ConnectionOptions, HostEntry } from "./ConnectionOptions.ts"
import * as ConnectionOptionsNs from "./ConnectionOptions.ts"
import { Driver } from "./internal/driver.ts"
import { Transport } from "./Transport.ts"

/**
 * What `PQcancelCreate` reads off the original `PGconn`: its options, the host entry it connected to
 * (`connhost[whichhost]`), the concrete remote address (`raddr`), its cancel key, and whether its socket is open.
 *
 * @category models
 * @since 0.1.0
 */
export interface SessionInfo {
  readonly options: ConnectionOptions
  readonly host: HostEntry
  readonly address: CancelMachine.RemoteAddress
  /** undefined when the server never sent BackendKeyData */
  readonly key: CancelKey | undefined
  /** false when the session's socket is closed (libpq: `connection not open`); default true */
  readonly open?: boolean | undefined
}

/**
 * A status change, for watching a cancel as it happens.
 *
 * @category models
 * @since 0.1.0
 */
export interface Transition {
  readonly status: CancelMachine.Status
  readonly polling: CancelMachine.PollingStatus
  /** milliseconds since the epoch (fractional: nanosecond clock), from Effect's Clock */
  readonly at: number
}

/**
 * Options of `blocking` and {@link cancel}.
 *
 * @category models
 * @since 0.1.0
 */
export interface BlockingOptions {
  /** bound on each attempt (default: the session's connect_timeout, else none) */
  readonly timeout?: Duration.Input | undefined
  /**
   * whether and when to `reset` and send the cancel again after a transient failure (connection refused, reset or
   * closed early — also in the middle of a TLS or GSS handshake —, timeout; never after a certificate, TLS protocol
   * or GSSAPI failure or anything else that would fail again); default: one attempt
   */
  readonly retry?: Schedule.Schedule<unknown, CancelFailed | CancelTimeout> | undefined
}

/**
 * A cancel connection (`PGcancelConn`).
 *
 * @category models
 * @since 0.1.0
 */
export interface CancelConnection {
  /**
   * `PQcancelStart`: begin sending the request without waiting. Fails (and the connection is `BAD`) when it was
   * already started (`cancel request is already being sent on this connection`) or cannot start.
   */
  readonly start: Effect.Effect<void, CancelFailed>
  /**
   * `PQcancelPoll`: wait for the next I/O outcome, advance one step, and report what to wait for next. `OK` and
   * `FAILED` are final; `connect_timeout` is not applied here (as in libpq): bound the loop yourself.
   */
  readonly poll: Effect.Effect<CancelMachine.PollingStatus>
  /**
   * `PQcancelBlocking`: start and poll to the end, bounded by `timeout` or else the session's `connect_timeout`
   * (libpq's `timeout expired`). With `retry`, a transient failure (`CancelError.isTransient`: refused, reset or
   * closed early — also during a TLS or GSS handshake —, timeout; never a certificate or TLS protocol failure) is
   * followed by `reset` and a new attempt when and while the schedule says so; without it, one attempt as libpq.
   */
  readonly blocking: (options?: BlockingOptions) => Effect.Effect<void, CancelFailed | CancelTimeout>
  /** `PQcancelStatus` */
  readonly status: Effect.Effect<CancelMachine.Status>
  /** `PQcancelSocket`: the current socket descriptor, -1 when none; it may change between polls */
  readonly socket: Effect.Effect<number>
  /** `PQcancelErrorMessage`: libpq's text (may be several lines, ends with a newline), empty when none */
  readonly errorMessage: Effect.Effect<string>
  /** `PQcancelReset`: close any socket and get ready to send the same key again */
  readonly reset: Effect.Effect<void>
  /**
   * `PQcancelFinish`: close the socket and TLS session now and retire the connection (status `BAD`). The Scope does
   * the same when it closes; calling it twice is harmless.
   */
  readonly finish: Effect.Effect<void>
  /** every status change from now on (the current one first) */
  readonly changes: Stream.Stream<Transition>
}

const stripNewline = (message: string): string => message.endsWith("\n") ? message.slice(0, -1) : message

/** @internal */
export const validateSession = (session: SessionInfo): string | undefined => {
  if (session.open === false) return "connection not open"
  if (session.key === undefined) return "no cancellation key received"
  // pqConnectOptions2's checks, whatever built the options (the parser already ran them on parsed ones)
  return optionsError(session.options)
}

// options are immutable: check each options object once (an application holds one per pool), not per cancel
const optionsChecked = new WeakMap<ConnectionOptions, string | undefined>()
const optionsError = (options: ConnectionOptions): string | undefined => {
  if (optionsChecked.has(options)) return optionsChecked.get(options)
  const checked = ConnectionOptionsNs.validate(options)
  const error = Result.isFailure(checked) ? checked.failure.message : undefined
  optionsChecked.set(options, error)
  return error
}

// ---------------------------------------------------------------------------------------------------------------
// The steps of a cancel, as libpq takes them: connect to the session's address, negotiate the session's encryption
// (GSS, SSLRequest + TLS, direct TLS or none), send the CancelRequest, await the server's close. The pure
// CancelMachine decides each step; the Driver performs them through the Transport.
// ---------------------------------------------------------------------------------------------------------------

interface Flavour {
  readonly legacy: boolean
  readonly initialError: string | undefined
}

const STRICT: Flavour = { legacy: false, initialError: undefined }

// only ask for a GSS credential when GSS could be attempted (TCP, gssencmode not disabled)
const gssPossible = (session: SessionInfo, flavour: Flavour): boolean =>
  !flavour.legacy && flavour.initialError === undefined && session.options.gssencmode !== "disable" &&
  session.address._tag !== "Unix"

const gssAvailable = (transport: Transport["Service"], session: SessionInfo, flavour: Flavour) =>
  gssPossible(session, flavour) ? transport.gssCredentialsAvailable(session.options) : Effect.succeed(false)

// negotiate: what the machine will offer (sslmode, sslnegotiation, gssencmode, SNI) and the CancelRequest packet
const machineConfig = (session: SessionInfo, key: CancelKey, legacy: boolean, gss: boolean) =>
  CancelMachine.makeConfig({
    host: session.host,
    address: session.address,
    sslmode: session.options.sslmode,
    sslnegotiation: session.options.sslnegotiation,
    gssencmode: session.options.gssencmode,
    sslsni: session.options.sslsni,
    gssAvailable: gss,
    key,
    legacy
  })

// the bound of a blocking cancel: the given timeout, else the session's connect_timeout (milliseconds)
const deadlineMillis = (session: SessionInfo, timeout: Duration.Input | undefined): number | undefined => {
  if (timeout !== undefined) return Duration.toMillis(Duration.fromInputUnsafe(timeout))
  const seconds = session.options.connectTimeout
  return seconds === undefined ? undefined : seconds * 1000
}

const failure = (driver: Driver) =>
  new CancelFailed({ message: stripNewline(driver.state.error), transient: driver.transient })

// attempts of a cancel: one (libpq), or as many as `retry` allows after transient failures; `attempt(n)` is the n-th
const retrying = (
  retry: Schedule.Schedule<unknown, CancelFailed | CancelTimeout> | undefined,
  attempt: (n: number) => Effect.Effect<void, CancelFailed | CancelTimeout>
): Effect.Effect<void, CancelFailed | CancelTimeout> => {
  if (retry === undefined) return attempt(0)
  let n = 0
  return Effect.suspend(() => attempt(n++)).pipe(Effect.retry({ schedule: retry, while: isTransient }))
}

// the outcome of a run: OK, timeout expired, or libpq's message
const outcome = (driver: Driver): Effect.Effect<void, CancelFailed | CancelTimeout> =>
  driver.state.status === "OK"
    ? Effect.void
    : driver.timedOut
    ? Effect.fail(new CancelTimeout({ message: stripNewline(driver.state.error) }))
    : Effect.fail(failure(driver))

// connect → negotiate → send → await the server's close, straight from the socket's callbacks
// (`settled`, if given, is told when the run has its outcome: the one-shot cancel records its metrics there)
const blockingRun = (
  driver: Driver,
  timeoutMillis: number | undefined,
  socket: "run" | "connection",
  settled?: (driver: Driver) => void
): Effect.Effect<void, CancelFailed | CancelTimeout> => {
  if (!driver.apply(CancelMachine.Events.start).accepted) {
    if (socket === "run") driver.close()
    settled?.(driver)
    return Effect.fail(failure(driver))
  }
  return driver.run(
    timeoutMillis,
    socket,
    settled === undefined ? () => outcome(driver) : () => {
      settled(driver)
      return outcome(driver)
    }
  )
}

// ---------------------------------------------------------------------------------------------------------------
// The cancel connection object (PGcancelConn): the same driver, with a lock, a status stream and a Scope
// ---------------------------------------------------------------------------------------------------------------

// status watchers; nothing is allocated or timed for transitions nobody watches
const makeWatchers = (clock: Clock.Clock, current: () => CancelMachine.State) => {
  const watchers = new Set<(transition: Transition) => void>()
  let last: Transition | undefined
  const transition = (): Transition => ({
    status: current().status,
    polling: current().polling,
    at: Number(clock.currentTimeNanosUnsafe()) / 1e6
  })
  const changes: Stream.Stream<Transition> = Stream.callback<Transition>((queue) =>
    Effect.acquireRelease(
      Effect.sync(() => {
        const watcher = (t: Transition) => {
          Queue.offerUnsafe(queue, t)
        }
        Queue.offerUnsafe(queue, last ?? transition())
        watchers.add(watcher)
        return watcher
      }),
      (watcher) => Effect.sync(() => watchers.delete(watcher))
    )
  )
  // tell the watchers, if any, that the status changed
  const publish = (before: CancelMachine.Status): void => {
    if (current().status === before || watchers.size === 0) return
    last = transition()
    for (const watcher of watchers) watcher(last)
  }
  return { changes, publish }
}

const makeWith = Effect.fnUntraced(function*(session: SessionInfo, flavour: Flavour) {
  const transport = yield* Transport
  const clock = yield* Clock.Clock
  const gss = yield* gssAvailable(transport, session, flavour)
  const key = session.key
  const config = key === undefined ? undefined : machineConfig(session, key, flavour.legacy, gss)
  const initialState = flavour.initialError !== undefined || config === undefined
    ? CancelMachine.failedState(`${flavour.initialError ?? "no cancellation key received"}\n`)
    : CancelMachine.initial
  let driver: Driver | undefined
  const watchers = makeWatchers(clock, () => driver?.state ?? initialState)
  // a connection that could not be created has no config: it stays BAD and never touches the network
  driver = config === undefined
    ? undefined
    : new Driver(transport, session.options, config, initialState, watchers.publish)
  const lock = yield* Semaphore.make(1)
  const locked = lock.withPermits(1)
  yield* Effect.addFinalizer(() => Effect.sync(() => driver?.close()))

  const badState = (): Effect.Effect<never, CancelFailed> =>
    Effect.fail(new CancelFailed({ message: stripNewline(initialState.error) }))

  const start: Effect.Effect<void, CancelFailed> = Effect.suspend(() => {
    if (driver === undefined) return badState()
    return driver.apply(CancelMachine.Events.start).accepted ? Effect.void : Effect.fail(failure(driver))
  })

  const poll: Effect.Effect<CancelMachine.PollingStatus> = Effect.suspend(() =>
    driver === undefined ? Effect.succeed("FAILED" as const) : driver.poll()
  )

  const blocking = (options?: BlockingOptions) =>
    locked(retrying(options?.retry, (n) =>
      Effect.suspend(() => {
        if (driver === undefined) return badState()
        // every attempt after the first starts from PQcancelReset: a new socket, the same key
        if (n > 0) {
          driver.apply(CancelMachine.Events.reset)
          driver.close()
        }
        return blockingRun(driver, deadlineMillis(session, options?.timeout), "connection")
      })))

  const reset = Effect.sync(() => {
    if (driver === undefined) return
    driver.apply(CancelMachine.Events.reset)
    driver.close()
  })

  const finish = Effect.sync(() => {
    if (driver === undefined) return
    const before = driver.state.status
    driver.state = CancelMachine.failedState("")
    watchers.publish(before)
    driver.close()
  })

  const self: CancelConnection = {
    start: locked(start),
    poll: locked(poll),
    blocking,
    status: Effect.sync(() => driver?.state.status ?? initialState.status),
    socket: Effect.sync(() => driver?.connection === undefined ? -1 : driver.connection.fd()),
    errorMessage: Effect.sync(() => driver?.state.error ?? initialState.error),
    reset: locked(reset),
    finish: locked(finish),
    changes: watchers.changes
  }
  return self
})

/**
 * `PQcancelCreate`, failing like it: `connection not open`, `no cancellation key received`. The connection belongs
 * to the current Scope, which closes its socket (`PQcancelFinish`).
 *
 * @example
 * ```ts
 * import { CancelConnection } from "@pqcancel/core"
 * import * as Effect from "effect/Effect"
 *
 * declare const session: CancelConnection.SessionInfo
 *
 * // PQcancelCreate, then PQcancelStart + PQcancelPoll until done; the Scope finishes it (PQcancelFinish)
 * const program = Effect.scoped(Effect.gen(function*() {
 *   const connection = yield* CancelConnection.make(session)
 *   yield* connection.start
 *   let status = yield* connection.poll
 *   while (status === "READING" || status === "WRITING") status = yield* connection.poll
 *   return status === "OK" ? "dispatched" : yield* connection.errorMessage
 * }))
 * ```
 *
 * @category constructors
 * @since 0.1.0
 */
export const make = (
  session: SessionInfo
): Effect.Effect<CancelConnection, CancelCreateError, Transport | Scope.Scope> => {
  const invalid = validateSession(session)
  return invalid === undefined
    ? makeWith(session, STRICT)
    : Effect.fail(new CancelCreateError({ message: invalid }))
}

/**
 * `PQcancelCreate` exactly as libpq: never fails; a connection that could not be created is returned in status
 * `BAD` with its message in `errorMessage`.
 *
 * @category constructors
 * @since 0.1.0
 */
export const makeUnchecked = (
  session: SessionInfo
): Effect.Effect<CancelConnection, never, Transport | Scope.Scope> =>
  makeWith(session, { legacy: false, initialError: validateSession(session) })

/** @internal */
export const makeLegacy = (
  session: SessionInfo
): Effect.Effect<CancelConnection, never, Transport | Scope.Scope> =>
  makeWith(session, {
    legacy: true,
    initialError: session.key === undefined ? "no cancellation key received" : undefined
  })

/**
 * Cancel what a session is running, in one call: create, `blocking`, finish. Succeeds once the server has closed
 * the cancel connection (the request was dispatched; it may have found nothing to cancel). `retry` (a `Schedule`)
 * sends it again after transient failures; the default is libpq's single attempt.
 *
 * @example
 * ```ts
 * import { CancelConnection } from "@pqcancel/core"
 * import { NodeTransport } from "@pqcancel/node"
 * import * as Effect from "effect/Effect"
 * import * as Schedule from "effect/Schedule"
 *
 * declare const session: CancelConnection.SessionInfo // e.g. PgAdapter.sessionInfo(client, options)
 *
 * // PQcancelBlocking bounded by connect_timeout, sent again (up to 3 times) after a refused or reset connection
 * const program = CancelConnection.cancel(session, { retry: Schedule.recurs(3) }).pipe(
 *   Effect.provide(NodeTransport.layer)
 * )
 * ```
 *
 * @category combinators
 * @since 0.1.0
 */
export const cancel = (
  session: SessionInfo,
  options?: BlockingOptions
): Effect.Effect<void, CancelCreateError | CancelFailed | CancelTimeout, Transport> => {
  const invalid = validateSession(session)
  if (invalid !== undefined) {
    return traced(session, CancelMetrics.trackCancel(session)(Effect.fail(new CancelCreateError({ message: invalid }))))
  }
  // with a retry schedule the outcome is known only after the schedule: metrics around the whole; without one
  // (libpq's single attempt, the usual case) the run records them itself when it settles, without an onExit frame
  return traced(
    session,
    options?.retry === undefined
      ? oneShot(session, options)
      : CancelMetrics.trackCancel(session)(oneShot(session, options))
  )
}

// pqcancel.cancels + .cancel.duration (CancelMetrics.ts) of a single-attempt cancel, from the run's own outcome; an
// interrupted run never settles, so it is not counted (as with CancelMetrics.trackCancel)
const metricsOf = (session: SessionInfo, fiber: Fiber.Fiber<unknown, unknown>) => {
  const clock = fiber.getRef(Clock.Clock)
  const started = clock.currentTimeNanosUnsafe()
  return (driver: Driver): void =>
    CancelMetrics.recordOutcome(
      session,
      driver.state.status === "OK" ? "dispatched" : driver.timedOut ? "timed_out" : "failed",
      Number(clock.currentTimeNanosUnsafe() - started) / 1e9,
      fiber.context
    )
}

const oneShot = (
  session: SessionInfo,
  options: BlockingOptions | undefined
): Effect.Effect<void, CancelFailed | CancelTimeout, Transport> =>
  Effect.withFiber((fiber) => {
    const transport = Context.getUnsafe(fiber.context as Context.Context<Transport>, Transport)
    const settled = options?.retry === undefined ? metricsOf(session, fiber) : undefined
    const run = (gss: boolean) => {
      // one machine, one socket, no Scope: each run closes its socket when it ends or is interrupted
      const driver = new Driver(
        transport,
        session.options,
        cachedConfig(session, gss),
        CancelMachine.initial,
        undefined
      )
      const timeout = deadlineMillis(session, options?.timeout)
      return retrying(options?.retry, (n) => {
        // every attempt after the first starts from PQcancelReset: a new socket, the same key
        if (n > 0) driver.apply(CancelMachine.Events.reset)
        return blockingRun(driver, timeout, "run", settled)
      })
    }
    return gssPossible(session, STRICT)
      ? Effect.flatMap(transport.gssCredentialsAvailable(session.options), run)
      : run(false) // withFiber is evaluated per execution: each run gets its own driver
  })

// the one-shot cancel's machine configuration (with the encoded CancelRequest), built once per session object and
// GSS availability: a SessionInfo is immutable, and an application that cancels a session again reuses it
const configs = new WeakMap<SessionInfo, { gss?: CancelMachine.MachineConfig; plain?: CancelMachine.MachineConfig }>()
const cachedConfig = (session: SessionInfo, gss: boolean): CancelMachine.MachineConfig => {
  let entry = configs.get(session)
  if (entry === undefined) {
    entry = {}
    configs.set(session, entry)
  }
  return gss
    ? (entry.gss ??= machineConfig(session, session.key!, false, true))
    : (entry.plain ??= machineConfig(session, session.key!, false, false))
}

// what a trace may show: where the cancel went and how; never the key. Without a tracing backend (Effect's
// in-memory native tracer) or with tracing disabled, no span is made at all.
const traced = <A, E, R>(session: SessionInfo, effect: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> => {
  return Effect.withFiber((fiber) =>
    fiber.getRef(Tracer.Tracer) === Tracer.nativeTracer || !fiber.getRef(References.TracerEnabled)
      ? effect
      : Effect.withSpan(effect, "pqcancel.cancel", {
        attributes: {
          "db.system.name": "postgresql",
          "server.address": session.address._tag === "Unix" ? session.address.path : session.address.address,
          "server.port": session.address._tag === "Unix" ? undefined : session.address.port,
          "db.postgresql.backend_pid": session.key?.pid,
          "pqcancel.sslmode": session.options.sslmode,
          "pqcancel.sslnegotiation": session.options.sslnegotiation
        }
      })
  )
}

/**
 * Cancel what many sessions are running (e.g. at shutdown), at most `concurrency` at a time (default 32) so the
 * event loop and the server's postmaster are not flooded; each outcome is reported, none stops the others.
 *
 * @example
 * ```ts
 * import { CancelConnection } from "@pqcancel/core"
 * import * as Effect from "effect/Effect"
 * import * as Result from "effect/Result"
 *
 * declare const sessions: ReadonlyArray<CancelConnection.SessionInfo>
 *
 * const atShutdown = Effect.gen(function*() {
 *   const outcomes = yield* CancelConnection.cancelAll(sessions, { concurrency: 8, timeout: "2 seconds" })
 *   return outcomes.filter(Result.isFailure).length // how many could not be dispatched
 * })
 * ```
 *
 * @category combinators
 * @since 0.1.0
 */
export const cancelAll = (
  sessions: Iterable<SessionInfo>,
  options?: BlockingOptions & { readonly concurrency?: number | undefined }
): Effect.Effect<Array<Result.Result<void, CancelCreateError | CancelFailed | CancelTimeout>>, never, Transport> =>
  Effect.forEach(
    sessions,
    (session) => Effect.result(cancel(session, { timeout: options?.timeout, retry: options?.retry })),
    {
      concurrency: options?.concurrency ?? 32
    }
  )
