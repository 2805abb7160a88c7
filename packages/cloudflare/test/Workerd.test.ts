/**
 * CloudflareTransport inside a Worker on workerd (test/workerd.ts), against the embedded PostgreSQL 18 on loopback:
 * a cancel sent from the Worker stops the query; what the platform cannot do fails before the key is sent.
 */
import { assert, layer } from "@effect/vitest"
import { EmbeddedPostgres, FakePostmaster, TestSession } from "@pqcancel/test-utils"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import type { CancelBody } from "./worker.ts"
import * as Workerd from "./workerd.ts"

const hex = (bytes: Uint8Array) => Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")

// what the Worker needs: the session's address and key, and the cancel's conninfo
const body = (session: TestSession.TestSession, conninfo: string): CancelBody => ({
  conninfo,
  address: session.remote,
  pid: session.backendKey.pid,
  secretHex: hex(session.backendKey.secret),
  protocolVersion: session.backendKey.protocolVersion
})

const setup = Effect.gen(function*() {
  const cluster = yield* EmbeddedPostgres.EmbeddedPostgres
  const workerd = yield* Workerd.Workerd
  const monitor = yield* TestSession.connectTo(cluster, { transport: "unix" })
  const session = yield* TestSession.connectTo(cluster, { protocol: "3.2" })
  const pending = yield* session.startQuery("SELECT pg_sleep(60)")
  yield* TestSession.waitUntilSleeping(monitor, session.backendKey.pid)
  const tcp = (extra: string) => `host=127.0.0.1 port=${cluster.port} ${extra}`
  const stillSleeping = Effect.gen(function*() {
    const still = yield* monitor.query(
      `SELECT wait_event FROM pg_stat_activity WHERE pid = ${session.backendKey.pid}`
    )
    assert.deepStrictEqual(still._tag === "Ok" ? still.rows : still, [["PgSleep"]])
  })
  const cancelled = Effect.gen(function*() {
    const result = yield* pending.result
    assert.strictEqual(result._tag === "Error" ? result.sqlstate : result._tag, "57014")
  })
  return { cluster, workerd, session, tcp, stillSleeping, cancelled }
})

layer(Layer.mergeAll(EmbeddedPostgres.layer18, Workerd.layer), { timeout: "90 seconds", excludeTestServices: true })(
  "CloudflareTransport in a Worker (workerd)",
  (it) => {
    it.effect("a cancel sent from inside a Worker stops the query (plain TCP, sslmode=disable)", () =>
      Effect.gen(function*() {
        const { cancelled, session, tcp, workerd } = yield* setup
        const outcome = yield* workerd.cancel("public", body(session, tcp("sslmode=disable")))
        assert.deepStrictEqual(outcome, { ok: true })
        yield* cancelled
      }))

    it.effect("verify-full with sslrootcert=system: TLS after 'S', the platform verifies the server and host name", () =>
      Effect.gen(function*() {
        const { cancelled, cluster, session, stillSleeping, workerd } = yield* setup
        const verifyFull = (host: string) =>
          `host=${host} hostaddr=127.0.0.1 port=${cluster.port} sslmode=verify-full sslrootcert=system`
        // a name the certificate does not carry: the handshake fails, nothing is sent
        const wrongName = yield* workerd.cancel("trusting", body(session, verifyFull("db.example.com")))
        assert.match(wrongName.ok ? "" : wrongName.message, /port \d+ failed: SSL error: /)
        yield* stillSleeping
        const outcome = yield* workerd.cancel("trusting", body(session, verifyFull("localhost")))
        assert.deepStrictEqual(outcome, { ok: true })
        yield* cancelled
      }))

    it.effect("prefer against a server the platform does not trust: the handshake fails, then plaintext", () =>
      Effect.gen(function*() {
        const { cancelled, session, tcp, workerd } = yield* setup
        const outcome = yield* workerd.cancel("public", body(session, tcp("sslmode=prefer")))
        assert.deepStrictEqual(outcome, { ok: true })
        yield* cancelled
      }))

    it.effect("require against a server the platform does not trust fails, and the key is never sent", () =>
      Effect.gen(function*() {
        const { session, stillSleeping, tcp, workerd } = yield* setup
        const outcome = yield* workerd.cancel("public", body(session, tcp("sslmode=require")))
        assert.isFalse(outcome.ok)
        assert.match(
          outcome.ok ? "" : outcome.message,
          /^connection to server at "127\.0\.0\.1", port \d+ failed: SSL /
        )
        yield* stillSleeping
      }))

    it.effect("a private CA, direct TLS, a unix socket, CRLs, a TLSv1.3 minimum, GSS: each fails before anything is sent", () =>
      Effect.gen(function*() {
        const { cluster, session, stillSleeping, tcp, workerd } = yield* setup
        const privateCa = yield* workerd.cancel(
          "trusting",
          body(session, tcp(`sslmode=verify-ca sslrootcert=${cluster.caCertPath}`))
        )
        assert.include(
          privateCa.ok ? "" : privateCa.message,
          `failed: root certificate file "${cluster.caCertPath}" does not exist\n` +
            "Either provide the file, use the system's trusted roots with sslrootcert=system"
        )
        const direct = yield* workerd.cancel(
          "trusting",
          body(session, tcp("sslmode=require sslnegotiation=direct"))
        )
        assert.include(
          direct.ok ? "" : direct.message,
          "failed: direct SSL connection was established without ALPN protocol negotiation extension"
        )
        const unix = yield* workerd.cancel("trusting", {
          ...body(session, `host=${cluster.socketDir} port=${cluster.port} sslmode=disable`),
          address: { _tag: "Unix", path: `${cluster.socketDir}/.s.PGSQL.${cluster.port}` }
        })
        assert.include(unix.ok ? "" : unix.message, "failed: Address family not supported by protocol")
        // what a Worker cannot enforce fails before the handshake too, also where a server would be trusted
        const crl = yield* workerd.cancel("trusting", body(session, tcp("sslmode=require sslcrl=/etc/revoked.crl")))
        assert.include(crl.ok ? "" : crl.message, "a Worker does not check revocation lists")
        const tls13 = yield* workerd.cancel(
          "trusting",
          body(session, tcp("sslmode=require ssl_min_protocol_version=TLSv1.3"))
        )
        assert.include(tls13.ok ? "" : tls13.message, "ssl_min_protocol_version=TLSv1.3 cannot be enforced in a Worker")
        const gss = yield* workerd.cancel("trusting", body(session, tcp("sslmode=disable gssencmode=require")))
        assert.isFalse(gss.ok)
        yield* stillSleeping
      }))

    it.effect("under require the fake postmaster never sees the key: after 'N', or an untrusted certificate", () =>
      Effect.gen(function*() {
        const { session, workerd } = yield* setup
        const scripts = {
          refused: [{ expect: "sslRequest" }, { reply: "N" }, "awaitEof"],
          untrusted: [{ expect: "sslRequest" }, { reply: "S" }, { tlsUpgrade: FakePostmaster.serverTls() }, "awaitEof"]
        } as const
        for (const [name, script] of Object.entries(scripts)) {
          const fake = yield* FakePostmaster.make({ script })
          const outcome = yield* workerd.cancel("public", {
            ...body(session, `host=127.0.0.1 port=${fake.port} sslmode=require`),
            address: { _tag: "Tcp", address: "127.0.0.1", port: fake.port, family: 4 }
          })
          assert.include(
            outcome.ok ? "" : outcome.message,
            name === "refused" ? "failed: server does not support SSL, but SSL was required" : "failed: SSL error: "
          )
          const record = yield* fake.awaitFinished(0)
          assert.deepStrictEqual(record.packets, [{ kind: "sslRequest", tls: false }])
          assert.strictEqual(Buffer.from(record.wire).indexOf(Buffer.from(session.backendKey.secret)), -1)
          assert.strictEqual(yield* fake.connections, 1)
        }
      }))
  }
)
