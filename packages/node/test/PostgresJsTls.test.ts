/**
 * postgres.js's `ssl` option → the cancel's TLS options (docs/adapters/postgres-js.md: "postgres.js ssl and the
 * cancel"): never weaker than what the session verifies, and always valid libpq options.
 */
import { assert, describe, it } from "@effect/vitest"
import type { ConnectionOptions } from "@pqcancel/core"
import * as PostgresJsAdapter from "@pqcancel/node/PostgresJsAdapter"
import * as Inspectable from "effect/Inspectable"
import * as Redacted from "effect/Redacted"
import * as Result from "effect/Result"
import * as Tls from "node:tls"

const CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
const KEY = "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleQ==\n-----END PRIVATE KEY-----\n"

const map = (ssl: unknown, negotiation?: unknown): ConnectionOptions.ConnectionOptions => {
  const result = PostgresJsAdapter.cancelTlsOptions(ssl, negotiation)
  assert.isTrue(Result.isSuccess(result), Result.isFailure(result) ? result.failure.message : "")
  return Result.getOrThrow(result)
}

describe("postgres.js ssl → the cancel's TLS options", () => {
  const table: ReadonlyArray<readonly [unknown, unknown, string, string | undefined, string]> = [
    ["require", undefined, "require", undefined, "postgres"],
    ["allow", undefined, "require", undefined, "postgres"],
    ["prefer", undefined, "require", undefined, "postgres"],
    [true, undefined, "verify-full", "system", "postgres"],
    ["verify-full", undefined, "verify-full", "system", "postgres"],
    ["require", "direct", "require", undefined, "direct"],
    [{ ca: CA }, "direct", "verify-full", undefined, "direct"],
    [{ ca: CA, rejectUnauthorized: false }, undefined, "require", undefined, "postgres"],
    [{}, undefined, "verify-full", "system", "postgres"]
  ]
  for (const [ssl, negotiation, sslmode, sslrootcert, sslnegotiation] of table) {
    it(`ssl=${JSON.stringify(ssl)} sslnegotiation=${String(negotiation)} ⇒ sslmode=${sslmode}`, () => {
      const options = map(ssl, negotiation)
      assert.strictEqual(options.sslmode, sslmode)
      assert.strictEqual(options.sslrootcert, sslrootcert)
      assert.strictEqual(options.sslnegotiation, sslnegotiation)
    })
  }

  it("an object that verifies keeps its CA in memory; one that does not verify drops it", () => {
    assert.deepStrictEqual(map({ ca: CA }).sslMaterial, { ca: [CA], onlyGiven: true })
    assert.deepStrictEqual(map({ ca: CA, rejectUnauthorized: false }).sslMaterial, { onlyGiven: true })
  })

  it("TLS version bounds are carried over", () => {
    assert.strictEqual(map({ minVersion: "TLSv1.3" }).sslMinProtocolVersion, "TLSv1.3")
  })

  it("client certificate and key are carried over, the key and passphrase Redacted and never printed", () => {
    const material = map({ ca: [CA], cert: CA, key: KEY, passphrase: "pw" }).sslMaterial!
    assert.deepStrictEqual(material.ca, [CA])
    assert.deepStrictEqual(material.cert, [CA])
    assert.strictEqual(Redacted.value(material.key!), KEY)
    assert.strictEqual(Redacted.value(material.passphrase!), "pw")
    const printed = `${Inspectable.toStringUnknown(material.key)} ${JSON.stringify(material)}`
    assert.notInclude(printed, "c2VjcmV0LWtleQ")
    assert.notInclude(printed, "\"pw\"")
  })

  it("a key without a certificate is not carried over (libpq ignores sslkey without sslcert)", () => {
    assert.deepStrictEqual(map({ rejectUnauthorized: false, key: KEY }).sslMaterial, { onlyGiven: true })
  })

  it("a { pem, passphrase } key list takes the first PEM", () => {
    const material = map({ cert: CA, key: [{ pem: KEY, passphrase: "x" }] }).sslMaterial!
    assert.strictEqual(Redacted.value(material.key!), KEY)
  })

  it("a custom checkServerIdentity verifies the chain only, against Node's roots when there is no ca", () => {
    const options = map({ checkServerIdentity: () => undefined })
    assert.strictEqual(options.sslmode, "verify-ca")
    assert.isUndefined(options.sslrootcert)
    assert.deepStrictEqual(options.sslMaterial?.ca, Tls.rootCertificates)
  })
})

describe("the TLS material every adapter reads the same way (internal/driverTls sslMaterialOf)", () => {
  const failure = (ssl: unknown): string => {
    const result = PostgresJsAdapter.cancelTlsOptions(ssl)
    assert.isTrue(Result.isFailure(result))
    return Result.isFailure(result) ? result.failure.message : ""
  }

  it("pfx, several keys and material that is not PEM text or bytes are refused, not silently dropped", () => {
    assert.strictEqual(failure({ pfx: "P12" }), "ssl.pfx is not supported for the cancel: use ssl.ca/cert/key")
    assert.strictEqual(
      failure({ cert: CA, key: [KEY, KEY] }),
      "ssl.key must be one PEM string or buffer for the cancel"
    )
    assert.strictEqual(failure({ ca: 42 }), "ssl.ca and ssl.cert must be PEM strings or buffers")
    assert.strictEqual(failure({ crl: [{}] }), "ssl.crl must be PEM strings or buffers")
  })

  it("a passphrase given with the key ({ pem, passphrase }) wins over the object's, as in tls", () => {
    const material = map({ cert: CA, key: [{ pem: KEY, passphrase: "own" }], passphrase: "outer" }).sslMaterial!
    assert.strictEqual(Redacted.value(material.passphrase!), "own")
  })
})
