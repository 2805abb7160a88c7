/**
 * A server that authenticates with client certificates: the cancel connection presents the certificate too (plain
 * and passphrase-encrypted keys), as libpq's TLS setup does for every connection.
 */
import { assert, layer } from "@effect/vitest"
import { EmbeddedPostgres } from "@pqcancel/test-utils"
import * as Effect from "effect/Effect"
import * as Fs from "node:fs"
import { assertCancelled, assertStillSleeping, cancelWith } from "./fixtures.ts"

layer(EmbeddedPostgres.layer({ version: 18, hba: "cert" }), { excludeTestServices: true, timeout: "60 seconds" })(
  "a client-certificate server",
  (it) => {
    const session = (c: EmbeddedPostgres.Cluster) => ({
      tls: "sslrequest" as const,
      clientCert: Fs.readFileSync(c.clientCertPath, "utf8"),
      clientKey: Fs.readFileSync(c.clientKeyPath, "utf8")
    })

    it.effect("cancels over verify-full TLS presenting the client certificate", () =>
      Effect.gen(function*() {
        const cluster = yield* EmbeddedPostgres.EmbeddedPostgres
        const result = yield* cancelWith((c) => ({
          sslmode: "verify-full",
          host: "localhost",
          sslrootcert: c.caCertPath,
          sslcert: c.clientCertPath,
          sslkey: c.clientKeyPath
        }), session(cluster))
        assert.isTrue(result.ok, result.error)
        assert.include(result.statuses, "SSL_STARTUP")
        yield* assertCancelled(result.pending)
      }))

    it.effect("uses an encrypted client key with sslpassword", () =>
      Effect.gen(function*() {
        const cluster = yield* EmbeddedPostgres.EmbeddedPostgres
        const result = yield* cancelWith((c) => ({
          sslmode: "verify-full",
          host: "localhost",
          sslrootcert: c.caCertPath,
          sslcert: c.clientCertPath,
          sslkey: c.clientKeyEncryptedPath,
          sslpassword: c.clientKeyPassphrase
        }), session(cluster))
        assert.isTrue(result.ok, result.error)
        yield* assertCancelled(result.pending)
      }))

    it.effect("a wrong sslpassword is a typed failure with libpq's text, and nothing is sent", () =>
      Effect.gen(function*() {
        const cluster = yield* EmbeddedPostgres.EmbeddedPostgres
        const result = yield* cancelWith((c) => ({
          sslmode: "require",
          sslcert: c.clientCertPath,
          sslkey: c.clientKeyEncryptedPath,
          sslpassword: "wrong"
        }), session(cluster))
        assert.isFalse(result.ok)
        assert.strictEqual(result.errorTag, "CancelFailed")
        assert.include(result.error ?? "", `could not load private key file "${cluster.clientKeyEncryptedPath}"`)
        // the key never reached the server: the query is still sleeping
        yield* assertStillSleeping(result.monitor, result.session)
      }))
  }
)
