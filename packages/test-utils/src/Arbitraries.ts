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

/**
 * One statement of an interleaving: it starts `startAfterMs` after the scenario, runs `sleepMs` on the server, and
 * is interrupted `interruptAfterMs` after it started (`null`: never).
 *
 * @category models
 * @since 0.2.0
 */
export interface InterruptStep {
  readonly startAfterMs: number
  readonly sleepMs: number
  readonly interruptAfterMs: number | null
}

const millis = (maximum: number) => Schema.Int.check(Schema.isBetween({ minimum: 0, maximum }))

/**
 * Random interleavings of statements on one connection (or pool), some interrupted at random moments: the one
 * generator every adapter's property test uses (node-postgres, `@effect/sql-pg` with and without `multiplex`,
 * postgres.js with its pipelining). Statements start within `maxStartMs` of each other (so several are queued or
 * pipelined at once), sleep up to `maxSleepMs` on the server, and about half are interrupted within
 * `maxInterruptMs` — before they are written, while they wait behind another, while they run, or after they ended.
 *
 * @category constructors
 * @since 0.2.0
 */
export const interruptScenario = (options?: {
  readonly minLength?: number | undefined
  readonly maxLength?: number | undefined
  readonly maxStartMs?: number | undefined
  readonly maxSleepMs?: number | undefined
  readonly maxInterruptMs?: number | undefined
}): Arbitrary.Arbitrary<ReadonlyArray<InterruptStep>> =>
  Arbitrary.array(
    Arbitrary.schema(Schema.Struct({
      startAfterMs: millis(options?.maxStartMs ?? 20),
      sleepMs: millis(options?.maxSleepMs ?? 80),
      interruptAfterMs: Schema.NullOr(millis(options?.maxInterruptMs ?? 150))
    })),
    { minLength: options?.minLength ?? 2, maxLength: options?.maxLength ?? 6 }
  )
