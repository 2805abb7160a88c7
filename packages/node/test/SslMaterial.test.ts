/**
 * In-memory TLS material (`ConnectionOptions.sslMaterial`): a CA, client certificate and key, a CRL passed as
 * strings or bytes instead of files. One client-certificate cluster: the sessions present the fixture client
 * certificate; the cancel connections use the material (the files are loaded into memory here).
 */
import { assert, layer } from "@effect/vitest"
import type { ConnectionOptions } from "@pqcancel/core"
import { NodeTransport } from "@pqcancel/node"
import { EmbeddedPostgres, TestSession } from "@pqcancel/test-utils"
import * as Effect from "effect/Effect"
import * as Redacted from "effect/Redacted"
import * as Crypto from "node:crypto"
import * as Fs from "node:fs"
import {
  assertCancelled,
  assertStillSleeping,
  conninfo,
  DENO_CRL_REFUSED,
  onDeno,
  runCancel,
  sessionInfo,
  sleepingQuery
} from "./fixtures.ts"

/** Starts a sleeping query on a fresh TLS session and cancels it with the conninfo keywords and the material */
const cancelWithMaterial = (
  extra: (cluster: EmbeddedPostgres.Cluster) => Record<string, string>,
  material: (cluster: EmbeddedPostgres.Cluster) => ConnectionOptions.SslMaterial
) =>
  Effect.gen(function*() {
    const cluster = yield* EmbeddedPostgres.EmbeddedPostgres
    const session = yield* TestSession.connectTo(cluster, {
      tls: "sslrequest",
      clientCert: Fs.readFileSync(cluster.clientCertPath, "utf8"),
      clientKey: Fs.readFileSync(cluster.clientKeyPath, "utf8")
    })
    const monitor = yield* TestSession.connectTo(cluster, { transport: "unix" })
    const base = yield* sessionInfo(session, conninfo(cluster, "tcp", extra(cluster)))
    const info = { ...base, options: { ...base.options, sslMaterial: material(cluster) } }
    const pending = yield* sleepingQuery(session, monitor)
    const outcome = yield* runCancel(info)
    return { ...outcome, pending, session, monitor, cluster }
  }).pipe(Effect.provide(NodeTransport.layer))

const read = (path: string): string => Fs.readFileSync(path, "utf8")

layer(EmbeddedPostgres.layer({ version: 18, hba: "cert" }), { excludeTestServices: true, timeout: "60 seconds" })(
  "in-memory TLS material",
  (it) => {
    it.effect("verify-full with an in-memory CA cancels (the sslrootcert file is not needed)", () =>
      Effect.gen(function*() {
        const result = yield* cancelWithMaterial(
          () => ({ sslmode: "verify-full", host: "localhost", sslrootcert: "/nonexistent/root.crt" }),
          (c) => ({ ca: read(c.caCertPath) })
        )
        assert.isTrue(result.ok, result.error)
        assert.include(result.statuses, "SSL_STARTUP")
        yield* assertCancelled(result.pending)
      }))

    it.effect("a wrong in-memory CA takes precedence over a right sslrootcert and fails before the key is sent", () =>
      Effect.gen(function*() {
        const result = yield* cancelWithMaterial(
          (c) => ({ sslmode: "verify-full", host: "localhost", sslrootcert: c.caCertPath }),
          (c) => ({ ca: Fs.readFileSync(c.wrongCaCertPath) })
        )
        assert.isFalse(result.ok)
        assert.strictEqual(result.errorTag, "CancelFailed")
        assert.match(result.error ?? "", /failed: SSL error: certificate verify failed$/)
        yield* assertStillSleeping(result.monitor, result.session)
      }))

    it.effect("sslmode=require with an in-memory CA verifies the chain, as libpq does when root.crt exists", () =>
      Effect.gen(function*() {
        const wrong = yield* cancelWithMaterial(
          () => ({ sslmode: "require" }),
          (c) => ({ ca: read(c.wrongCaCertPath) })
        )
        assert.isFalse(wrong.ok)
        assert.match(wrong.error ?? "", /failed: SSL error: certificate verify failed$/)
        yield* assertStillSleeping(wrong.monitor, wrong.session)
        const right = yield* cancelWithMaterial(() => ({ sslmode: "require" }), (c) => ({ ca: [read(c.caCertPath)] }))
        assert.isTrue(right.ok, right.error)
        yield* assertCancelled(right.pending)
      }))

    it.effect("two options with different in-memory CAs never share a TLS context", () =>
      Effect.gen(function*() {
        // the same conninfo, so only the material differs; right first, then wrong, then right again
        const extra = () => ({ sslmode: "verify-ca" })
        const first = yield* cancelWithMaterial(extra, (c) => ({ ca: read(c.caCertPath) }))
        assert.isTrue(first.ok, first.error)
        yield* assertCancelled(first.pending)
        const second = yield* cancelWithMaterial(extra, (c) => ({ ca: read(c.wrongCaCertPath) }))
        assert.isFalse(second.ok)
        yield* assertStillSleeping(second.monitor, second.session)
        const third = yield* cancelWithMaterial(extra, (c) => ({ ca: read(c.caCertPath) }))
        assert.isTrue(third.ok, third.error)
        yield* assertCancelled(third.pending)
      }))

    it.effect("a DER-encoded in-memory CA is accepted", () =>
      Effect.gen(function*() {
        const result = yield* cancelWithMaterial(
          () => ({ sslmode: "verify-full", host: "localhost" }),
          (c) => ({ ca: new Uint8Array(new Crypto.X509Certificate(read(c.caCertPath)).raw) })
        )
        assert.isTrue(result.ok, result.error)
        yield* assertCancelled(result.pending)
      }))

    it.effect("an in-memory CA that is not a certificate is a typed failure naming the field, not its content", () =>
      Effect.gen(function*() {
        const garbage = "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"
        const result = yield* cancelWithMaterial(() => ({ sslmode: "verify-full" }), () => ({ ca: garbage }))
        assert.isFalse(result.ok)
        assert.strictEqual(result.errorTag, "CancelFailed")
        assert.include(result.error ?? "", "could not read root certificate (sslMaterial.ca): ")
        assert.notInclude(result.error ?? "", "bm90IGEgY2VydGlmaWNhdGU")
        yield* assertStillSleeping(result.monitor, result.session)
        const empty = yield* cancelWithMaterial(() => ({ sslmode: "verify-full" }), () => ({ ca: "no PEM here" }))
        assert.isFalse(empty.ok)
        assert.include(empty.error ?? "", "could not read root certificate (sslMaterial.ca): ")
        yield* assertStillSleeping(empty.monitor, empty.session)
      }))

    it.effect("material of the wrong type (an untyped caller) is a typed failure, not a crash", () =>
      Effect.gen(function*() {
        const result = yield* cancelWithMaterial(
          () => ({ sslmode: "require" }),
          () => ({ ca: 42 as unknown as string })
        )
        assert.isFalse(result.ok)
        assert.strictEqual(result.errorTag, "CancelFailed")
        assert.include(result.error ?? "", "invalid TLS material")
        yield* assertStillSleeping(result.monitor, result.session)
      }))

    it.effect("an in-memory CRL that revokes the server certificate fails the handshake; an empty one passes", () =>
      Effect.gen(function*() {
        const revoked = yield* cancelWithMaterial(() => ({ sslmode: "verify-ca" }), (c) => ({
          ca: read(c.caCertPath),
          crl: Fs.readFileSync(EmbeddedPostgres.fixturePath("server-revoked.crl"))
        }))
        assert.isFalse(revoked.ok)
        assert.match(revoked.error ?? "", onDeno ? DENO_CRL_REFUSED : /failed: SSL error: certificate verify failed$/)
        yield* assertStillSleeping(revoked.monitor, revoked.session)
        // the in-memory CRL takes precedence over the sslcrl file
        const clean = yield* cancelWithMaterial(
          () => ({ sslmode: "verify-ca", sslcrl: EmbeddedPostgres.fixturePath("server-revoked.crl") }),
          (c) => ({ ca: read(c.caCertPath), crl: [read(EmbeddedPostgres.fixturePath("empty.crl"))] })
        )
        if (onDeno) {
          // any revocation list is refused there, before the key is sent
          assert.match(clean.error ?? "", /list \(sslMaterial\.crl\): Deno's node:tls does not check revocation lists$/)
          return yield* assertStillSleeping(clean.monitor, clean.session)
        }
        assert.isTrue(clean.ok, clean.error)
        yield* assertCancelled(clean.pending)
      }))

    it.effect("client certificate and key in memory, over verify-full", () =>
      Effect.gen(function*() {
        const result = yield* cancelWithMaterial(
          () => ({ sslmode: "verify-full", host: "localhost", sslcert: "/nonexistent/client.crt" }),
          (c) => ({
            ca: read(c.caCertPath),
            cert: Fs.readFileSync(c.clientCertPath),
            key: Redacted.make(Fs.readFileSync(c.clientKeyPath))
          })
        )
        assert.isTrue(result.ok, result.error)
        yield* assertCancelled(result.pending)
      }))

    it.effect("an encrypted in-memory key with its passphrase; a wrong passphrase fails naming the field only", () =>
      Effect.gen(function*() {
        const material = (c: EmbeddedPostgres.Cluster, passphrase: string): ConnectionOptions.SslMaterial => ({
          ca: read(c.caCertPath),
          cert: read(c.clientCertPath),
          key: Redacted.make(read(c.clientKeyEncryptedPath)),
          passphrase: Redacted.make(passphrase)
        })
        const cluster = yield* EmbeddedPostgres.EmbeddedPostgres
        const good = yield* cancelWithMaterial(
          () => ({ sslmode: "verify-ca" }),
          (c) => material(c, c.clientKeyPassphrase)
        )
        assert.isTrue(good.ok, good.error)
        yield* assertCancelled(good.pending)
        const bad = yield* cancelWithMaterial(() => ({ sslmode: "verify-ca" }), (c) => material(c, "wrong-passphrase"))
        assert.isFalse(bad.ok)
        assert.strictEqual(bad.errorTag, "CancelFailed")
        assert.include(bad.error ?? "", "could not load private key (sslMaterial.key): ")
        const keyBody = read(cluster.clientKeyEncryptedPath).split("\n")[1]!
        assert.notInclude(bad.error ?? "", keyBody)
        assert.notInclude(bad.error ?? "", "wrong-passphrase")
        yield* assertStillSleeping(bad.monitor, bad.session)
      }))

    it.effect("an in-memory certificate without a key falls back to the sslkey file, with libpq's text", () =>
      Effect.gen(function*() {
        const result = yield* cancelWithMaterial(
          () => ({ sslmode: "require", sslkey: "/nonexistent/client.key" }),
          (c) => ({ cert: read(c.clientCertPath) })
        )
        assert.isFalse(result.ok)
        assert.include(result.error ?? "", `certificate present, but not private key file "/nonexistent/client.key"`)
        yield* assertStillSleeping(result.monitor, result.session)
      }))
  }
)
