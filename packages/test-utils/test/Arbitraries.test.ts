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

describe("Arbitraries.interruptScenario", () => {
  it.prop("steps within the bounds given", [Arbitraries.interruptScenario({ maxLength: 4, maxSleepMs: 30 })], ([s]) => {
    assert.isTrue(s.length >= 2 && s.length <= 4)
    for (const step of s) {
      assert.isTrue(step.sleepMs >= 0 && step.sleepMs <= 30)
      assert.isTrue(step.startAfterMs >= 0 && step.startAfterMs <= 20)
      assert.isTrue(step.interruptAfterMs === null || (step.interruptAfterMs >= 0 && step.interruptAfterMs <= 150))
    }
  }, { arbitrary: { runs: 100 } })
})
