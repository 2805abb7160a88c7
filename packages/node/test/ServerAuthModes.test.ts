/**
 * pg_hba.conf is never consulted for a CancelRequest: on a hostssl-only server a cancel works over TLS and also
 * in plaintext (which is why pqcancel never sends it in plaintext when the sslmode requires TLS).
 */
import { assert, layer } from "@effect/vitest"
import { EmbeddedPostgres } from "@pqcancel/test-utils"
import * as Effect from "effect/Effect"
import { assertCancelled, cancelWith } from "./fixtures.ts"

layer(EmbeddedPostgres.layer({ version: 18, hba: "hostssl-only" }), {
  excludeTestServices: true,
  timeout: "60 seconds"
})(
  "a hostssl-only server",
  (it) => {
    for (const sslmode of ["require", "verify-full", "disable"] as const) {
      it.effect(`accepts a cancel with sslmode=${sslmode}`, () =>
        Effect.gen(function*() {
          const result = yield* cancelWith((c) => ({ sslmode, sslrootcert: c.caCertPath, host: "localhost" }))
          assert.isTrue(result.ok, result.error)
          assert.strictEqual(result.statuses.includes("SSL_STARTUP"), sslmode !== "disable")
          yield* assertCancelled(result.pending)
        }))
    }
  }
)
