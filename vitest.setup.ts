import { addEqualityTesters } from "@effect/vitest"
import * as Arbitrary from "effect/Arbitrary"
import { beforeEach } from "vitest"

addEqualityTesters()

// A hermetic suite: node-postgres, postgres.js and the libpq-style defaults read PGHOST, PGPORT, PGSSLMODE, PGUSER,
// PGDATABASE… from the environment, and the libpq programs the differential tests build do too; a Postgres user's
// shell must not point the tests elsewhere. Every PG* variable is cleared before a test file loads (the tests of the
// PG* parsing pass their environment explicitly). .ci/run runs the suite with such variables set.
for (const name of Object.keys(process.env)) {
  if (name.startsWith("PG")) delete process.env[name]
}

// Property tests are reproducible: every check in this file runs from one seed, chosen at random unless
// PQCANCEL_SEED replays a failing run; a failing test prints the seed to replay it with.
const seedVariable = process.env["PQCANCEL_SEED"]
const seed = seedVariable !== undefined && seedVariable !== ""
  ? Number(seedVariable)
  : Math.floor(Math.random() * 2 ** 31)
if (!Number.isSafeInteger(seed)) {
  throw new Error(`PQCANCEL_SEED must be an integer, got ${JSON.stringify(seedVariable)}`)
}
Arbitrary.configureGlobal({ check: { seed } })

beforeEach(({ onTestFailed, task }) => {
  onTestFailed(() => {
    console.error(
      `[${task.name}] failed; property checks in this file used seed ${seed}: replay with PQCANCEL_SEED=${seed}`
    )
  })
})
