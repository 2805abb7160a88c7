import { assert, describe, it } from "@effect/vitest"
import { CancelError } from "@pqcancel/core"
import * as Schema from "effect/Schema"

const errors = [
  CancelError.InvalidOption,
  CancelError.ProtocolError,
  CancelError.CancelCreateError,
  CancelError.CancelFailed,
  CancelError.CancelTimeout
] as const

describe("CancelError", () => {
  it("every error carries the schema identifier @pqcancel/core/<tag>", () => {
    for (const error of errors) {
      const instance = new error({ message: "m" })
      assert.strictEqual(error.identifier, `@pqcancel/core/${instance._tag}`)
    }
    assert.strictEqual(new Set(errors.map((e) => e.identifier)).size, errors.length)
  })

  it("an error encoded to JSON decodes, in another process, back into its own class", () => {
    for (const error of errors) {
      const original = new error({ message: "timeout expired" })
      // oxlint-disable-next-line effecttsgo/prefer-schema-over-json -- the JSON text is what crosses the process boundary
      const wire = JSON.stringify(Schema.encodeSync(CancelError.PqCancelError)(original))
      // oxlint-disable-next-line effecttsgo/prefer-schema-over-json -- see above
      const decoded = Schema.decodeUnknownSync(CancelError.PqCancelError)(JSON.parse(wire))
      assert.isTrue(decoded instanceof error, `decoded as ${decoded.constructor.name}`)
      assert.strictEqual(decoded._tag, original._tag)
      assert.strictEqual(decoded.message, "timeout expired")
    }
  })

  it("the JSON Schema names each error by its identifier", () => {
    const document = Schema.toJsonSchemaDocument(CancelError.PqCancelError)
    const names = Object.keys(document.definitions)
    for (const error of errors) assert.isTrue(names.some((n) => n.startsWith(error.identifier)), error.identifier)
  })
})
