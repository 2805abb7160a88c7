/**
 * Against a server without TLS: prefer falls back to plaintext on the same socket after 'N'; require and
 * verify-* refuse to send the key; direct TLS fails the handshake.
 */
import { assert, layer } from "@effect/vitest"
import { NodeTransport } from "@pqcancel/node"
import * as PostgresJsAdapter from "@pqcancel/node/PostgresJsAdapter"
import { EmbeddedPostgres, TestSession } from "@pqcancel/test-utils"
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import {
  assertCancelled,
  assertStillSleeping,
  cancelWith,
  forkPostgresJsSleep,
  postgresJsPlain,
  sleepingPid
} from "./fixtures.ts"

const plaintextSession = { tls: "disable" } as const

layer(EmbeddedPostgres.layer({ version: 18, tls: false }), { excludeTestServices: true, timeout: "60 seconds" })(
  "sslmode against a server without TLS",
  (it) => {
    for (const sslmode of ["disable", "allow"] as const) {
      it.effect(`sslmode=${sslmode} cancels in plaintext`, () =>
        Effect.gen(function*() {
          const result = yield* cancelWith(() => ({ sslmode }), plaintextSession)
          assert.isTrue(result.ok, result.error)
          yield* assertCancelled(result.pending)
        }))
    }

    it.effect("sslmode=prefer gets 'N' and sends the cancel in plaintext on the same socket", () =>
      Effect.gen(function*() {
        const result = yield* cancelWith(() => ({ sslmode: "prefer" }), plaintextSession)
        assert.isTrue(result.ok, result.error)
        // 'N': back to MADE on the same socket, which then sends the plaintext CancelRequest
        assert.deepStrictEqual(result.statuses, [
          "ALLOCATED",
          "STARTED",
          "MADE",
          "SSL_STARTUP",
          "MADE",
          "AWAITING_RESPONSE",
          "OK"
        ])
        yield* assertCancelled(result.pending)
      }))

    for (const sslmode of ["require", "verify-ca", "verify-full"] as const) {
      it.effect(`sslmode=${sslmode} fails: server does not support SSL, but SSL was required`, () =>
        Effect.gen(function*() {
          const result = yield* cancelWith((c) => ({ sslmode, sslrootcert: c.caCertPath }), plaintextSession)
          assert.isFalse(result.ok)
          assert.strictEqual(
            result.error,
            `connection to server at "127.0.0.1", port ${result.cluster.port} failed: ` +
              "server does not support SSL, but SSL was required"
          )
          // the key never reached the server: the query is still sleeping
          yield* assertStillSleeping(result.monitor, result.session)
        }))
    }

    it.effect("sslnegotiation=direct fails the handshake and never sends the key", () =>
      Effect.gen(function*() {
        const result = yield* cancelWith(() => ({ sslmode: "require", sslnegotiation: "direct" }), plaintextSession)
        assert.isFalse(result.ok)
        assert.strictEqual(result.errorTag, "CancelFailed")
        assert.match(result.error ?? "", /^connection to server at "127\.0\.0\.1", port \d+ failed: SSL/)
      }))

    // postgres.js (PostgresJsAdapter): ssl "prefer" falls back to a plaintext session, whose cancel is plaintext;
    // "require" refuses to connect
    it.effect("postgres.js ssl=prefer: a plaintext session, cancelled in plaintext; ssl=require does not connect", () =>
      Effect.gen(function*() {
        const cluster = yield* EmbeddedPostgres.EmbeddedPostgres
        const monitor = yield* TestSession.connectTo(cluster, { transport: "unix" })
        const base = { ...postgresJsPlain(cluster, "pgjs-prefer"), max: 1 }
        const sql = yield* PostgresJsAdapter.make({ ...base, ssl: "prefer" })
        const { driverErrorCode, fiber } = yield* forkPostgresJsSleep(sql)
        yield* sleepingPid(monitor, "pgjs-prefer")
        yield* Fiber.interrupt(fiber)
        assert.strictEqual(yield* driverErrorCode, "57014")
        const strict = yield* PostgresJsAdapter.make({ ...base, ssl: "require" })
        const refused = yield* Effect.exit(PostgresJsAdapter.query(strict, (sql) => sql`SELECT 1`))
        assert.isTrue(Exit.isFailure(refused))
        assert.include(String(Exit.isFailure(refused) ? Cause.squash(refused.cause) : ""), "does not support SSL")
      }).pipe(Effect.scoped, Effect.provide(NodeTransport.layer)))
  }
)
