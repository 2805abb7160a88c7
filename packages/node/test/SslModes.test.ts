/**
 * Every sslmode and sslnegotiation against a TLS server, each with libpq's outcome; verify-full with a wrong host
 * name and verify-ca with a wrong CA fail before any key is sent (the query keeps running).
 */
import { assert, layer } from "@effect/vitest"
import { CancelConnection } from "@pqcancel/core"
import { NodeTransport } from "@pqcancel/node"
import { EmbeddedPostgres, TestSession } from "@pqcancel/test-utils"
import * as Effect from "effect/Effect"
import {
  assertCancelled,
  assertStillSleeping,
  cancelWith,
  conninfo,
  DENO_CRL_REFUSED,
  onDeno,
  runCancel,
  sessionInfo,
  sleepingQuery
} from "./fixtures.ts"

layer(EmbeddedPostgres.layer18, { excludeTestServices: true, timeout: "60 seconds" })(
  "sslmode against a TLS server",
  (it) => {
    for (const sslmode of ["disable", "allow"] as const) {
      it.effect(`sslmode=${sslmode} cancels in plaintext`, () =>
        Effect.gen(function*() {
          const result = yield* cancelWith(() => ({ sslmode }))
          assert.isTrue(result.ok, result.error)
          assert.notInclude(result.statuses, "SSL_STARTUP")
          yield* assertCancelled(result.pending)
        }))
    }

    for (const sslmode of ["prefer", "require", "verify-ca", "verify-full"] as const) {
      it.effect(`sslmode=${sslmode} cancels over TLS (SSLRequest)`, () =>
        Effect.gen(function*() {
          const result = yield* cancelWith((c) => ({ sslmode, sslrootcert: c.caCertPath, host: "localhost" }))
          assert.isTrue(result.ok, result.error)
          // libpq's statuses: MADE after the connect and again after the TLS handshake
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
    }

    for (const sslmode of ["require", "verify-ca", "verify-full"] as const) {
      it.effect(`sslmode=${sslmode} sslnegotiation=direct cancels over direct TLS`, () =>
        Effect.gen(function*() {
          const result = yield* cancelWith((c) => ({
            sslmode,
            sslnegotiation: "direct",
            sslrootcert: c.caCertPath,
            host: "localhost"
          }))
          assert.isTrue(result.ok, result.error)
          assert.include(result.statuses, "SSL_STARTUP")
          yield* assertCancelled(result.pending)
        }))
    }

    it.effect("verify-full with a wrong host name fails before the key is sent", () =>
      Effect.gen(function*() {
        const result = yield* cancelWith((c) => ({
          sslmode: "verify-full",
          sslrootcert: c.caCertPath,
          host: "wrong.example",
          hostaddr: "127.0.0.1"
        }))
        assert.isFalse(result.ok)
        assert.strictEqual(result.errorTag, "CancelFailed")
        assert.strictEqual(
          result.error,
          `connection to server at "127.0.0.1", port ${result.cluster.port} failed: ` +
            `server certificate for "localhost" (and 2 other names) does not match host name "wrong.example"`
        )
        // the query was not cancelled: it is still sleeping
        // the key never reached the server: the query is still sleeping
        yield* assertStillSleeping(result.monitor, result.session)
      }))

    it.effect("verify-ca with a wrong CA fails before the key is sent", () =>
      Effect.gen(function*() {
        const result = yield* cancelWith((c) => ({ sslmode: "verify-ca", sslrootcert: c.wrongCaCertPath }))
        assert.isFalse(result.ok)
        assert.match(result.error ?? "", /failed: SSL error: certificate verify failed$/)
        // the key never reached the server: the query is still sleeping
        yield* assertStillSleeping(result.monitor, result.session)
      }))

    it.effect("sslcrl: a CRL that revokes the server certificate fails the handshake; one that does not, passes", () =>
      Effect.gen(function*() {
        const revoked = yield* cancelWith((c) => ({
          sslmode: "verify-ca",
          sslrootcert: c.caCertPath,
          sslcrl: EmbeddedPostgres.fixturePath("server-revoked.crl")
        }))
        assert.isFalse(revoked.ok)
        assert.match(revoked.error ?? "", onDeno ? DENO_CRL_REFUSED : /failed: SSL error: certificate verify failed$/)
        yield* assertStillSleeping(revoked.monitor, revoked.session)
        const clean = yield* cancelWith((c) => ({
          sslmode: "verify-ca",
          sslrootcert: c.caCertPath,
          sslcrl: EmbeddedPostgres.fixturePath("empty.crl")
        }))
        if (onDeno) {
          // any revocation list is refused there, before the key is sent
          assert.match(clean.error ?? "", DENO_CRL_REFUSED)
          return yield* assertStillSleeping(clean.monitor, clean.session)
        }
        assert.isTrue(clean.ok, clean.error)
        yield* assertCancelled(clean.pending)
      }))

    it.effect("sslrootcert=system verifies against the system's roots (which do not hold the test CA)", () =>
      Effect.gen(function*() {
        const result = yield* cancelWith(() => ({ sslmode: "verify-full", sslrootcert: "system", host: "localhost" }))
        assert.isFalse(result.ok)
        assert.match(result.error ?? "", /failed: SSL error: certificate verify failed$/)
      }))

    it.effect("ssl_max_protocol_version=TLSv1.2 still cancels over TLS 1.2", () =>
      Effect.gen(function*() {
        const result = yield* cancelWith((c) => ({
          sslmode: "verify-full",
          sslrootcert: c.caCertPath,
          host: "localhost",
          ssl_max_protocol_version: "TLSv1.2"
        }))
        assert.isTrue(result.ok, result.error)
        yield* assertCancelled(result.pending)
      }))

    it.effect("verify-full without a root certificate fails with libpq's text", () =>
      Effect.gen(function*() {
        const result = yield* cancelWith(() => ({ sslmode: "verify-full", sslrootcert: "/nonexistent/root.crt" }))
        assert.isFalse(result.ok)
        assert.include(result.error ?? "", "root certificate file \"/nonexistent/root.crt\" does not exist")
      }))

    it.effect("prefer falls back to plaintext on a new socket when the handshake fails", () =>
      Effect.gen(function*() {
        const result = yield* cancelWith((c) => ({ sslmode: "prefer", sslrootcert: c.wrongCaCertPath }))
        assert.isTrue(result.ok, result.error)
        assert.strictEqual(result.statuses.filter((s) => s === "STARTED").length, 2)
        yield* assertCancelled(result.pending)
      }))

    it.effect("gssencmode=require fails with libpq's text (no GSS provider); prefer falls back", () =>
      Effect.gen(function*() {
        const required = yield* cancelWith(() => ({ sslmode: "disable", gssencmode: "require" }))
        assert.isFalse(required.ok)
        assert.strictEqual(required.error, "GSSAPI encryption required but no credential cache")
        const preferred = yield* cancelWith(() => ({ sslmode: "disable", gssencmode: "prefer" }))
        assert.isTrue(preferred.ok, preferred.error)
        yield* assertCancelled(preferred.pending)
        // the first query is still running: end it
        const cancelled = yield* runCancel(
          yield* sessionInfo(required.session, conninfo(required.cluster, "tcp", { sslmode: "disable" }))
        ).pipe(Effect.provide(NodeTransport.layer))
        assert.isTrue(cancelled.ok)
        yield* assertCancelled(required.pending)
      }))

    it.effect("cancelAll cancels many sessions with a concurrency limit and reports each outcome", () =>
      Effect.gen(function*() {
        const cluster = yield* EmbeddedPostgres.EmbeddedPostgres
        const monitor = yield* TestSession.connectTo(cluster, { transport: "unix" })
        const sessions = yield* Effect.all(Array.from({ length: 5 }, () => TestSession.connectTo(cluster, {})))
        const infos = yield* Effect.forEach(
          sessions,
          (s) => sessionInfo(s, conninfo(cluster, "tcp", { sslmode: "require" }))
        )
        const pending = yield* Effect.forEach(sessions, (s) => sleepingQuery(s, monitor))
        // one session with an impossible requirement: its failure is reported, the others still go out
        const bad = { ...infos[0]!, options: { ...infos[0]!.options, gssencmode: "require" as const } }
        const results = yield* CancelConnection.cancelAll([bad, ...infos.slice(1)], { concurrency: 2 }).pipe(
          Effect.provide(NodeTransport.layer)
        )
        assert.deepStrictEqual(results.map((r) => r._tag), ["Failure", "Success", "Success", "Success", "Success"])
        for (const p of pending.slice(1)) yield* assertCancelled(p)
        yield* assertStillSleeping(monitor, sessions[0]!)
      }))
  }
)
