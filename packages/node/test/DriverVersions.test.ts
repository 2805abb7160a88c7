/**
 * Which driver versions the adapters run against in this vitest project: the pinned devDependencies in the default
 * project, the oldest supported ones (PQCANCEL_EXPECT_*) in vitest.oldest.config.ts, whose aliases must reach the
 * adapters' own imports — otherwise that project would silently test the newest drivers twice.
 */
import { assert, layer } from "@effect/vitest"
import * as SqlPgAdapter from "@pqcancel/node/SqlPgAdapter"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Fs from "node:fs"
import * as Path from "node:path"
import pgPackage from "pg/package.json" with { type: "json" }

const pinned = (JSON.parse(Fs.readFileSync(Path.join(import.meta.dirname, "..", "package.json"), "utf8")) as {
  readonly devDependencies: Record<string, string>
}).devDependencies

layer(Layer.empty)("driver versions under test", (it) => {
  it.effect("@effect/sql-pg: SqlPgAdapter.installedVersion names the one the adapter imports", () =>
    Effect.sync(() => {
      assert.strictEqual(
        SqlPgAdapter.installedVersion,
        process.env["PQCANCEL_EXPECT_SQL_PG"] ?? pinned["@effect/sql-pg"]
      )
    }))

  it.effect("pg", () =>
    Effect.sync(() => {
      assert.strictEqual(pgPackage.version, process.env["PQCANCEL_EXPECT_PG"] ?? pinned["pg"])
    }))
})
