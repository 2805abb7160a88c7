/**
 * Arbitraries (effect/Arbitrary, no fast-check) for the codec, cancel-key and connection-option tests.
 */
import type { CancelKey } from "@pqcancel/core"
import * as Arbitrary from "effect/Arbitrary"
import * as Schema from "effect/Schema"

/** Any 32-bit signed integer (PgBouncer may hand out negative PIDs). */
export const int32: Arbitrary.Arbitrary<number> = Arbitrary.schema(Schema.Int.check(Schema.isInt32()))

/** One byte. */
export const byte: Arbitrary.Arbitrary<number> = Arbitrary.schema(
  Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: 255 }))
)

/** Byte arrays with a length in [minLength, maxLength]. */
export const bytes = (minLength: number, maxLength: number): Arbitrary.Arbitrary<Uint8Array> =>
  Arbitrary.map(Arbitrary.array(byte, { minLength, maxLength }), (a) => Uint8Array.from(a))

/** A valid protocol-3.0 key: any int32 PID, exactly 4 key bytes. */
export const keyInput30: Arbitrary.Arbitrary<CancelKey.CancelKeyInput> = Arbitrary.map(
  Arbitrary.all([int32, bytes(4, 4)]),
  ([pid, secret]) => ({ pid, secret, protocolVersion: "3.0" as const })
)

/** A valid protocol-3.2 key: any int32 PID, 4..256 key bytes. */
export const keyInput32: Arbitrary.Arbitrary<CancelKey.CancelKeyInput> = Arbitrary.map(
  Arbitrary.all([int32, bytes(4, 256)]),
  ([pid, secret]) => ({ pid, secret, protocolVersion: "3.2" as const })
)

/** A valid key under either protocol version. */
export const keyInput: Arbitrary.Arbitrary<CancelKey.CancelKeyInput> = Arbitrary.flatMap(
  Arbitrary.schema(Schema.Boolean),
  (v32) => v32 ? keyInput32 : keyInput30
)

/** Random bytes, 0..300 long: fuzz input for the decoders. */
export const garbage: Arbitrary.Arbitrary<Uint8Array> = bytes(0, 300)

/** Any string. */
export const anyString: Arbitrary.Arbitrary<string> = Arbitrary.schema(Schema.String)

const piece = Arbitrary.schema(
  Schema.Literals([
    "host",
    "hostaddr",
    "port",
    "dbname",
    "sslmode",
    "requiressl",
    "connect_timeout",
    "keepalives",
    "require_auth",
    "min_protocol_version",
    "ssl",
    "=",
    "'",
    "\\",
    " ",
    "\t",
    "%",
    "%2F",
    "%00",
    "%zz",
    "%C3%A9",
    "[",
    "]",
    "::1",
    ":",
    "/",
    "?",
    "&",
    ",",
    "@",
    "!",
    "1",
    "5432",
    "-1",
    "true",
    "latest",
    "verify-full",
    "direct",
    "system",
    "é",
    "x"
  ])
)

/** Strings made of conninfo / URI syntax fragments, so the fuzzer reaches deep parser states. */
export const conninfoish: Arbitrary.Arbitrary<string> = Arbitrary.map(
  Arbitrary.array(piece, { maxLength: 24 }),
  (parts) => parts.join("")
)

/** Like {@link conninfoish}, prefixed with a URI scheme. */
export const uriish: Arbitrary.Arbitrary<string> = Arbitrary.map(
  Arbitrary.all([Arbitrary.schema(Schema.Literals(["postgresql://", "postgres://"])), conninfoish]),
  ([scheme, rest]) => scheme + rest
)
