/**
 * libpq's `PGcancelConn` as a scoped Effect resource: create it from what the session knows (options, the host
 * entry and remote address it connected to, its cancel key), then `blocking`, or `start` + `poll`, and read
 * `status`, `socket` and `errorMessage` along the way. The Scope it was made in closes its socket and TLS session,
 * as `PQcancelFinish` does; `reset` makes it ready to send the same key again.
 *
 * Every path steps the pure {@link CancelMachine}; this module only performs its actions through the
 * {@link Transport} service and feeds back the events.
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
 * @since 0.1.0
 */
import * as Clock from "effect/Clock"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Option from "effect/Option"
import * as Queue from "effect/Queue"
import * as Redacted from "effect/Redacted"
import * as Result from "effect/Result"
import * as Scope from "effect/Scope"
import * as Semaphore from "effect/Semaphore"
import * as Stream from "effect/Stream"
import { CancelCreateError, CancelFailed, CancelTimeout } from "./CancelError.ts"
import type { CancelKey } from "./CancelKey.ts"
import * as CancelMachine from "./CancelMachine.ts"
import type { ConnectionOptions, HostEntry } from "./ConnectionOptions.ts"
import * as ConnectionOptionsNs from "./ConnectionOptions.ts"
import { Transport } from "./Transport.ts"
import type * as TransportNs from "./Transport.ts"

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
   * (libpq's `timeout expired`).
   */
  readonly blocking: (
    options?: { readonly timeout?: Duration.Input | undefined }
  ) => Effect.Effect<void, CancelFailed | CancelTimeout>
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

interface Live {
  state: CancelMachine.State
  connection: TransportNs.Connection | undefined
  scope: Scope.Closeable | undefined
}

const stripNewline = (message: string): string => message.endsWith("\n") ? message.slice(0, -1) : message

/** @internal */
export const validateSession = (session: SessionInfo): string | undefined => {
  if (session.open === false) return "connection not open"
  if (session.key === undefined) return "no cancellation key received"
  // pqConnectOptions2's checks, whatever built the options (the parser already ran them on parsed ones)
  const options = ConnectionOptionsNs.validate(session.options)
  return Result.isFailure(options) ? options.failure.message : undefined
}

const makeWith = Effect.fnUntraced(function*(
  session: SessionInfo,
  options: { readonly legacy: boolean; readonly initialError: string | undefined }
) {
  const transport = yield* Transport
  const parent = yield* Effect.scope
  // only ask for a GSS credential when GSS could be attempted (TCP, gssencmode not disabled)
  const gssAvailable = options.legacy || options.initialError !== undefined ||
      session.options.gssencmode === "disable" || session.address._tag === "Unix"
    ? false
    : yield* transport.gssCredentialsAvailable(session.options)
  const config = session.key === undefined
    ? undefined
    : CancelMachine.makeConfig({
      host: session.host,
      address: session.address,
      sslmode: session.options.sslmode,
      sslnegotiation: session.options.sslnegotiation,
      gssencmode: session.options.gssencmode,
      sslsni: session.options.sslsni,
      gssAvailable,
      key: session.key,
      legacy: options.legacy
    })
  const live: Live = {
    state: options.initialError !== undefined || config === undefined
      ? CancelMachine.failedState(`${options.initialError ?? "no cancellation key received"}\n`)
      : CancelMachine.initial,
    connection: undefined,
    scope: undefined
  }
  const lock = yield* Semaphore.make(1)
  // status watchers; nothing is allocated or timed for transitions nobody watches
  const clock = yield* Clock.Clock
  const watchers = new Set<(transition: Transition) => void>()
  let lastTransition: Transition | undefined
  const transition = (): Transition => ({
    status: live.state.status,
    polling: live.state.polling,
    at: Number(clock.currentTimeNanosUnsafe()) / 1e6
  })
  const changes: Stream.Stream<Transition> = Stream.callback<Transition>((queue) =>
    Effect.acquireRelease(
      Effect.sync(() => {
        const watcher = (t: Transition) => {
          Queue.offerUnsafe(queue, t)
        }
        Queue.offerUnsafe(queue, lastTransition ?? transition())
        watchers.add(watcher)
        return watcher
      }),
      (watcher) => Effect.sync(() => watchers.delete(watcher))
    )
  )

  // tell the watchers, if any, when the status changed
  const publish = (before: CancelMachine.Status): void => {
    if (live.state.status === before || watchers.size === 0) return
    lastTransition = transition()
    for (const watcher of watchers) watcher(lastTransition)
  }

  const closeSocket = Effect.suspend(() => {
    const scope = live.scope
    live.scope = undefined
    live.connection = undefined
    return scope === undefined ? Effect.void : Scope.close(scope, Exit.void)
  })
  yield* Effect.addFinalizer(() => closeSocket)

  const perform = (action: CancelMachine.Action): Effect.Effect<void> => {
    switch (action._tag) {
      case "Connect":
        return closeSocket.pipe(
          Effect.andThen(Scope.fork(parent)),
          Effect.flatMap((scope) => {
            live.scope = scope
            return transport.connect({ address: action.address, options: session.options }).pipe(
              Scope.provide(scope),
              Effect.map((connection) => {
                live.connection = connection
              })
            )
          })
        )
      case "Close":
        return closeSocket
      case "Write":
        return live.connection === undefined ? Effect.void : live.connection.write(Redacted.value(action.bytes))
      case "StartTls":
        return live.connection === undefined ? Effect.void : live.connection.startTls(action.request)
      case "StartGss":
        return live.connection === undefined ? Effect.void : live.connection.startGss
    }
  }

  // apply one event: step the pure machine, then perform its actions; never interrupted half-way
  const apply = (event: CancelMachine.Event): Effect.Effect<CancelMachine.Step> =>
    Effect.suspend(() => {
      const before = live.state.status
      const next = CancelMachine.step(config!, live.state, event)
      live.state = next.state
      publish(before)
      const actions = next.actions
      if (actions.length === 0) return Effect.succeed(next)
      if (actions.length === 1) return Effect.as(perform(actions[0]!), next)
      return Effect.as(Effect.forEach(actions, perform, { discard: true }), next)
    }).pipe(Effect.uninterruptible)

  const startUnlocked: Effect.Effect<void, CancelFailed> = Effect.suspend(() => {
    if (config === undefined) return Effect.fail(new CancelFailed({ message: stripNewline(live.state.error) }))
    return apply(CancelMachine.Events.start).pipe(
      Effect.flatMap((step) =>
        step.accepted ? Effect.void : Effect.fail(new CancelFailed({ message: stripNewline(live.state.error) }))
      )
    )
  })

  const pollUnlocked: Effect.Effect<CancelMachine.PollingStatus> = Effect.suspend(() => {
    if (config === undefined) return Effect.succeed("FAILED" as const)
    const connection = live.connection
    if (!CancelMachine.isInFlight(live.state) || connection === undefined) {
      return apply(CancelMachine.Events.poll).pipe(Effect.map((step) => step.state.polling))
    }
    return Queue.take(connection.events).pipe(
      Effect.flatMap((event) =>
        // an event of a socket we already replaced is stale
        connection === live.connection ? apply(event) : Effect.succeed({ state: live.state })
      ),
      Effect.map((step) => step.state.polling)
    )
  })

  // the poll loop: poll until OK or FAILED (each poll waits on the socket's next event, so this never spins)
  const pollLoop: Effect.Effect<CancelMachine.PollingStatus> = Effect.flatMap(
    pollUnlocked,
    (p) => p === "READING" || p === "WRITING" ? pollLoop : Effect.succeed(p)
  )

  const deadlineOf = (timeout: Duration.Input | undefined): Duration.Duration | undefined => {
    if (timeout !== undefined) return Duration.fromInputUnsafe(timeout)
    const seconds = session.options.connectTimeout
    return seconds === undefined ? undefined : Duration.seconds(seconds)
  }

  const blocking = (
    blockingOptions?: { readonly timeout?: Duration.Input | undefined }
  ): Effect.Effect<void, CancelFailed | CancelTimeout> =>
    Effect.gen(function*() {
      yield* startUnlocked
      const deadline = deadlineOf(blockingOptions?.timeout)
      const outcome = deadline === undefined
        ? Option.some(yield* pollLoop)
        : yield* Effect.timeoutOption(pollLoop, deadline)
      if (Option.isNone(outcome)) {
        yield* apply(CancelMachine.Events.deadline)
        return yield* new CancelTimeout({ message: stripNewline(live.state.error) })
      }
      if (outcome.value !== "OK") {
        return yield* new CancelFailed({ message: stripNewline(live.state.error) })
      }
    }).pipe(lock.withPermits(1))

  const reset = Effect.suspend(() => {
    if (config === undefined) return Effect.void
    return apply(CancelMachine.Events.reset).pipe(Effect.andThen(closeSocket))
  }).pipe(lock.withPermits(1))

  const finish = Effect.suspend(() => {
    const before = live.state.status
    live.state = CancelMachine.failedState("")
    publish(before)
    return closeSocket
  }).pipe(lock.withPermits(1))

  const self: CancelConnection = {
    start: lock.withPermits(1)(startUnlocked),
    poll: lock.withPermits(1)(pollUnlocked),
    blocking,
    status: Effect.sync(() => live.state.status),
    socket: Effect.sync(() => live.connection === undefined ? -1 : live.connection.fd()),
    errorMessage: Effect.sync(() => live.state.error),
    reset,
    finish,
    changes
  }
  return self
})

/**
 * `PQcancelCreate`, failing like it: `connection not open`, `no cancellation key received`. The connection belongs
 * to the current Scope, which closes its socket (`PQcancelFinish`).
 *
 * @category constructors
 * @since 0.1.0
 */
export const make = (
  session: SessionInfo
): Effect.Effect<CancelConnection, CancelCreateError, Transport | Scope.Scope> => {
  const invalid = validateSession(session)
  return invalid === undefined
    ? makeWith(session, { legacy: false, initialError: undefined })
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
 * the cancel connection (the request was dispatched; it may have found nothing to cancel).
 *
 * @category combinators
 * @since 0.1.0
 */
export const cancel = (
  session: SessionInfo,
  options?: { readonly timeout?: Duration.Input | undefined }
): Effect.Effect<void, CancelCreateError | CancelFailed | CancelTimeout, Transport> =>
  Effect.scoped(Effect.flatMap(make(session), (connection) => connection.blocking(options))).pipe(
    // what a trace may show: where the cancel went and how; never the key
    Effect.withSpan("pqcancel.cancel", {
      attributes: {
        "server.address": session.address._tag === "Unix" ? session.address.path : session.address.address,
        "server.port": session.address._tag === "Unix" ? undefined : session.address.port,
        "db.postgresql.backend_pid": session.key?.pid,
        "pqcancel.sslmode": session.options.sslmode,
        "pqcancel.sslnegotiation": session.options.sslnegotiation
      }
    })
  )

/**
 * Cancel what many sessions are running (e.g. at shutdown), at most `concurrency` at a time (default 32) so the
 * event loop and the server's postmaster are not flooded; each outcome is reported, none stops the others.
 *
 * @category combinators
 * @since 0.1.0
 */
export const cancelAll = (
  sessions: Iterable<SessionInfo>,
  options?: { readonly concurrency?: number | undefined; readonly timeout?: Duration.Input | undefined }
): Effect.Effect<Array<Result.Result<void, CancelCreateError | CancelFailed | CancelTimeout>>, never, Transport> =>
  Effect.forEach(sessions, (session) => Effect.result(cancel(session, { timeout: options?.timeout })), {
    concurrency: options?.concurrency ?? 32
  })
