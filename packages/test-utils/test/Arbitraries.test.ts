import { assert, describe, it } from "@effect/vitest"
import { Arbitraries } from "@pqcancel/test-utils"

describe("Arbitraries", () => {
  it.prop("cancelKey is protocol-valid", [Arbitraries.cancelKey], ([key]) => {
    assert.isTrue(Number.isInteger(key.pid) && key.pid >= 1 && key.pid <= 2_147_483_647)
    assert.instanceOf(key.secret, Uint8Array)
    if (key.protocolVersion === "3.0") assert.strictEqual(key.secret.length, 4)
    else assert.isTrue(key.secret.length >= 4 && key.secret.length <= 256)
  }, { arbitrary: { runs: 200 } })
})
