import { assert, describe, it } from "@effect/vitest"
import { CancelError, CancelKey, Protocol } from "@pqcancel/core"
import * as Arbitrary from "effect/Arbitrary"
import * as Redacted from "effect/Redacted"
import * as Result from "effect/Result"
import * as Schema from "effect/Schema"
import { byte, garbage, int32, keyInput, keyInput30, keyInput32 } from "./arbitraries.ts"

const hex = (b: Uint8Array): string => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join(" ")

const failureMessage = <A>(r: Result.Result<A, CancelError.ProtocolError>): string => {
  if (Result.isSuccess(r)) return assert.fail("expected a ProtocolError")
  assert.instanceOf(r.failure, CancelError.ProtocolError)
  return r.failure.message
}

const success = <A>(r: Result.Result<A, CancelError.ProtocolError>): A => {
  if (Result.isFailure(r)) return assert.fail(`unexpected ProtocolError: ${r.failure.message}`)
  return r.success
}

const withLength = (n: number): Uint8Array => {
  const b = new Uint8Array(4 + n)
  new DataView(b.buffer).setInt32(0, 1234)
  return b
}

describe("constants", () => {
  it("request codes and protocol versions", () => {
    assert.strictEqual(Protocol.CANCEL_REQUEST_CODE, (1234 << 16) | 5678)
    assert.strictEqual(Protocol.SSL_REQUEST_CODE, (1234 << 16) | 5679)
    assert.strictEqual(Protocol.GSSENC_REQUEST_CODE, (1234 << 16) | 5680)
    assert.strictEqual(Protocol.PROTOCOL_3_0, 3 << 16)
    assert.strictEqual(Protocol.PROTOCOL_3_2, (3 << 16) | 2)
  })

  it("SSLRequest and GSSENCRequest bytes", () => {
    assert.strictEqual(hex(Protocol.sslRequest), "00 00 00 08 04 d2 16 2f")
    assert.strictEqual(hex(Protocol.gssEncRequest), "00 00 00 08 04 d2 16 30")
  })
})

describe("CancelRequest", () => {
  it("known vector: pid 1234, key 0xdeadbeef", () => {
    const key = CancelKey.unsafeMake({
      pid: 1234,
      secret: new Uint8Array([0xde, 0xad, 0xbe, 0xef]),
      protocolVersion: "3.0"
    })
    assert.strictEqual(
      hex(Protocol.encodeCancelRequest(key)),
      "00 00 00 10 04 d2 16 2e 00 00 04 d2 de ad be ef"
    )
  })

  it("negative pid and a 32-byte key", () => {
    const secret = Uint8Array.from({ length: 32 }, (_, i) => i)
    const bytes = Protocol.encodeCancelRequest({ pid: -2, secret: Redacted.make(secret), protocolVersion: "3.2" })
    assert.strictEqual(bytes.length, 44)
    assert.strictEqual(hex(bytes.subarray(0, 12)), "00 00 00 2c 04 d2 16 2e ff ff ff fe")
    assert.deepStrictEqual(bytes.subarray(12), secret)
  })

  it.prop("encode/decode round trip (3.0 and 3.2 keys)", [keyInput], ([input]) => {
    const bytes = Protocol.encodeCancelRequest(CancelKey.unsafeMake(input))
    assert.strictEqual(bytes.length, 12 + input.secret.length)
    assert.strictEqual(new DataView(bytes.buffer).getInt32(0), bytes.length)
    const decoded = success(Protocol.decodeCancelRequest(bytes))
    assert.strictEqual(decoded.pid, input.pid)
    assert.deepStrictEqual(decoded.secret, input.secret)
  }, { arbitrary: { runs: 300 } })

  it("decoding rejects malformed packets", () => {
    const good = Protocol.encodeCancelRequest(
      CancelKey.unsafeMake({ pid: 7, secret: new Uint8Array([1, 2, 3, 4]), protocolVersion: "3.0" })
    )
    assert.strictEqual(failureMessage(Protocol.decodeCancelRequest(new Uint8Array(3))), "incomplete startup packet")
    assert.strictEqual(failureMessage(Protocol.decodeCancelRequest(good.subarray(0, 15))), "incomplete startup packet")
    assert.strictEqual(
      failureMessage(Protocol.decodeCancelRequest(new Uint8Array([0, 0, 0, 4, 0, 0, 0, 0]))),
      "invalid length of startup packet"
    )
    assert.strictEqual(
      failureMessage(Protocol.decodeCancelRequest(new Uint8Array([0, 0, 0x27, 0x11, 0, 0, 0, 0]))),
      "invalid length of startup packet"
    )
    const longer = new Uint8Array(17)
    longer.set(good)
    assert.strictEqual(
      failureMessage(Protocol.decodeCancelRequest(longer)),
      "invalid CancelRequest packet: length word says 16 bytes but 17 bytes were given"
    )
    assert.strictEqual(
      failureMessage(Protocol.decodeCancelRequest(Protocol.sslRequest)),
      "invalid CancelRequest packet: request code 80877103 (expected 80877102)"
    )
    const noKey = good.slice(0, 12)
    noKey[3] = 12
    assert.strictEqual(
      failureMessage(Protocol.decodeCancelRequest(noKey)),
      "invalid length of cancel key in cancel request packet"
    )
    const shortCancel = good.slice(0, 8)
    shortCancel[3] = 8
    assert.strictEqual(
      failureMessage(Protocol.decodeCancelRequest(shortCancel)),
      "invalid length of cancel request packet"
    )
    const tooLong = Protocol.encodeCancelRequest({
      pid: 1,
      secret: Redacted.make(new Uint8Array(257)),
      protocolVersion: "3.2"
    })
    assert.strictEqual(
      failureMessage(Protocol.decodeCancelRequest(tooLong)),
      "invalid length of cancel key in cancel request packet"
    )
    // the server accepts 1..3-byte keys even though libpq never sends them
    const oneByte = Protocol.encodeCancelRequest({
      pid: 1,
      secret: Redacted.make(new Uint8Array([9])),
      protocolVersion: "3.2"
    })
    assert.deepStrictEqual(success(Protocol.decodeCancelRequest(oneByte)).secret, new Uint8Array([9]))
  })

  it("decodeStartupPacketHeader reads the code", () => {
    assert.deepStrictEqual(success(Protocol.decodeStartupPacketHeader(Protocol.gssEncRequest)), {
      length: 8,
      code: Protocol.GSSENC_REQUEST_CODE
    })
  })
})

describe("BackendKeyData", () => {
  it.prop("valid bodies decode (3.0: 4 bytes; 3.2: 4..256 bytes)", [keyInput30, keyInput32], ([k30, k32]) => {
    for (const input of [k30, k32]) {
      const message = Protocol.encodeBackendKeyData(input.pid, input.secret)
      assert.strictEqual(message[0], 0x4b)
      assert.strictEqual(new DataView(message.buffer).getInt32(1), 8 + input.secret.length)
      const decoded = success(Protocol.decodeBackendKeyData(message.subarray(5), input.protocolVersion))
      assert.strictEqual(decoded.pid, input.pid)
      assert.deepStrictEqual(decoded.secret, input.secret)
    }
  })

  it("the decoded secret is a copy", () => {
    const body = new Uint8Array([0, 0, 0, 1, 1, 2, 3, 4])
    const decoded = success(Protocol.decodeBackendKeyData(body, "3.0"))
    body[4] = 99
    assert.deepStrictEqual(decoded.secret, new Uint8Array([1, 2, 3, 4]))
  })

  it("rejects with libpq 18's messages", () => {
    assert.strictEqual(
      failureMessage(Protocol.decodeBackendKeyData(withLength(32), "3.0")),
      "received invalid BackendKeyData message: cancel key with length 32 not allowed in protocol version 3.0 (must be 4 bytes)"
    )
    assert.strictEqual(
      failureMessage(Protocol.decodeBackendKeyData(withLength(3), "3.0")),
      "received invalid BackendKeyData message: cancel key with length 3 not allowed in protocol version 3.0 (must be 4 bytes)"
    )
    assert.strictEqual(
      failureMessage(Protocol.decodeBackendKeyData(withLength(5), Protocol.PROTOCOL_3_0)),
      "received invalid BackendKeyData message: cancel key with length 5 not allowed in protocol version 3.0 (must be 4 bytes)"
    )
    assert.strictEqual(
      failureMessage(Protocol.decodeBackendKeyData(withLength(3), "3.2")),
      "received invalid BackendKeyData message: cancel key with length 3 is too short (minimum 4 bytes)"
    )
    assert.strictEqual(
      failureMessage(Protocol.decodeBackendKeyData(withLength(0), Protocol.PROTOCOL_3_2)),
      "received invalid BackendKeyData message: cancel key with length 0 is too short (minimum 4 bytes)"
    )
    assert.strictEqual(
      failureMessage(Protocol.decodeBackendKeyData(withLength(257), "3.2")),
      "received invalid BackendKeyData message: cancel key with length 257 is too long (maximum 256 bytes)"
    )
    assert.strictEqual(
      failureMessage(Protocol.decodeBackendKeyData(new Uint8Array(3), "3.2")),
      "message contents do not agree with length in message type \"K\""
    )
    assert.strictEqual(success(Protocol.decodeBackendKeyData(withLength(256), "3.2")).secret.length, 256)
    assert.strictEqual(success(Protocol.decodeBackendKeyData(withLength(4), "3.2")).pid, 1234)
  })
})

describe("negotiation responses", () => {
  it("SSL", () => {
    assert.deepStrictEqual(Protocol.classifyNegotiationResponse(0x53, "ssl"), { kind: "accept" })
    assert.deepStrictEqual(Protocol.classifyNegotiationResponse(0x4e, "ssl"), { kind: "reject" })
    const e = Protocol.classifyNegotiationResponse(0x45, "ssl")
    assert.strictEqual(e.kind, "error")
    assert.strictEqual(e.kind === "error" && e.error.message, "server sent an error response during SSL exchange")
    const g = Protocol.classifyNegotiationResponse(0x47, "ssl")
    assert.strictEqual(g.kind, "invalid")
    assert.strictEqual(g.kind === "invalid" && g.error.message, "received invalid response to SSL negotiation: G")
  })

  it("GSS", () => {
    assert.deepStrictEqual(Protocol.classifyNegotiationResponse(0x47, "gss"), { kind: "accept" })
    assert.deepStrictEqual(Protocol.classifyNegotiationResponse(0x4e, "gss"), { kind: "reject" })
    const e = Protocol.classifyNegotiationResponse(0x45, "gss")
    assert.strictEqual(
      e.kind === "error" && e.error.message,
      "server sent an error response during GSS encryption exchange"
    )
    const s = Protocol.classifyNegotiationResponse(0x53, "gss")
    assert.strictEqual(s.kind === "invalid" && s.error.message, "received invalid response to GSSAPI negotiation: S")
  })

  it.prop("every byte classifies without throwing", [byte], ([b]) => {
    for (const kind of ["ssl", "gss"] as const) {
      const r = Protocol.classifyNegotiationResponse(b, kind)
      const accept = kind === "ssl" ? 0x53 : 0x47
      assert.strictEqual(r.kind, b === accept ? "accept" : b === 0x4e ? "reject" : b === 0x45 ? "error" : "invalid")
      if (r.kind === "error" || r.kind === "invalid") assert.instanceOf(r.error, CancelError.ProtocolError)
    }
  })
})

describe("ErrorResponse", () => {
  const field = (code: string, text: string): Array<number> => [
    code.charCodeAt(0),
    ...Array.from(new globalThis.TextEncoder().encode(text)),
    0
  ]

  it("decodes fields", () => {
    const body = Uint8Array.from([
      ...field("S", "FATAL"),
      ...field("C", "53300"),
      ...field("M", "sorry, too many clients already — é"),
      0
    ])
    assert.deepStrictEqual(success(Protocol.decodeErrorResponse(body)), {
      S: "FATAL",
      C: "53300",
      M: "sorry, too many clients already — é"
    })
    assert.deepStrictEqual(success(Protocol.decodeErrorResponse(new Uint8Array([0]))), {})
  })

  it("rejects truncated bodies and trailing bytes", () => {
    const msg = "message contents do not agree with length in message type \"E\""
    assert.strictEqual(failureMessage(Protocol.decodeErrorResponse(new Uint8Array([]))), msg)
    assert.strictEqual(failureMessage(Protocol.decodeErrorResponse(Uint8Array.from(field("M", "x")))), msg)
    assert.strictEqual(failureMessage(Protocol.decodeErrorResponse(Uint8Array.from([0x4d, 0x78]))), msg)
    assert.strictEqual(failureMessage(Protocol.decodeErrorResponse(Uint8Array.from([...field("M", "x"), 0, 1]))), msg)
  })

  it("invalid UTF-8 becomes U+FFFD", () => {
    const decoded = success(Protocol.decodeErrorResponse(Uint8Array.from([0x4d, 0x61, 0xff, 0xc3, 0x62, 0, 0])))
    assert.strictEqual(decoded["M"], "a\uFFFD\uFFFDb")
  })
})

describe("fuzz: decoders return a value or a ProtocolError, never throw", () => {
  const isResult = (r: Result.Result<unknown, CancelError.ProtocolError>): boolean =>
    Result.isSuccess(r) || r.failure._tag === "ProtocolError"

  it.prop("random bytes", [garbage, Arbitrary.schema(Schema.Literals(["3.0", "3.2"]))], ([bytes, version]) => {
    assert.isTrue(isResult(Protocol.decodeCancelRequest(bytes)))
    assert.isTrue(isResult(Protocol.decodeStartupPacketHeader(bytes)))
    assert.isTrue(isResult(Protocol.decodeBackendKeyData(bytes, version)))
    assert.isTrue(isResult(Protocol.decodeErrorResponse(bytes)))
    assert.isTrue(isResult(CancelKey.fromBackendKeyData(bytes, version)))
  }, { arbitrary: { runs: 500 } })

  it.prop("random bytes behind a plausible length word", [garbage, int32], ([tail, code]) => {
    const bytes = new Uint8Array(8 + tail.length)
    const view = new DataView(bytes.buffer)
    view.setInt32(0, bytes.length)
    view.setInt32(4, code % 2 === 0 ? Protocol.CANCEL_REQUEST_CODE : code)
    bytes.set(tail, 8)
    const r = Protocol.decodeCancelRequest(bytes)
    assert.isTrue(isResult(r))
    if (Result.isSuccess(r)) assert.strictEqual(r.success.secret.length, bytes.length - 12)
  }, { arbitrary: { runs: 300 } })
})
