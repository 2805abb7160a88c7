import { assert, layer } from "@effect/vitest"
import { EmbeddedPostgres, TestSession } from "@pqcancel/test-utils"
import * as Effect from "effect/Effect"
import * as Fs from "node:fs"
import * as Os from "node:os"

const hasIpv6Loopback = Object.values(Os.networkInterfaces()).some((addresses) =>
  (addresses ?? []).some((a) => a.address === "::1")
)

const pem = (path: string) => Fs.readFileSync(path, "utf8")

// One PG 18 cluster for the file; nested layers add the PG 17 / hostssl-only / cert clusters.
// excludeTestServices: tests run with the live clock (real sockets).
layer(EmbeddedPostgres.layer18, { excludeTestServices: true })("TestSession", (it) => {
  it.effect("plain TCP: key, remote address, query", () =>
    Effect.gen(function*() {
      const pg = yield* EmbeddedPostgres.EmbeddedPostgres
      const session = yield* TestSession.connectTo(pg)
      assert.isFalse(session.encrypted)
      assert.deepStrictEqual(session.remote, { _tag: "Tcp", address: "127.0.0.1", port: pg.port, family: 4 })
      assert.strictEqual(session.serverVersion, pg.version)
      assert.strictEqual(session.backendKey.protocolVersion, "3.0")
      assert.strictEqual(session.backendKey.secret.length, 4)
      const result = yield* session.query("SELECT pg_backend_pid(), NULL::text, 'x'")
      assert.deepStrictEqual(result, {
        _tag: "Ok",
        rows: [[String(session.backendKey.pid), null, "x"]],
        command: "SELECT 1"
      })
    }).pipe(EmbeddedPostgres.withServerLogOnFailure))

  it.effect("TLS via SSLRequest, verified against the CA", () =>
    Effect.gen(function*() {
      const pg = yield* EmbeddedPostgres.EmbeddedPostgres
      const session = yield* TestSession.connectTo(pg, { tls: "sslrequest" })
      assert.isTrue(session.encrypted)
      assert.strictEqual(session.tlsInfo?.protocol, "TLSv1.3")
      const ssl = yield* session.query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
      assert.deepStrictEqual(ssl, { _tag: "Ok", rows: [["t"]], command: "SELECT 1" })
    }))

  it.effect("TLS with the wrong CA fails with TlsError", () =>
    Effect.gen(function*() {
      const pg = yield* EmbeddedPostgres.EmbeddedPostgres
      const error = yield* TestSession.connectTo(pg, { tls: "sslrequest", ca: pem(pg.wrongCaCertPath) }).pipe(
        Effect.flip
      )
      assert.strictEqual(error._tag, "TlsError")
    }))

  it.effect("direct TLS negotiates ALPN postgresql", () =>
    Effect.gen(function*() {
      const pg = yield* EmbeddedPostgres.EmbeddedPostgres
      const session = yield* TestSession.connectTo(pg, { tls: "direct" })
      assert.isTrue(session.encrypted)
      assert.strictEqual(session.tlsInfo?.alpn, "postgresql")
      assert.strictEqual(session.remote._tag, "Tcp")
    }))

  it.effect("Unix socket", () =>
    Effect.gen(function*() {
      const pg = yield* EmbeddedPostgres.EmbeddedPostgres
      const session = yield* TestSession.connectTo(pg, { transport: "unix" })
      assert.deepStrictEqual(session.remote, { _tag: "Unix", path: pg.socketPath })
      assert.isFalse(session.encrypted)
      const result = yield* session.query(
        "SELECT client_addr IS NULL FROM pg_stat_activity WHERE pid = pg_backend_pid()"
      )
      assert.deepStrictEqual(result, { _tag: "Ok", rows: [["t"]], command: "SELECT 1" })
    }))

  it.effect("the server refuses SSL on a Unix socket (SSLRequest answered N)", () =>
    Effect.gen(function*() {
      const pg = yield* EmbeddedPostgres.EmbeddedPostgres
      const error = yield* TestSession.connectTo(pg, { transport: "unix", tls: "sslrequest" }).pipe(Effect.flip)
      assert.strictEqual(error._tag, "TlsError")
      assert.include(error.message, "does not support SSL")
    }))

  it.effect.skipIf(!hasIpv6Loopback)("IPv6 loopback", () =>
    Effect.gen(function*() {
      const pg = yield* EmbeddedPostgres.EmbeddedPostgres
      assert.strictEqual(pg.host6, "::1")
      const session = yield* TestSession.connectTo(pg, { transport: "tcp6", tls: "sslrequest" })
      assert.deepStrictEqual(session.remote, { _tag: "Tcp", address: "::1", port: pg.port, family: 6 })
      assert.isTrue(session.encrypted)
    }))

  it.effect("protocol 3.2 on PG 18: 32-byte key; 3.0: 4-byte key", () =>
    Effect.gen(function*() {
      const pg = yield* EmbeddedPostgres.EmbeddedPostgres
      const v32 = yield* TestSession.connectTo(pg, { protocol: "3.2" })
      assert.strictEqual(v32.backendKey.protocolVersion, "3.2")
      assert.strictEqual(v32.backendKey.secret.length, 32)
      assert.isFalse(v32.negotiatedDown)
      const v30 = yield* TestSession.connectTo(pg, { protocol: "3.0" })
      assert.strictEqual(v30.backendKey.protocolVersion, "3.0")
      assert.strictEqual(v30.backendKey.secret.length, 4)
      assert.notStrictEqual(v30.backendKey.pid, v32.backendKey.pid)
    }))

  it.effect("SCRAM-SHA-256 authentication", () =>
    Effect.gen(function*() {
      const pg = yield* EmbeddedPostgres.EmbeddedPostgres
      const session = yield* TestSession.connectTo(pg, { user: pg.scramUser.user, password: pg.scramUser.password })
      const who = yield* session.query("SELECT current_user")
      assert.deepStrictEqual(who, { _tag: "Ok", rows: [["scram_user"]], command: "SELECT 1" })
      const wrong = yield* TestSession.connectTo(pg, { user: pg.scramUser.user, password: "nope" }).pipe(Effect.flip)
      assert.strictEqual(wrong._tag, "StartupRejected")
      if (wrong._tag === "StartupRejected") assert.strictEqual(wrong.sqlstate, "28P01")
      const missing = yield* TestSession.connectTo(pg, { user: pg.scramUser.user }).pipe(Effect.flip)
      assert.strictEqual(missing._tag, "AuthError")
    }))

  it.effect("pg_cancel_backend ends pg_sleep with 57014 and the session stays usable", () =>
    Effect.gen(function*() {
      const pg = yield* EmbeddedPostgres.EmbeddedPostgres
      const session = yield* TestSession.connectTo(pg, { tls: "sslrequest", protocol: "3.2" })
      const monitor = yield* TestSession.connectTo(pg, { transport: "unix" })
      const pending = yield* session.startQuery("SELECT pg_sleep(60)")
      yield* TestSession.waitUntilSleeping(monitor, session.backendKey.pid)
      const cancelled = yield* monitor.query(`SELECT pg_cancel_backend(${session.backendKey.pid})`)
      assert.deepStrictEqual(cancelled, { _tag: "Ok", rows: [["t"]], command: "SELECT 1" })
      const outcome = yield* pending.result
      assert.strictEqual(outcome._tag, "Error")
      if (outcome._tag === "Error") {
        assert.strictEqual(outcome.sqlstate, "57014")
        assert.strictEqual(outcome.message, "canceling statement due to user request")
      }
      yield* TestSession.waitUntilIdle(monitor, session.backendKey.pid)
      const after = yield* session.query("SELECT 42")
      assert.deepStrictEqual(after, { _tag: "Ok", rows: [["42"]], command: "SELECT 1" })
    }).pipe(EmbeddedPostgres.withServerLogOnFailure))

  it.effect("a terminated backend fails the pending query with SessionClosed", () =>
    Effect.gen(function*() {
      const pg = yield* EmbeddedPostgres.EmbeddedPostgres
      const session = yield* TestSession.connectTo(pg)
      const monitor = yield* TestSession.connectTo(pg, { transport: "unix" })
      const pending = yield* session.startQuery("SELECT pg_sleep(60)")
      yield* TestSession.waitUntilSleeping(monitor, session.backendKey.pid)
      yield* monitor.query(`SELECT pg_terminate_backend(${session.backendKey.pid})`)
      const error = yield* pending.result.pipe(Effect.flip)
      assert.strictEqual(error._tag, "SessionClosed")
    }))

  it.effect("waitUntil gives up with WaitTimeout", () =>
    Effect.gen(function*() {
      const pg = yield* EmbeddedPostgres.EmbeddedPostgres
      const monitor = yield* TestSession.connectTo(pg, { transport: "unix" })
      // long enough for a few probes on a busy machine (the message reports the last value seen)
      const error = yield* TestSession.waitUntil(monitor, "SELECT 1", (v) => v === "2", { timeout: "1 second" }).pipe(
        Effect.flip
      )
      assert.strictEqual(error._tag, "WaitTimeout")
      assert.include(error.message, "last value: 1")
    }))

  it.layer(EmbeddedPostgres.layer17)("PostgreSQL 17", (it) => {
    it.effect("3.2 requested: NegotiateProtocolVersion down to 3.0 with a 4-byte key", () =>
      Effect.gen(function*() {
        const pg = yield* EmbeddedPostgres.EmbeddedPostgres
        assert.strictEqual(pg.majorVersion, 17)
        const session = yield* TestSession.connectTo(pg, { protocol: "3.2", tls: "direct" })
        assert.isTrue(session.negotiatedDown)
        assert.strictEqual(session.backendKey.protocolVersion, "3.0")
        assert.strictEqual(session.backendKey.secret.length, 4)
        assert.match(session.serverVersion, /^17\./)
      }))
  })

  it.layer(EmbeddedPostgres.layer({ hba: "hostssl-only" }))("hostssl-only", (it) => {
    it.effect("refuses a plaintext startup with 28000, accepts TLS", () =>
      Effect.gen(function*() {
        const pg = yield* EmbeddedPostgres.EmbeddedPostgres
        const error = yield* TestSession.connectTo(pg).pipe(Effect.flip)
        assert.strictEqual(error._tag, "StartupRejected")
        if (error._tag === "StartupRejected") {
          assert.strictEqual(error.sqlstate, "28000")
          assert.include(error.message, "no encryption")
        }
        const session = yield* TestSession.connectTo(pg, { tls: "sslrequest" })
        assert.isTrue(session.encrypted)
      }))
  })

  it.layer(EmbeddedPostgres.layer({ hba: "cert" }))("cert", (it) => {
    it.effect("accepts the client certificate (plain and encrypted key), refuses TLS without one", () =>
      Effect.gen(function*() {
        const pg = yield* EmbeddedPostgres.EmbeddedPostgres
        const withCert = yield* TestSession.connectTo(pg, {
          tls: "sslrequest",
          clientCert: pem(pg.clientCertPath),
          clientKey: pem(pg.clientKeyPath)
        })
        const ssl = yield* withCert.query("SELECT client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        assert.deepStrictEqual(ssl, { _tag: "Ok", rows: [["/CN=postgres"]], command: "SELECT 1" })
        const encryptedKey = yield* TestSession.connectTo(pg, {
          tls: "direct",
          clientCert: pem(pg.clientCertPath),
          clientKey: pem(pg.clientKeyEncryptedPath),
          clientKeyPassphrase: pg.clientKeyPassphrase
        })
        assert.isTrue(encryptedKey.encrypted)
        const error = yield* TestSession.connectTo(pg, { tls: "sslrequest" }).pipe(Effect.flip)
        assert.strictEqual(error._tag, "StartupRejected")
        if (error._tag === "StartupRejected") assert.strictEqual(error.sqlstate, "28000")
      }))
  })
})
