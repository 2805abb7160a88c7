/**
 * `ConnectionOptions.config`: the PG* variables through Effect's ConfigProvider give exactly what `fromString`
 * gives with the same variables as `env` (one parser, one validation), secrets stay Redacted.
 */
import { assert, describe, it } from "@effect/vitest"
import { ConnectionOptions } from "@pqcancel/core"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Effect from "effect/Effect"
import * as Redacted from "effect/Redacted"
import * as Result from "effect/Result"

const withEnv = (env: Record<string, string>) =>
  Effect.provideService(ConfigProvider.ConfigProvider, ConfigProvider.fromEnv({ env }))

const cases: ReadonlyArray<{ readonly conninfo: string; readonly env: Record<string, string> }> = [
  { conninfo: "", env: {} },
  { conninfo: "", env: { PGHOST: "db.internal", PGPORT: "6432", PGSSLMODE: "verify-full", PGCONNECT_TIMEOUT: "1" } },
  { conninfo: "", env: { PGHOST: "/var/run/postgresql", PGPORT: "5433" } },
  { conninfo: "", env: { PGHOST: "a,b", PGHOSTADDR: "10.0.0.1,10.0.0.2", PGPORT: "1,2" } },
  { conninfo: "", env: { PGREQUIRESSL: "1" } },
  { conninfo: "", env: { PGREQUIRESSL: "1", PGSSLMODE: "disable" } },
  { conninfo: "", env: { PGSSLROOTCERT: "system" } },
  { conninfo: "", env: { PGSSLNEGOTIATION: "direct", PGSSLMODE: "require", PGMAXPROTOCOLVERSION: "latest" } },
  { conninfo: "host=db sslmode=disable", env: { PGHOST: "other", PGSSLMODE: "verify-full", PGPORT: "7000" } },
  { conninfo: "postgresql://x:5555/app?sslmode=require", env: { PGSSLCERT: "/c.crt", PGSSLKEY: "/c.key" } },
  { conninfo: "", env: { PGGSSENCMODE: "disable", PGKRBSRVNAME: "pg", PGSSLMINPROTOCOLVERSION: "tlsv1.3" } }
]

describe("ConnectionOptions.config", () => {
  it.effect("the PG* variables from the ConfigProvider give what fromString gives them as env", () =>
    Effect.gen(function*() {
      for (const { conninfo, env } of cases) {
        const expected = ConnectionOptions.fromStringResult(conninfo, env)
        assert.isTrue(Result.isSuccess(expected), JSON.stringify({ conninfo, env }))
        const actual = yield* ConnectionOptions.config(conninfo).pipe(withEnv(env))
        assert.deepStrictEqual(actual, Result.getOrThrow(expected), JSON.stringify({ conninfo, env }))
      }
    }))

  it.effect("an invalid variable fails with libpq's message, as a ConfigError caused by an InvalidOption", () =>
    Effect.gen(function*() {
      const invalid: ReadonlyArray<readonly [Record<string, string>, string]> = [
        [{ PGSSLMODE: "sometimes" }, "invalid sslmode value: \"sometimes\""],
        [{ PGPORT: "99999" }, "invalid port number: \"99999\""],
        [{ PGCONNECT_TIMEOUT: "soon" }, "invalid integer value \"soon\" for connection option \"connect_timeout\""],
        [
          { PGSSLROOTCERT: "system", PGSSLMODE: "require" },
          "weak sslmode \"require\" may not be used with sslrootcert=system (use \"verify-full\")"
        ]
      ]
      for (const [env, message] of invalid) {
        const expected = ConnectionOptions.fromStringResult("", env)
        assert.isTrue(Result.isFailure(expected))
        assert.strictEqual(Result.isFailure(expected) ? expected.failure.message : "", message)
        const error = yield* ConnectionOptions.config().pipe(withEnv(env), Effect.flip)
        assert.strictEqual(error._tag, "ConfigError")
        assert.include(error.message, message)
        const cause = error.cause as { readonly cause?: unknown }
        assert.strictEqual((cause.cause as { readonly _tag?: string } | undefined)?._tag, "InvalidOption")
      }
    }))

  it.effect("PGSSLPASSWORD becomes the Redacted sslpassword; PGPASSWORD is never read", () =>
    Effect.gen(function*() {
      const options = yield* ConnectionOptions.config("sslcert=/c.crt sslkey=/c.key").pipe(
        withEnv({ PGSSLPASSWORD: "key-passphrase", PGPASSWORD: "login-password" })
      )
      assert.isDefined(options.sslpassword)
      assert.strictEqual(Redacted.value(options.sslpassword!), "key-passphrase")
      // oxlint-disable-next-line effecttsgo/prefer-schema-over-json -- what a log line would show
      const shown = `${JSON.stringify(options)} ${Redacted.isRedacted(options.sslpassword) ? "redacted" : "plain"}`
      assert.notInclude(shown, "key-passphrase")
      assert.notInclude(shown, "login-password")

      const fromString = yield* ConnectionOptions.config("sslpassword=from-conninfo").pipe(
        withEnv({ PGSSLPASSWORD: "key-passphrase" })
      )
      assert.strictEqual(Redacted.value(fromString.sslpassword!), "from-conninfo")
    }))

  it.effect("without a variable in the provider (or set to \"\", which a ConfigProvider treats as unset), libpq's built-in defaults apply", () =>
    Effect.gen(function*() {
      const options = yield* ConnectionOptions.config().pipe(withEnv({ UNRELATED: "1", PGSSLMODE: "" }))
      assert.deepStrictEqual(options.hosts, [{ _tag: "Unix", directory: "/tmp", port: 5432 }])
      assert.strictEqual(options.sslmode, "prefer")
      assert.isUndefined(options.sslpassword)
    }))
})
