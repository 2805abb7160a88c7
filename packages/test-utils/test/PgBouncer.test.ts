/**
 * The PgBouncer helper: it listens in front of the cluster, and it is stopped (and its directory removed) when the
 * Scope closes, also when the test fails.
 */
import { assert, describe, layer } from "@effect/vitest"
import { EmbeddedPostgres, PgBouncer, TestSession } from "@pqcancel/test-utils"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fs from "node:fs"
import * as Net from "node:net"

const refuses = (port: number) =>
  Effect.callback<boolean>((resume) => {
    const socket = Net.connect({ host: "127.0.0.1", port })
    socket.once("connect", () => {
      socket.destroy()
      resume(Effect.succeed(false))
    })
    socket.once("error", () => resume(Effect.succeed(true)))
  })

const reason = PgBouncer.unavailableReason()

if (reason !== undefined) {
  // oxlint-disable-next-line effecttsgo/no-console -- say once, in the test output, why the suite is skipped
  console.warn(`PgBouncer helper tests skipped: ${reason}`)
}

// without pgbouncer (see .ci/run) the suite is skipped, and the warning above says why
describe.skipIf(reason !== undefined)("PgBouncer helper", () => {
  layer(EmbeddedPostgres.layer18, { excludeTestServices: true, timeout: "60 seconds" })("PgBouncer helper", (it) => {
    it.effect("serves queries in front of the cluster, and is gone when the Scope closes", () =>
      Effect.gen(function*() {
        const cluster = yield* EmbeddedPostgres.EmbeddedPostgres
        const { directory, port } = yield* Effect.scoped(
          Effect.gen(function*() {
            const bouncer = yield* PgBouncer.make(cluster, { poolMode: "transaction" })
            const session = yield* TestSession.connectTo(
              { ...cluster, host: bouncer.host, port: bouncer.port },
              { transport: "tcp" }
            )
            const result = yield* session.query("SELECT 41 + 1")
            assert.strictEqual(result._tag === "Ok" ? result.rows[0]?.[0] : undefined, "42")
            assert.match(yield* bouncer.logs, /listening on 127\.0\.0\.1/)
            assert.isTrue(Fs.existsSync(bouncer.directory))
            return bouncer
          })
        )
        assert.isTrue(yield* refuses(port), "stopped")
        assert.isFalse(Fs.existsSync(directory), "its directory is removed")
      }))

    it.effect("is stopped when the test fails", () =>
      Effect.gen(function*() {
        const cluster = yield* EmbeddedPostgres.EmbeddedPostgres
        let port = 0
        const exit = yield* Effect.exit(Effect.scoped(
          Effect.gen(function*() {
            const bouncer = yield* PgBouncer.make(cluster, { poolMode: "session" })
            port = bouncer.port
            return yield* Effect.fail("the test failed")
          })
        ))
        assert.isTrue(Exit.isFailure(exit))
        assert.notStrictEqual(port, 0)
        assert.isTrue(yield* refuses(port))
      }))
  })
})
