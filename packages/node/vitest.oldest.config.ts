/**
 * The SqlPgAdapter suite again, against the oldest `@effect/sql-pg` the peer range admits: `@effect/sql-pg` resolves
 * to the aliased install `@effect/sql-pg-4-0` (4.0.5), for the tests and for the adapter's own imports (both are
 * compiled by vitest); sql-pg's own dependencies resolve as installed (effect 4.1.5, one instance). The default
 * project (vitest.config.ts) runs the same files against the pinned newest version. Only the oldest `pg` (8.11.0)
 * and `postgres` (3.4.0) are left to scripts/pack-check.ts: the pg suites use features newer node-postgres added.
 */
import { defineProject, mergeConfig } from "vitest/config"
import shared from "../../vitest.shared.ts"

const config = mergeConfig(
  shared,
  defineProject({
    test: {
      name: "@pqcancel/node (oldest drivers)",
      // the versions the tests expect the adapters to run against (the default project: the pinned devDependencies)
      env: { PQCANCEL_EXPECT_SQL_PG: "4.0.5" }
    },
    resolve: {
      alias: [
        { find: /^@effect\/sql-pg(?=\/|$)/, replacement: "@effect/sql-pg-4-0" }
      ]
    }
  })
)
// mergeConfig concatenates arrays: the file list replaces the shared one
config.test!.include = [
  "test/DriverVersions.test.ts",
  "test/SqlPgAdapter.test.ts"
]

export default config
