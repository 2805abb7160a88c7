/**
 * The SqlPgAdapter, PgAdapter and pg.Pool suites again, against the oldest `@effect/sql-pg` and `pg` the peer ranges
 * admit: `@effect/sql-pg` and `pg` resolve to the aliased installs `@effect/sql-pg-4-0` (4.0.5) and `pg-8-11`
 * (8.11.0), for the tests and for the adapters' own imports (both are compiled by vitest); the drivers' own
 * dependencies resolve as installed (effect 4.1.5, one instance). The default project (vitest.config.ts) runs the
 * same files against the pinned newest versions. The shared-client suite is not run here (it tests pipeline mode,
 * which pg 8.11 lacks); the oldest postgres.js (3.4.0) is left to scripts/pack-check.ts.
 */
import { defineProject, mergeConfig } from "vitest/config"
import shared from "../../vitest.shared.ts"

const config = mergeConfig(
  shared,
  defineProject({
    test: {
      name: "@pqcancel/node (oldest drivers)",
      // the versions the tests expect the adapters to run against (the default project: the pinned devDependencies)
      env: { PQCANCEL_EXPECT_SQL_PG: "4.0.5", PQCANCEL_EXPECT_PG: "8.11.0" }
    },
    resolve: {
      alias: [
        { find: /^@effect\/sql-pg(?=\/|$)/, replacement: "@effect/sql-pg-4-0" },
        { find: /^pg(?=\/|$)/, replacement: "pg-8-11" }
      ]
    }
  })
)
// mergeConfig concatenates arrays: the file list replaces the shared one
config.test!.include = [
  "test/DriverVersions.test.ts",
  "test/SqlPgAdapter.test.ts",
  "test/PgAdapter.test.ts",
  "test/PgPool.test.ts"
]

export default config
