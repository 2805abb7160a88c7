/**
 * Pure codecs for the few PostgreSQL wire-protocol messages a cancel request involves: `CancelRequest`,
 * `SSLRequest`, `GSSENCRequest`, the one-byte negotiation answers, `BackendKeyData` and `ErrorResponse`.
 * Big-endian, no Node APIs; malformed bytes yield a typed `ProtocolError`, never an exception.
 *
 * @example
 * ```ts
 * import { CancelKey, Protocol } from "@pqcancel/core"
 *
 * const key = CancelKey.unsafeMake({ pid: 1234, secret: new Uint8Array([0xde, 0xad, 0xbe, 0xef]), protocolVersion: "3.0" })
 * Protocol.encodeCancelRequest(key)
 * // Uint8Array [0,0,0,16, 4,210,22,46, 0,0,4,210, 222,173,190,239]
 * ```
 *
 * @module
 * @since 0.1.0
 */
import * as Redacted from "effect/Redacted"
import * as Result from "effect/Result"
import { ProtocolError } from "./CancelError.ts"
import type { CancelKey, ProtocolVersion } from "./CancelKey.ts"
import { utf8Decode } from "./internal/conninfoText.ts"

/**
 * `CancelRequest` code (1234 << 16 | 5678).
 *
 * @category constants
 * @since 0.1.0
 */
export const CANCEL_REQUEST_CODE = 80877102
/**
 * `SSLRequest` code (1234 << 16 | 5679).
 *
 * @category constants
 * @since 0.1.0
 */
export const SSL_REQUEST_CODE = 80877103
/**
 * `GSSENCRequest` code (1234 << 16 | 5680).
 *
 * @category constants
 * @since 0.1.0
 */
export const GSSENC_REQUEST_CODE = 80877104
/**
 * Protocol version 3.0 as sent in a StartupMessage (`PG_PROTOCOL(3, 0)` = 3 << 16).
 *
 * @category constants
 * @since 0.1.0
 */
export const PROTOCOL_3_0 = 196608
/**
 * Protocol version 3.2 (`PG_PROTOCOL(3, 2)`), PostgreSQL 18's latest.
 *
 * @category constants
 * @since 0.1.0
 */
export const PROTOCOL_3_2 = 196610
/**
 * Smallest cancel key libpq 18 accepts (bytes).
 *
 * @category constants
 * @since 0.1.0
 */
export const MIN_CANCEL_KEY_LENGTH = 4
/**
 * Largest cancel key the protocol allows (bytes); the PostgreSQL 18 server itself sends 32.
 *
 * @category constants
 * @since 0.1.0
 */
export const MAX_CANCEL_KEY_LENGTH = 256
/**
 * The server's cap on any startup-phase packet (`MAX_STARTUP_PACKET_LENGTH`).
 *
 * @category constants
 * @since 0.1.0
 */
export const MAX_STARTUP_PACKET_LENGTH = 10000

const writeInt32 = (b: Uint8Array, offset: number, n: number): void => {
  b[offset] = (n >>> 24) & 0xff
  b[offset + 1] = (n >>> 16) & 0xff
  b[offset + 2] = (n >>> 8) & 0xff
  b[offset + 3] = n & 0xff
}

const readInt32 = (b: Uint8Array, offset: number): number =>
  ((b[offset]! << 24) | (b[offset + 1]! << 16) | (b[offset + 2]! << 8) | b[offset + 3]!) | 0

const request = (code: number): Uint8Array => {
  const b = new Uint8Array(8)
  writeInt32(b, 0, 8)
  writeInt32(b, 4, code)
  return b
}

/**
 * The 8-byte `SSLRequest` packet. Shared constant: do not mutate.
 *
 * @category constants
 * @since 0.1.0
 */
export const sslRequest: Uint8Array = request(SSL_REQUEST_CODE)
/**
 * The 8-byte `GSSENCRequest` packet. Shared constant: do not mutate.
 *
 * @category constants
 * @since 0.1.0
 */
export const gssEncRequest: Uint8Array = request(GSSENC_REQUEST_CODE)

const is30 = (protocolVersion: ProtocolVersion | number): boolean =>
  protocolVersion === "3.0" || protocolVersion === PROTOCOL_3_0

/**
 * Checks a cancel key length the way libpq 18's `getBackendKeyData` does: exactly 4 bytes under protocol 3.0,
 * 4..256 bytes otherwise. Returns libpq's message, or `undefined` when the length is acceptable.
 * `protocolVersion` is "3.0"/"3.2" or the numeric version (`PROTOCOL_3_0`, `PROTOCOL_3_2`).
 *
 * @category validation
 * @since 0.1.0
 */
export const checkCancelKeyLength = (length: number, protocolVersion: ProtocolVersion | number): string | undefined => {
  if (length !== 4 && is30(protocolVersion)) {
    return `received invalid BackendKeyData message: cancel key with length ${length} not allowed in protocol version 3.0 (must be 4 bytes)`
  }
  if (length < MIN_CANCEL_KEY_LENGTH) {
    return `received invalid BackendKeyData message: cancel key with length ${length} is too short (minimum 4 bytes)`
  }
  if (length > MAX_CANCEL_KEY_LENGTH) {
    return `received invalid BackendKeyData message: cancel key with length ${length} is too long (maximum 256 bytes)`
  }
  return undefined
}

/**
 * Encodes a `CancelRequest`: `Int32 length (12 + keylen) | Int32 80877102 | Int32 pid | key bytes`, big-endian, in
 * a single allocation. The key bytes are sent back exactly as received (never reinterpreted as an integer).
 *
 * @category encoding
 * @since 0.1.0
 */
export const encodeCancelRequest = (key: CancelKey): Uint8Array => {
  const secret = Redacted.value(key.secret)
  const length = 12 + secret.length
  const b = new Uint8Array(length)
  writeInt32(b, 0, length)
  writeInt32(b, 4, CANCEL_REQUEST_CODE)
  writeInt32(b, 8, key.pid)
  b.set(secret, 12)
  return b
}

/**
 * A decoded `CancelRequest` or `BackendKeyData`: the backend PID and a fresh copy of the key bytes.
 *
 * @category models
 * @since 0.1.0
 */
export interface DecodedKey {
  readonly pid: number
  readonly secret: Uint8Array
}

/**
 * The header of a startup-phase packet (no type byte): its length word and its request code / protocol version.
 *
 * @category models
 * @since 0.1.0
 */
export interface StartupPacketHeader {
  readonly length: number
  readonly code: number
}

const fail = (message: string) => Result.fail(new ProtocolError({ message }))

/**
 * Reads the header of a startup-phase packet (`SSLRequest`, `GSSENCRequest`, `CancelRequest`, `StartupMessage`) the
 * way the server does: the length word must be between 8 and 10000 and the whole packet must be present.
 * Meant for fake servers and tests.
 *
 * @category decoding
 * @since 0.1.0
 */
export const decodeStartupPacketHeader = (bytes: Uint8Array): Result.Result<StartupPacketHeader, ProtocolError> => {
  if (bytes.length < 4) return fail("incomplete startup packet")
  const length = readInt32(bytes, 0)
  if (length < 8 || length > MAX_STARTUP_PACKET_LENGTH) return fail("invalid length of startup packet")
  if (bytes.length < length) return fail("incomplete startup packet")
  return Result.succeed({ length, code: readInt32(bytes, 4) })
}

/**
 * Decodes a complete `CancelRequest` packet (for fake servers and tests). Checks, with the server's messages where it
 * has one: the length word (8..10000) against the buffer (which must hold exactly one packet), the request code,
 * and the key length (1..256 bytes, like the PostgreSQL 18 server — it does not enforce libpq's minimum of 4).
 *
 * @category decoding
 * @since 0.1.0
 */
export const decodeCancelRequest = (bytes: Uint8Array): Result.Result<DecodedKey, ProtocolError> => {
  const header = decodeStartupPacketHeader(bytes)
  if (Result.isFailure(header)) return Result.fail(header.failure)
  const { code, length } = header.success
  if (bytes.length !== length) {
    return fail(`invalid CancelRequest packet: length word says ${length} bytes but ${bytes.length} bytes were given`)
  }
  if (code !== CANCEL_REQUEST_CODE) {
    return fail(`invalid CancelRequest packet: request code ${code} (expected ${CANCEL_REQUEST_CODE})`)
  }
  if (length < 12) return fail("invalid length of cancel request packet")
  const keyLength = length - 12
  if (keyLength === 0 || keyLength > MAX_CANCEL_KEY_LENGTH) {
    return fail("invalid length of cancel key in cancel request packet")
  }
  return Result.succeed({ pid: readInt32(bytes, 8), secret: bytes.slice(12, length) })
}

/**
 * Decodes the body of a `BackendKeyData` ('K') message — the PID and the key, i.e. the bytes after the type byte and
 * the length word — with libpq 18's checks and messages (`received invalid BackendKeyData message: cancel key with
 * length %d …`). A body shorter than the PID gives libpq's `message contents do not agree with length in message type
 * "K"`.
 *
 * @category decoding
 * @since 0.1.0
 */
export const decodeBackendKeyData = (
  body: Uint8Array,
  protocolVersion: ProtocolVersion | number
): Result.Result<DecodedKey, ProtocolError> => {
  if (body.length < 4) return fail("message contents do not agree with length in message type \"K\"")
  const lengthError = checkCancelKeyLength(body.length - 4, protocolVersion)
  if (lengthError !== undefined) return fail(lengthError)
  return Result.succeed({ pid: readInt32(body, 0), secret: body.slice(4) })
}

/**
 * Encodes a complete `BackendKeyData` message (`'K' | Int32 8 + keylen | Int32 pid | key`), for fake servers and
 * tests. No validation: any key length can be produced on purpose.
 *
 * @category encoding
 * @since 0.1.0
 */
export const encodeBackendKeyData = (pid: number, secret: Uint8Array): Uint8Array => {
  const b = new Uint8Array(9 + secret.length)
  b[0] = 0x4b
  writeInt32(b, 1, 8 + secret.length)
  writeInt32(b, 5, pid)
  b.set(secret, 9)
  return b
}

/**
 * The server's one-byte answer to an `SSLRequest` / `GSSENCRequest`, classified the way libpq's `PQconnectPoll`
 * does. `error` ('E') and `invalid` (anything else) carry libpq's message; neither falls back to another method.
 *
 * @category models
 * @since 0.1.0
 */
export type NegotiationResponse =
  | { readonly kind: "accept" }
  | { readonly kind: "reject" }
  | { readonly kind: "error"; readonly error: ProtocolError }
  | { readonly kind: "invalid"; readonly error: ProtocolError }

const ACCEPT: NegotiationResponse = { kind: "accept" }
const REJECT: NegotiationResponse = { kind: "reject" }

const formatChar = (byte: number): string =>
  // C's %c: a NUL byte ends the message
  byte === 0 ? "" : String.fromCharCode(byte & 0xff)

/**
 * Classifies the server's answer to an `SSLRequest` (`kind: "ssl"`: 'S' accept, 'N' reject) or a `GSSENCRequest`
 * (`kind: "gss"`: 'G' accept, 'N' reject). 'E' (an old server's ErrorResponse, whose text must not be shown —
 * CVE-2024-10977) gives `server sent an error response during SSL exchange` / `… during GSS encryption exchange`;
 * anything else gives `received invalid response to SSL negotiation: %c` / `… to GSSAPI negotiation: %c`.
 *
 * @category decoding
 * @since 0.1.0
 */
export const classifyNegotiationResponse = (byte: number, kind: "ssl" | "gss"): NegotiationResponse => {
  if (byte === (kind === "ssl" ? 0x53 : 0x47)) return ACCEPT
  if (byte === 0x4e) return REJECT
  if (byte === 0x45) {
    return {
      kind: "error",
      error: new ProtocolError({
        message: kind === "ssl"
          ? "server sent an error response during SSL exchange"
          : "server sent an error response during GSS encryption exchange"
      })
    }
  }
  return {
    kind: "invalid",
    error: new ProtocolError({
      message: kind === "ssl"
        ? `received invalid response to SSL negotiation: ${formatChar(byte)}`
        : `received invalid response to GSSAPI negotiation: ${formatChar(byte)}`
    })
  }
}

/**
 * Decodes the body of an `ErrorResponse` / `NoticeResponse` (after the type byte and length word) into its fields,
 * keyed by the one-letter field code (`S`, `V`, `C`, `M`, `D`, `H`, …; a repeated code keeps the last value).
 * Strings are decoded as UTF-8 (invalid sequences become U+FFFD). A missing terminator or trailing bytes give
 * libpq's `message contents do not agree with length in message type "E"`.
 *
 * @category decoding
 * @since 0.1.0
 */
export const decodeErrorResponse = (
  body: Uint8Array
): Result.Result<Readonly<Record<string, string>>, ProtocolError> => {
  const fields: Record<string, string> = {}
  let i = 0
  for (;;) {
    if (i >= body.length) break
    const code = body[i]!
    if (code === 0) {
      i++
      if (i !== body.length) break
      return Result.succeed(fields)
    }
    const start = i + 1
    const end = body.indexOf(0, start)
    if (end < 0) break
    fields[String.fromCharCode(code)] = utf8Decode(body, start, end)
    i = end + 1
  }
  return fail("message contents do not agree with length in message type \"E\"")
}
