import { assert, describe, it } from "@effect/vitest"
import { CancelError, CancelKey } from "@pqcancel/core"
import * as Effect from "effect/Effect"
import * as Equal from "effect/Equal"
import * as Formatter from "effect/Formatter"
import * as Hash from "effect/Hash"
import * as Inspectable from "effect/Inspectable"
import * as Redacted from "effect/Redacted"
import * as Result from "effect/Result"
import * as Schema from "effect/Schema"
import * as util from "node:util"
import { keyInput, keyInput30, keyInput32 } from "./arbitraries.ts"

// "SECRETKEY" in ASCII, so a leak shows up as text, hex, base64 or a list of numbers
const secretBytes = Uint8Array.from("SECRETKEY0123456", (c) => c.charCodeAt(0))
const leaks = (s: string): Array<string> => {
  const forms = [
    "SECRETKEY",
    Array.from(secretBytes, (b) => b.toString(16).padStart(2, "0")).join(""),
    Buffer.from(secretBytes).toString("base64").slice(0, 12),
    Array.from(secretBytes.subarray(0, 4)).join(","),
    Array.from(secretBytes.subarray(0, 4)).join(", "),
    "83," // first byte as it would appear in a JSON array / inspect output
  ]
  return forms.filter((f) => s.includes(f))
}

const makeOk = (input: CancelKey.CancelKeyInput): CancelKey.CancelKey => {
  const r = CancelKey.make(input)
  if (Result.isFailure(r)) return assert.fail(`unexpected failure: ${r.failure.message}`)
  return r.success
}

const makeError = (input: CancelKey.CancelKeyInput): string => {
  const r = CancelKey.make(input)
  if (Result.isSuccess(r)) return assert.fail("expected a ProtocolError")
  assert.instanceOf(r.failure, CancelError.ProtocolError)
  return r.failure.message
}

describe("make", () => {
  it("builds a key and copies the bytes", () => {
    const secret = Uint8Array.from([1, 2, 3, 4])
    const key = makeOk({ pid: 1234, secret, protocolVersion: "3.0" })
    secret[0] = 9
    assert.strictEqual(key.pid, 1234)
    assert.strictEqual(key.protocolVersion, "3.0")
    assert.deepStrictEqual(Redacted.value(key.secret), Uint8Array.from([1, 2, 3, 4]))
  })

  it.prop("accepts every valid key", [keyInput], ([input]) => {
    const key = makeOk(input)
    assert.strictEqual(key.pid, input.pid)
    assert.deepStrictEqual(Redacted.value(key.secret), input.secret)
    assert.isTrue(CancelKey.equals(key, CancelKey.unsafeMake(input)))
  })

  it("rejects invalid lengths with libpq's texts", () => {
    assert.strictEqual(
      makeError({ pid: 1, secret: new Uint8Array(32), protocolVersion: "3.0" }),
      "received invalid BackendKeyData message: cancel key with length 32 not allowed in protocol version 3.0 (must be 4 bytes)"
    )
    assert.strictEqual(
      makeError({ pid: 1, secret: new Uint8Array(3), protocolVersion: "3.2" }),
      "received invalid BackendKeyData message: cancel key with length 3 is too short (minimum 4 bytes)"
    )
    assert.strictEqual(
      makeError({ pid: 1, secret: new Uint8Array(257), protocolVersion: "3.2" }),
      "received invalid BackendKeyData message: cancel key with length 257 is too long (maximum 256 bytes)"
    )
  })

  it("rejects PIDs outside int32 and bad versions; allows negative PIDs", () => {
    const secret = new Uint8Array(4)
    assert.strictEqual(
      makeError({ pid: 2 ** 31, secret, protocolVersion: "3.0" }),
      "invalid backend PID in cancel key: 2147483648 (must be a 32-bit integer)"
    )
    assert.include(makeError({ pid: 1.5, secret, protocolVersion: "3.0" }), "invalid backend PID")
    assert.include(makeError({ pid: Number.NaN, secret, protocolVersion: "3.0" }), "invalid backend PID")
    assert.strictEqual(
      makeError({ pid: 1, secret, protocolVersion: "3.1" as CancelKey.ProtocolVersion }),
      "invalid protocol version in cancel key: \"3.1\" (must be \"3.0\" or \"3.2\")"
    )
    assert.strictEqual(makeOk({ pid: -(2 ** 31), secret, protocolVersion: "3.0" }).pid, -(2 ** 31))
  })

  it.effect("makeEffect fails with a ProtocolError", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(
        CancelKey.makeEffect({ pid: 1, secret: new Uint8Array(2), protocolVersion: "3.2" })
      )
      assert.strictEqual(error._tag, "ProtocolError")
      assert.include(error.message, "is too short (minimum 4 bytes)")
    }))

  it("fromBackendKeyData", () => {
    const key = Result.getOrThrow(CancelKey.fromBackendKeyData(Uint8Array.from([0, 0, 0x30, 0x39, 9, 8, 7, 6]), "3.0"))
    assert.strictEqual(key.pid, 12345)
    assert.deepStrictEqual(Redacted.value(key.secret), Uint8Array.from([9, 8, 7, 6]))
    const r = CancelKey.fromBackendKeyData(new Uint8Array(40), "3.0")
    assert.isTrue(Result.isFailure(r))
  })
})

describe("the secret never shows", () => {
  const key = CancelKey.unsafeMake({ pid: 1234, secret: secretBytes, protocolVersion: "3.2" })
  const expected = "CancelKey(pid=1234, secret=<redacted>, protocol=3.2)"

  // typed as unknown: the CancelKey interface itself does not promise a toString
  const asUnknown: unknown = key

  it("String / toString", () => {
    assert.strictEqual(String(asUnknown), expected)
    assert.strictEqual(["a", asUnknown].join(" "), `a ${expected}`)
    assert.deepStrictEqual(leaks(String(asUnknown)), [])
  })

  it("util.inspect (alone, nested, deep)", () => {
    assert.strictEqual(util.inspect(key), expected)
    for (const s of [util.inspect({ nested: { key } }, { depth: 10 }), util.inspect([key], { showHidden: true })]) {
      assert.include(s, expected)
      assert.deepStrictEqual(leaks(s), [])
    }
    assert.deepStrictEqual(leaks(util.inspect(key.secret, { showHidden: true, depth: 10 })), [])
    assert.deepStrictEqual(leaks(util.format("%o %O %j", key, key, key)), [])
  })

  it("JSON.stringify", () => {
    const json = JSON.stringify({ key })
    assert.deepStrictEqual(JSON.parse(json), {
      key: { _id: "CancelKey", pid: 1234, secret: "<redacted>", protocolVersion: "3.2" }
    })
    assert.deepStrictEqual(leaks(json), [])
    assert.deepStrictEqual(leaks(JSON.stringify(key.secret)), [])
  })

  it("Effect's Formatter and Inspectable", () => {
    for (
      const s of [
        Formatter.format(key),
        Formatter.format({ key }),
        Formatter.format({ key }, { ignoreToString: true }),
        Formatter.formatJson({ key }),
        Inspectable.toStringUnknown(key),
        Inspectable.toStringUnknown({ key }),
        JSON.stringify(Inspectable.toJson(key))
      ]
    ) {
      assert.deepStrictEqual(leaks(s), [], s)
      assert.include(s, "1234")
    }
    assert.strictEqual(Formatter.format(key), expected)
  })

  it.effect("a failed CancelKey schema decode does not carry the key", () =>
    Effect.gen(function*() {
      const encoded = { pid: 1, secret: Buffer.from(secretBytes).toString("base64"), protocolVersion: "3.0" }
      const error = yield* Effect.flip(Schema.decodeUnknownEffect(CancelKey.schema)(encoded))
      assert.include(error.message, "not allowed in protocol version 3.0")
      assert.deepStrictEqual(leaks(error.message), [])
    }))
})

describe("schema", () => {
  it.prop("encode → JSON → decode round trip", [keyInput30, keyInput32], ([a, b]) => {
    for (const input of [a, b]) {
      const key = CancelKey.unsafeMake(input)
      const encoded = Schema.encodeSync(CancelKey.schema)(key)
      assert.strictEqual(encoded.secret, Buffer.from(input.secret).toString("base64"))
      assert.strictEqual(encoded.pid, input.pid)
      assert.strictEqual(encoded.protocolVersion, input.protocolVersion)
      const decoded = Schema.decodeUnknownSync(CancelKey.schema)(JSON.parse(JSON.stringify(encoded)))
      assert.isTrue(CancelKey.equals(decoded, key))
      assert.isTrue(Equal.equals(decoded, key))
      assert.strictEqual(Formatter.format(decoded), Formatter.format(key))
    }
  })

  it("encodes plain CancelKey-shaped objects too", () => {
    const encoded = Schema.encodeSync(CancelKey.schema)({
      pid: 5,
      secret: Redacted.make(Uint8Array.from([1, 2, 3, 4])),
      protocolVersion: "3.0"
    })
    assert.deepStrictEqual(encoded, { pid: 5, secret: "AQIDBA==", protocolVersion: "3.0" })
  })

  it("decoding validates", () => {
    const decode = Schema.decodeUnknownResult(CancelKey.schema)
    const bad = [
      { pid: 1, secret: "AQIDBAUGBwg=", protocolVersion: "3.0" }, // 8 bytes under 3.0
      { pid: 1, secret: "AQID", protocolVersion: "3.2" }, // 3 bytes
      { pid: 1, secret: Buffer.alloc(257).toString("base64"), protocolVersion: "3.2" },
      { pid: 2 ** 31, secret: "AQIDBA==", protocolVersion: "3.0" },
      { pid: 1.5, secret: "AQIDBA==", protocolVersion: "3.0" },
      { pid: 1, secret: "not base64!", protocolVersion: "3.0" },
      { pid: 1, secret: "AQIDBA==", protocolVersion: "3.1" },
      { pid: 1, secret: "AQIDBA==" },
      null
    ]
    for (const input of bad) assert.isTrue(Result.isFailure(decode(input)), JSON.stringify(input))
    const good = decode({ pid: -1, secret: "AQIDBA==", protocolVersion: "3.0" })
    assert.isTrue(Result.isSuccess(good))
  })
})

describe("equals", () => {
  const a = CancelKey.unsafeMake({ pid: 1, secret: Uint8Array.from([1, 2, 3, 4]), protocolVersion: "3.2" })

  it("compares pid, version, length and bytes", () => {
    assert.isTrue(
      CancelKey.equals(
        a,
        CancelKey.unsafeMake({ pid: 1, secret: Uint8Array.from([1, 2, 3, 4]), protocolVersion: "3.2" })
      )
    )
    assert.isFalse(
      CancelKey.equals(
        a,
        CancelKey.unsafeMake({ pid: 2, secret: Uint8Array.from([1, 2, 3, 4]), protocolVersion: "3.2" })
      )
    )
    assert.isFalse(
      CancelKey.equals(
        a,
        CancelKey.unsafeMake({ pid: 1, secret: Uint8Array.from([1, 2, 3, 5]), protocolVersion: "3.2" })
      )
    )
    assert.isFalse(
      CancelKey.equals(
        a,
        CancelKey.unsafeMake({ pid: 1, secret: Uint8Array.from([1, 2, 3, 4]), protocolVersion: "3.0" })
      )
    )
    assert.isFalse(
      CancelKey.equals(
        a,
        CancelKey.unsafeMake({ pid: 1, secret: Uint8Array.from([1, 2, 3, 4, 0]), protocolVersion: "3.2" })
      )
    )
  })

  it("Effect Equal / Hash", () => {
    const b = CancelKey.unsafeMake({ pid: 1, secret: Uint8Array.from([1, 2, 3, 4]), protocolVersion: "3.2" })
    assert.isTrue(Equal.equals(a, b))
    assert.strictEqual(Hash.hash(a), Hash.hash(b))
    assert.isFalse(
      Equal.equals(a, CancelKey.unsafeMake({ pid: 1, secret: Uint8Array.from([4, 3, 2, 1]), protocolVersion: "3.2" }))
    )
  })

  it("isCancelKey", () => {
    assert.isTrue(CancelKey.isCancelKey(a))
    assert.isTrue(CancelKey.isCancelKey({ pid: 1, secret: Redacted.make(new Uint8Array(4)), protocolVersion: "3.0" }))
    assert.isFalse(CancelKey.isCancelKey({ pid: 1, secret: new Uint8Array(4), protocolVersion: "3.0" }))
    assert.isFalse(CancelKey.isCancelKey(null))
  })
})
