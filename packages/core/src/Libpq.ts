/**
 * libpq's cancel functions under their own names, with their own return conventions (`1`/`0`, `PGRES_POLLING_*`,
 * `CONNECTION_*`, error texts ending in a newline), for code ported from C or psycopg. Each is a thin alias over
 * {@link CancelConnection} and {@link LegacyCancel}; new code should use those directly and get typed errors.
 *
 * @example
 * ```ts
 * import * as Effect from "effect/Effect"
 * import { Libpq } from "@pqcancel/core"
 * import type { CancelConnection } from "@pqcancel/core"
 *
 * declare const session: CancelConnection.SessionInfo
 * const program = Effect.scoped(Effect.gen(function*() {
 *   const cancelConn = yield* Libpq.PQcancelCreate(session)
 *   if ((yield* Libpq.PQcancelBlocking(cancelConn)) === 0) {
 *     return yield* Libpq.PQcancelErrorMessage(cancelConn)
 *   }
 *   yield* Libpq.PQcancelFinish(cancelConn)
 *   return "dispatched"
 * }))
 * ```
 *
 * @module
 * @since 0.1.0
 */
import * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"
import * as CancelConnection from "./CancelConnection.ts"
import type { PollingStatus, Status } from "./CancelMachine.ts"
import * as LegacyCancel from "./LegacyCancel.ts"
import type { Transport } from "./Transport.ts"

/**
 * `ConnStatusType` names.
 *
 * @category models
 * @since 0.1.0
 */
export type ConnStatusType = `CONNECTION_${Status}`

/**
 * `PostgresPollingStatusType` names.
 *
 * @category models
 * @since 0.1.0
 */
export type PostgresPollingStatusType = `PGRES_POLLING_${PollingStatus}`

/**
 * `PQcancelCreate`: never fails; check `PQcancelStatus` (BAD ⇒ see `PQcancelErrorMessage`).
 *
 * @category constructors
 * @since 0.1.0
 */
export const PQcancelCreate = (
  session: CancelConnection.SessionInfo
): Effect.Effect<CancelConnection.CancelConnection, never, Transport | Scope.Scope> =>
  CancelConnection.makeUnchecked(session)

const oneOrZero = <E>(effect: Effect.Effect<void, E>): Effect.Effect<0 | 1> =>
  Effect.match(effect, { onFailure: () => 0 as const, onSuccess: () => 1 as const })

/**
 * `PQcancelBlocking`: 1 when the request was dispatched, 0 otherwise.
 *
 * @category combinators
 * @since 0.1.0
 */
export const PQcancelBlocking = (cancelConn: CancelConnection.CancelConnection): Effect.Effect<0 | 1> =>
  oneOrZero(cancelConn.blocking())

/**
 * `PQcancelStart`: 1 when sending began, 0 otherwise.
 *
 * @category combinators
 * @since 0.1.0
 */
export const PQcancelStart = (cancelConn: CancelConnection.CancelConnection): Effect.Effect<0 | 1> =>
  oneOrZero(cancelConn.start)

/**
 * `PQcancelPoll`.
 *
 * @category combinators
 * @since 0.1.0
 */
export const PQcancelPoll = (cancelConn: CancelConnection.CancelConnection): Effect.Effect<PostgresPollingStatusType> =>
  Effect.map(cancelConn.poll, (status) => `PGRES_POLLING_${status}` as const)

/**
 * `PQcancelStatus`.
 *
 * @category getters
 * @since 0.1.0
 */
export const PQcancelStatus = (cancelConn: CancelConnection.CancelConnection): Effect.Effect<ConnStatusType> =>
  Effect.map(cancelConn.status, (status) => `CONNECTION_${status}` as const)

/**
 * `PQcancelSocket`: the socket descriptor, -1 when there is none.
 *
 * @category getters
 * @since 0.1.0
 */
export const PQcancelSocket = (cancelConn: CancelConnection.CancelConnection): Effect.Effect<number> =>
  cancelConn.socket

/**
 * `PQcancelErrorMessage`.
 *
 * @category getters
 * @since 0.1.0
 */
export const PQcancelErrorMessage = (cancelConn: CancelConnection.CancelConnection): Effect.Effect<string> =>
  cancelConn.errorMessage

/**
 * `PQcancelReset`.
 *
 * @category combinators
 * @since 0.1.0
 */
export const PQcancelReset = (cancelConn: CancelConnection.CancelConnection): Effect.Effect<void> => cancelConn.reset

/**
 * `PQcancelFinish`.
 *
 * @category destructors
 * @since 0.1.0
 */
export const PQcancelFinish = (cancelConn: CancelConnection.CancelConnection): Effect.Effect<void> => cancelConn.finish

/**
 * `PQgetCancel`.
 *
 * @category constructors
 * @since 0.1.0
 */
export const PQgetCancel: (session: CancelConnection.SessionInfo) => LegacyCancel.CancelHandle | undefined =
  LegacyCancel.getCancel

/**
 * `PQfreeCancel`.
 *
 * @category destructors
 * @since 0.1.0
 */
export const PQfreeCancel: (handle: LegacyCancel.CancelHandle | undefined) => void = LegacyCancel.freeCancel

/**
 * `PQcancel`: `{ result: 1 }` on success, `{ result: 0, errbuf }` on failure.
 *
 * @category combinators
 * @since 0.1.0
 */
export const PQcancel = (
  handle: LegacyCancel.CancelHandle | undefined
): Effect.Effect<{ readonly result: 0 | 1; readonly errbuf: string }, never, Transport> =>
  Effect.map(LegacyCancel.cancel(handle), (r) => r.ok ? { result: 1, errbuf: "" } : { result: 0, errbuf: r.error })

/**
 * `PQrequestCancel`: `{ result: 1 }` on success, `{ result: 0, errorMessage }` on failure.
 *
 * @category combinators
 * @since 0.1.0
 */
export const PQrequestCancel = (
  session: CancelConnection.SessionInfo
): Effect.Effect<{ readonly result: 0 | 1; readonly errorMessage: string }, never, Transport> =>
  Effect.map(
    LegacyCancel.requestCancel(session),
    (r) => r.ok ? { result: 1, errorMessage: "" } : { result: 0, errorMessage: r.error }
  )
