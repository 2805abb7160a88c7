import { layer } from "@effect/vitest"
import { EmbeddedPostgres } from "@pqcancel/test-utils"
import { testCancelSuite } from "./cancelSuite.ts"

// libpq's test_cancel on PostgreSQL 17 (protocol 3.0; 3.2 is negotiated down to 3.0 and 4-byte keys)
layer(EmbeddedPostgres.layer17, { timeout: "60 seconds", excludeTestServices: true })(
  "CancelConnection on PostgreSQL 17",
  (it) => {
    testCancelSuite(it, "3.0")
    testCancelSuite(it, "3.2")
  }
)
