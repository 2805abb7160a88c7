/**
 * Typed errors of pqcancel. Each carries libpq's message text (without libpq's trailing newline) in `message`,
 * so code that matched on libpq's `PQcancelErrorMessage` can match on ours. No error ever carries a cancel key.
 *
 * @example
 * ```ts
 * import * as Effect from "effect/Effect"
 * import { CancelError } from "@pqcancel/core"
 *
 * const recovered = Effect.fail(new CancelError.InvalidOption({ message: "invalid sslmode value: \"x\"" })).pipe(
 *   Effect.catchTag("InvalidOption", (e) => Effect.succeed(e.message))
 * )
 * ```
 *
 * @module
 * @since 0.1.0
 */
import * as Schema from "effect/Schema"

/**
 * A connection option (conninfo keyword, URI parameter or `PG*` variable) is unknown or has an invalid value.
 * `message` is libpq's text, e.g. `invalid sslmode value: "x"`.
 *
 * @category errors
 * @since 0.1.0
 */
export class InvalidOption extends Schema.TaggedError<InvalidOption>("@pqcancel/core/InvalidOption")("InvalidOption", {
  message: Schema.String
}) {}

/**
 * Bytes on the wire (a server reply, a BackendKeyData message, an encoded CancelKey) do not decode.
 *
 * @category errors
 * @since 0.1.0
 */
export class ProtocolError extends Schema.TaggedError<ProtocolError>("@pqcancel/core/ProtocolError")("ProtocolError", {
  message: Schema.String
}) {}

/**
 * A cancel connection could not be created (`PQcancelCreate` returned a BAD object): `connection not open`,
 * `no cancellation key received`, or an option validation message.
 *
 * @category errors
 * @since 0.1.0
 */
export class CancelCreateError
  extends Schema.TaggedError<CancelCreateError>("@pqcancel/core/CancelCreateError")("CancelCreateError", {
    message: Schema.String
  })
{}

/**
 * The cancel request failed: the cancel connection ended in `CONNECTION_BAD`. `message` is what
 * `PQcancelErrorMessage` would return (host prefix included), without the trailing newline.
 *
 * @category errors
 * @since 0.1.0
 */
export class CancelFailed extends Schema.TaggedError<CancelFailed>("@pqcancel/core/CancelFailed")("CancelFailed", {
  message: Schema.String,
  /**
   * true when sending the cancel again may succeed: the connection was refused, reset or closed early (also in the
   * middle of a TLS or GSS handshake), or timed out (the server restarting, a full listen queue, a pooler
   * overloaded, a network fault). Absent or false when it would fail the same way again: TLS or certificate
   * verification, a TLS protocol or GSSAPI failure, encryption the server does not offer, a protocol error, invalid
   * options, no key.
   */
  transient: Schema.optional(Schema.Boolean)
}) {}

/**
 * The blocking cancel did not finish before `connect_timeout` (or the caller's deadline): libpq's `timeout expired`.
 *
 * @category errors
 * @since 0.1.0
 */
export class CancelTimeout extends Schema.TaggedError<CancelTimeout>("@pqcancel/core/CancelTimeout")("CancelTimeout", {
  message: Schema.String
}) {}

/**
 * Whether sending the cancel again may succeed: a timeout, or a {@link CancelFailed} marked `transient`. This is
 * what the `retry` schedules of `CancelConnection.cancel`, `blocking` and `cancelOnInterrupt` are applied to.
 *
 * @example
 * ```ts
 * import { CancelConnection, CancelError } from "@pqcancel/core"
 * import * as Effect from "effect/Effect"
 *
 * declare const session: CancelConnection.SessionInfo
 *
 * const program = CancelConnection.cancel(session).pipe(
 *   Effect.catchIf(CancelError.isTransient, () => CancelConnection.cancel(session)) // once more, only if it may help
 * )
 * ```
 *
 * @category guards
 * @since 0.1.0
 */
export const isTransient = (error: { readonly _tag: string; readonly transient?: boolean | undefined }): boolean =>
  error._tag === "CancelTimeout" || (error._tag === "CancelFailed" && error.transient === true)

/**
 * Any pqcancel error.
 *
 * @category errors
 * @since 0.1.0
 */
export type PqCancelError = InvalidOption | ProtocolError | CancelCreateError | CancelFailed | CancelTimeout

/**
 * Schema of {@link PqCancelError}: encode an error to send it to another process (a worker, a log pipeline, an RPC
 * reply) and decode it there back into the right class. Each member carries a schema identifier
 * (`@pqcancel/core/CancelFailed`, …), so its JSON Schema and decoding are unambiguous even beside other libraries'
 * errors with the same `_tag`.
 *
 * @example
 * ```ts
 * import * as Schema from "effect/Schema"
 * import { CancelError } from "@pqcancel/core"
 *
 * const wire = Schema.encodeSync(CancelError.PqCancelError)(new CancelError.CancelTimeout({ message: "timeout expired" }))
 * const back = Schema.decodeUnknownSync(CancelError.PqCancelError)(wire) // a CancelTimeout again
 * ```
 *
 * @category schemas
 * @since 0.1.0
 */
export const PqCancelError: Schema.Union<
  readonly [
    typeof InvalidOption,
    typeof ProtocolError,
    typeof CancelCreateError,
    typeof CancelFailed,
    typeof CancelTimeout
  ]
> = Schema.Union([InvalidOption, ProtocolError, CancelCreateError, CancelFailed, CancelTimeout])
