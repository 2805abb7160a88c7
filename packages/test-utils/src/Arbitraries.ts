/**
 * Arbitraries (`effect/Arbitrary`) for test data owned by the test utilities. The core package owns the
 * arbitraries of its own types; this module only offers protocol-valid cancel keys as plain data.
 *
 * @since 0.1.0
 */
import * as Arbitrary from "effect/Arbitrary"
import * as Schema from "effect/Schema"

/**
 * A cancel key as it appears on the wire: the pid and secret of a BackendKeyData message and the protocol version
 * that was negotiated.
 *
 * @category models
 * @since 0.1.0
 */
export interface WireCancelKey {
  readonly pid: number
  readonly secret: Uint8Array
  readonly protocolVersion: "3.0" | "3.2"
}

const byte = Arbitrary.schema(Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: 255 })))

/**
 * Secret key bytes of a given length range.
 *
 * @category constructors
 * @since 0.1.0
 */
export const secret = (minLength: number, maxLength: number): Arbitrary.Arbitrary<Uint8Array> =>
  Arbitrary.array(byte, { minLength, maxLength }).pipe(Arbitrary.map((bytes) => Uint8Array.from(bytes)))

/**
 * Backend pids: positive Int32.
 *
 * @category constructors
 * @since 0.1.0
 */
export const pid: Arbitrary.Arbitrary<number> = Arbitrary.schema(
  Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 2_147_483_647 }))
)

/**
 * Protocol-valid cancel keys: under 3.0 the secret is exactly 4 bytes; under 3.2 it is 4..256 bytes (a PostgreSQL
 * 18 server sends 32, poolers may send more).
 *
 * @category constructors
 * @since 0.1.0
 */
export const cancelKey: Arbitrary.Arbitrary<WireCancelKey> = Arbitrary.schema(Schema.Literals(["3.0", "3.2"])).pipe(
  Arbitrary.flatMap((protocolVersion) =>
    Arbitrary.all({
      pid,
      secret: protocolVersion === "3.0" ? secret(4, 4) : secret(4, 256),
      protocolVersion: Arbitrary.Constant(protocolVersion)
    })
  )
)
