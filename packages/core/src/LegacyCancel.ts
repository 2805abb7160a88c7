/**
 * libpq's deprecated cancel API: `PQgetCancel`, `PQcancel`, `PQfreeCancel`, `PQrequestCancel`. A `CancelHandle`
 * is a read-only snapshot of the session's address and key that can be used for many cancels, from any fiber.
 *
 * Like libpq's, these never encrypt: the pid and key travel in plaintext whatever the session's sslmode was. Prefer
 * {@link CancelConnection}. As in libpq, failures are values (`{ ok: false, error }`), not failed Effects; unlike
 * libpq (which can block forever), every legacy cancel is bounded by a timeout (default 30 seconds).
 *
 * @example
 * ```ts
 * import * as Effect from "effect/Effect"
 * import { LegacyCancel } from "@pqcancel/core"
 * import type { CancelConnection } from "@pqcancel/core"
 *
 * declare const session: CancelConnection.SessionInfo
 * const program = Effect.gen(function*() {
 *   const handle = LegacyCancel.getCancel(session)
 *   if (handle === undefined) return
 *   const first = yield* LegacyCancel.cancel(handle)
 *   const second = yield* LegacyCancel.cancel(handle) // the same handle again
 *   return [first.ok, second.ok]
 * })
 * ```
 *
 * @module
 * @since 0.1.0
 */
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as CancelConnection from "./CancelConnection.ts"
import type { CancelKey } from "./CancelKey.ts"
import type { RemoteAddress } from "./CancelMachine.ts"
import type { ConnectionOptions, HostEntry } from "./ConnectionOptions.ts"
import type { Transport } from "./Transport.ts"

/**
 * `PGcancel`: the session's remote address, key and TCP keepalive settings. No host name, TLS or timeout.
 *
 * @category models
 * @since 0.1.0
 */
export interface CancelHandle {
  readonly address: RemoteAddress
  readonly host: HostEntry
  /** undefined for libpq 18's dummy handle of a session that never received a key */
  readonly key: CancelKey | undefined
  readonly options: ConnectionOptions
}

/**
 * The outcome of a legacy cancel, as libpq reports it: `ok`, or the text `PQcancel` writes to its `errbuf`.
 *
 * @category models
 * @since 0.1.0
 */
export type LegacyResult = { readonly ok: true } | { readonly ok: false; readonly error: string }

/**
 * `PQgetCancel`: undefined when the session's socket is not open.
 *
 * @example
 * ```ts
 * import { CancelConnection, LegacyCancel } from "@pqcancel/core"
 * import * as Effect from "effect/Effect"
 *
 * declare const session: CancelConnection.SessionInfo
 *
 * // PQgetCancel + PQcancel + PQfreeCancel: plaintext by design (as libpq's), bounded at 30 s
 * const program = Effect.gen(function*() {
 *   const handle = LegacyCancel.getCancel(session)
 *   if (handle === undefined) return "connection not open"
 *   const result = yield* LegacyCancel.cancel(handle)
 *   LegacyCancel.freeCancel(handle)
 *   return result.ok ? "dispatched" : result.error
 * })
 * ```
 *
 * @category constructors
 * @since 0.1.0
 */
export const getCancel = (session: CancelConnection.SessionInfo): CancelHandle | undefined =>
  session.open === false ? undefined : {
    address: session.address,
    host: session.host,
    key: session.key,
    // the legacy path never encrypts
    options: { ...session.options, sslmode: "disable", gssencmode: "disable" }
  }

/**
 * `PQfreeCancel`: nothing to free in a garbage-collected runtime; present for completeness.
 *
 * @category destructors
 * @since 0.1.0
 */
export const freeCancel = (_handle: CancelHandle | undefined): void => {}

const DEFAULT_TIMEOUT = Duration.seconds(30)

/**
 * `PQcancel`: connect to the address, send the plaintext CancelRequest, and wait for the server to close (any reply
 * or read error also counts as sent).
 *
 * @category combinators
 * @since 0.1.0
 */
export const cancel = (
  handle: CancelHandle | undefined,
  options?: { readonly timeout?: Duration.Input | undefined }
): Effect.Effect<LegacyResult, never, Transport> => {
  if (handle === undefined) return Effect.succeed({ ok: false, error: "PQcancel() -- no cancel object supplied" })
  if (handle.key === undefined) {
    return Effect.succeed({ ok: false, error: "PQcancel() -- no cancellation key received" })
  }
  return Effect.scoped(
    Effect.flatMap(
      CancelConnection.makeLegacy(handle),
      (connection) =>
        connection.blocking({ timeout: options?.timeout ?? DEFAULT_TIMEOUT }).pipe(
          Effect.as<LegacyResult>({ ok: true }),
          Effect.catch((error) => Effect.succeed<LegacyResult>({ ok: false, error: `${error.message}\n` }))
        )
    )
  )
}

/**
 * `PQrequestCancel`: `getCancel` + `cancel` in one call, with `PQrequestCancel() -- connection is not open` for a
 * closed session.
 *
 * @category combinators
 * @since 0.1.0
 */
export const requestCancel = (
  session: CancelConnection.SessionInfo,
  options?: { readonly timeout?: Duration.Input | undefined }
): Effect.Effect<LegacyResult, never, Transport> => {
  const handle = getCancel(session)
  if (handle === undefined) {
    return Effect.succeed({ ok: false, error: "PQrequestCancel() -- connection is not open\n" })
  }
  return cancel(handle, options)
}
