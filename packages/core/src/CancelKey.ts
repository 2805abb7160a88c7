/**
 * A backend's cancellation token — the PID and secret key bytes from the server's `BackendKeyData` message, plus
 * the protocol version they were received under (which fixes the allowed key length).
 *
 * The value is safe to log: `String(key)`, `util.inspect(key)`, `JSON.stringify(key)` and Effect's formatter all
 * print `CancelKey(pid=1234, secret=<redacted>, protocol=3.2)`, and the bytes are kept in a `Redacted`.
 * To move a key to another process on purpose, use {@link schema} (its encoded form contains the secret).
 *
 * @example
 * ```ts
 * import * as Result from "effect/Result"
 * import { CancelKey } from "@pqcancel/core"
 *
 * const key = CancelKey.make({ pid: 1234, secret: new Uint8Array([0xde, 0xad, 0xbe, 0xef]), protocolVersion: "3.0" })
 * if (Result.isSuccess(key)) {
 *   console.log(String(key.success)) // CancelKey(pid=1234, secret=<redacted>, protocol=3.0)
 * }
 * ```
 *
 * @module
 * @since 0.1.0
 */
import * as Effect from "effect/Effect"
import * as Equal from "effect/Equal"
import * as Hash from "effect/Hash"
import * as Redacted from "effect/Redacted"
import * as Result from "effect/Result"
import * as Schema from "effect/Schema"
import * as SchemaIssue from "effect/SchemaIssue"
import * as SchemaTransformation from "effect/SchemaTransformation"
import { ProtocolError } from "./CancelError.ts"
import * as Protocol from "./Protocol.ts"

/**
 * Wire protocol version a session negotiated: "3.0" (4-byte keys) or "3.2" (4..256-byte keys).
 *
 * @category models
 * @since 0.1.0
 */
export type ProtocolVersion = "3.0" | "3.2"

/**
 * A backend's cancellation token: pid + secret key bytes (Redacted) + protocol version.
 *
 * Values built by {@link make}, {@link unsafeMake}, {@link fromBackendKeyData} or {@link schema} are instances of a
 * class whose `toString`, `toJSON` and Node inspection never show the secret, and which implement Effect's
 * `Equal`/`Hash` (by pid, protocol version and key bytes). Plain object literals of this shape are accepted everywhere
 * a `CancelKey` is expected.
 *
 * @category models
 * @since 0.1.0
 */
export interface CancelKey {
  readonly pid: number
  readonly secret: Redacted.Redacted<Uint8Array>
  readonly protocolVersion: ProtocolVersion
}

/**
 * The input of {@link make}: the raw key bytes, not yet wrapped in `Redacted`.
 *
 * @category models
 * @since 0.1.0
 */
export interface CancelKeyInput {
  readonly pid: number
  readonly secret: Uint8Array
  readonly protocolVersion: ProtocolVersion
}

const TypeId = "~@pqcancel/core/CancelKey"

const NodeInspectSymbol = Symbol.for("nodejs.util.inspect.custom")

const INT32_MIN = -2147483648
const INT32_MAX = 2147483647

class CancelKeyImpl implements CancelKey, Equal.Equal {
  readonly [TypeId] = TypeId
  readonly pid: number
  readonly secret: Redacted.Redacted<Uint8Array>
  readonly protocolVersion: ProtocolVersion
  constructor(pid: number, secret: Uint8Array, protocolVersion: ProtocolVersion) {
    this.pid = pid
    this.secret = Redacted.make(secret, { label: "CancelKey.secret" })
    this.protocolVersion = protocolVersion
  }
  toString(): string {
    return `CancelKey(pid=${this.pid}, secret=<redacted>, protocol=${this.protocolVersion})`
  }
  toJSON(): unknown {
    return { _id: "CancelKey", pid: this.pid, secret: "<redacted>", protocolVersion: this.protocolVersion }
  }
  [NodeInspectSymbol](): string {
    return this.toString()
  }
  [Equal.symbol](that: Equal.Equal): boolean {
    return isCancelKey(that) && equals(this, that)
  }
  [Hash.symbol](): number {
    return Hash.combine(Hash.number(this.pid))(Hash.string(this.protocolVersion))
  }
}

const isProtocolVersion = (u: unknown): u is ProtocolVersion => u === "3.0" || u === "3.2"

/**
 * Structural guard: an object with an integer `pid`, a `Redacted` `secret` and a `protocolVersion` of "3.0" or "3.2".
 * Key lengths are not checked (use {@link make} to validate).
 *
 * @category guards
 * @since 0.1.0
 */
export const isCancelKey = (u: unknown): u is CancelKey =>
  typeof u === "object" && u !== null &&
  "pid" in u && Number.isInteger(u.pid) &&
  "secret" in u && Redacted.isRedacted(u.secret) &&
  "protocolVersion" in u && isProtocolVersion(u.protocolVersion)

/**
 * Builds a validated {@link CancelKey}. `pid` must be a 32-bit signed integer (libpq stores an `int`; poolers such as
 * PgBouncer may hand out negative PIDs), the secret 4 bytes under protocol 3.0 and 4..256 bytes under 3.2 (libpq 18's
 * rules and messages). The bytes are copied, so the caller may reuse its buffer.
 *
 * @category constructors
 * @since 0.1.0
 */
export const make = (input: CancelKeyInput): Result.Result<CancelKey, ProtocolError> => {
  const { pid, protocolVersion, secret } = input
  if (!Number.isInteger(pid) || pid < INT32_MIN || pid > INT32_MAX) {
    return Result.fail(
      new ProtocolError({ message: `invalid backend PID in cancel key: ${String(pid)} (must be a 32-bit integer)` })
    )
  }
  if (!isProtocolVersion(protocolVersion)) {
    return Result.fail(
      new ProtocolError({
        message: `invalid protocol version in cancel key: "${String(protocolVersion)}" (must be "3.0" or "3.2")`
      })
    )
  }
  if (!(secret instanceof Uint8Array)) {
    return Result.fail(new ProtocolError({ message: "invalid cancel key: secret must be a Uint8Array" }))
  }
  const lengthError = Protocol.checkCancelKeyLength(secret.length, protocolVersion)
  if (lengthError !== undefined) return Result.fail(new ProtocolError({ message: lengthError }))
  return Result.succeed(new CancelKeyImpl(pid, secret.slice(), protocolVersion))
}

/**
 * {@link make} as an `Effect`.
 *
 * @category constructors
 * @since 0.1.0
 */
export const makeEffect = (input: CancelKeyInput): Effect.Effect<CancelKey, ProtocolError> =>
  Effect.fromResult(make(input))

/**
 * Builds a {@link CancelKey} without validation, for input already known to be valid (the bytes are still copied).
 *
 * @category constructors
 * @since 0.1.0
 */
export const unsafeMake = (input: CancelKeyInput): CancelKey =>
  new CancelKeyImpl(input.pid, input.secret.slice(), input.protocolVersion)

/**
 * Decodes the body of a `BackendKeyData` ('K') message (PID + key, i.e. the bytes after the type byte and the length
 * word) into a {@link CancelKey}, with libpq 18's checks and messages.
 *
 * @example
 * ```ts
 * import { CancelKey } from "@pqcancel/core"
 * import * as Result from "effect/Result"
 *
 * // the body of a BackendKeyData message under protocol 3.0: pid 4242, a 4-byte key
 * const body = new Uint8Array([0, 0, 0x10, 0x92, 1, 2, 3, 4])
 * const key = CancelKey.fromBackendKeyData(body, "3.0") // Result.succeed({ pid: 4242, secret: <redacted>, … })
 * if (Result.isSuccess(key)) console.log(key.success.pid)
 * ```
 *
 * @category constructors
 * @since 0.1.0
 */
export const fromBackendKeyData = (
  body: Uint8Array,
  protocolVersion: ProtocolVersion
): Result.Result<CancelKey, ProtocolError> =>
  Result.flatMap(
    Protocol.decodeBackendKeyData(body, protocolVersion),
    ({ pid, secret }) => Result.succeed<CancelKey>(new CancelKeyImpl(pid, secret, protocolVersion))
  )

/**
 * Compares two keys: same PID, same protocol version and same key bytes. The byte comparison does not stop at the
 * first difference (it always runs over the longer key), so its timing does not reveal where two keys differ.
 *
 * @category equivalence
 * @since 0.1.0
 */
export const equals = (a: CancelKey, b: CancelKey): boolean => {
  const x = Redacted.value(a.secret)
  const y = Redacted.value(b.secret)
  const n = Math.max(x.length, y.length)
  let diff = (x.length ^ y.length) | (a.pid ^ b.pid) | (a.protocolVersion === b.protocolVersion ? 0 : 1)
  for (let i = 0; i < n; i++) {
    diff |= (x[i] ?? 0) ^ (y[i] ?? 0)
  }
  return diff === 0
}

/**
 * The encoded (wire/JSON) form of a {@link CancelKey} produced by {@link schema}.
 *
 * **Security:** `secret` is the base64 of the key bytes — whoever holds this object can cancel the backend's
 * queries. Only send it over a trusted, confidential channel.
 *
 * @category models
 * @since 0.1.0
 */
export interface Encoded {
  readonly pid: number
  readonly secret: string
  readonly protocolVersion: ProtocolVersion
}

const EncodedSchema = Schema.Struct({
  pid: Schema.Int.check(Schema.isInt32()),
  secret: Schema.Uint8ArrayFromBase64,
  protocolVersion: Schema.Literals(["3.0", "3.2"])
})

const CancelKeyType = Schema.declare(isCancelKey, { identifier: "CancelKey", expected: "CancelKey" })

/**
 * Schema between a {@link CancelKey} and its {@link Encoded} form `{ pid, secret: base64, protocolVersion }`, for
 * deliberately handing a key to another process (a worker, a supervisor) that will send the cancel request.
 * Decoding validates the PID and the key length for the protocol version (the failure message is libpq's text and
 * never contains the key).
 *
 * **Security:** the encoded form contains the secret in clear (base64). Send it only over a trusted channel.
 *
 * @example
 * ```ts
 * import * as Schema from "effect/Schema"
 * import { CancelKey } from "@pqcancel/core"
 *
 * const json = Schema.encodeSync(CancelKey.schema)(
 *   CancelKey.unsafeMake({ pid: 42, secret: new Uint8Array(32), protocolVersion: "3.2" })
 * ) // { pid: 42, secret: "AAAA…", protocolVersion: "3.2" }
 * const key = Schema.decodeUnknownSync(CancelKey.schema)(json)
 * ```
 *
 * @category schemas
 * @since 0.1.0
 */
export const schema: Schema.Codec<CancelKey, Encoded> = EncodedSchema.pipe(
  Schema.decodeTo(
    CancelKeyType,
    SchemaTransformation.transformEffect({
      decode: (input) =>
        Result.match(make(input), {
          onFailure: (error) => Effect.fail(new SchemaIssue.InvalidValue({ message: error.message })),
          onSuccess: (key) => Effect.succeed(key)
        }),
      encode: (key) =>
        Effect.succeed({ pid: key.pid, secret: Redacted.value(key.secret), protocolVersion: key.protocolVersion })
    })
  )
)
