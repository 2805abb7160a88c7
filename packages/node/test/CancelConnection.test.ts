import { describe, layer } from "@effect/vitest"
import { EmbeddedPostgres } from "@pqcancel/test-utils"
import { testCancelSuite } from "./cancelSuite.ts"

// libpq's test_cancel on PostgreSQL 18, with 4-byte (3.0) and 32-byte (3.2) keys
layer(EmbeddedPostgres.layer18, { timeout: "60 seconds", excludeTestServices: true })(
  "CancelConnection on PostgreSQL 18",
  (it) => {
    describe("protocol 3.0", () => {
      testCancelSuite(it, "3.0")
    })
    describe("protocol 3.2", () => {
      testCancelSuite(it, "3.2")
    })
  }
)
