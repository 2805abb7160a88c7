/**
 * The cancel's TLS settings derived from what a user gave a Node driver as its `ssl` option: a `tls.connect` options
 * object (`{ ca, cert, key, passphrase, crl, rejectUnauthorized, servername, checkServerIdentity, minVersion,
 * maxVersion }`), as node-postgres and postgres.js both take it. Never weaker than the session:
 *
 * - `rejectUnauthorized: false` — the session does not verify the server: `require` (encrypted, unverified). A
 *   `ca` is then dropped, so the cancel does not verify what the session did not (libpq would verify with a root
 *   certificate present, and a cancel that fails where the session connected only forces a retirement).
 * - otherwise (Node verifies by default) — `verify-full` with the driver's `ca` (Node's default roots, i.e.
 *   `sslrootcert=system`, when there is none), and the host name the session checks (`servername`, else the host).
 *   A custom `checkServerIdentity` replaces Node's host name check; it cannot be carried over (a function), so the
 *   cancel verifies the chain only (`verify-ca`).
 * - the client certificate, key and passphrase, and CRLs, are carried over as in-memory material (libpq presents
 *   its client certificate on a cancel connection too), read by {@link sslMaterialOf}, which all three adapters
 *   share: `pfx`, several keys and anything but PEM text or bytes are refused (`InvalidOption`). What the session
 *   did not have is not presented either: the material is marked `onlyGiven`, so libpq's default files
 *   (`~/.postgresql/root.crt`, `postgresql.crt`, `postgresql.key`) are never read for the cancel.
 * - `minVersion` / `maxVersion` become `ssl_min_protocol_version` / `ssl_max_protocol_version`.
 *
 * {@link mapDriverTls} is that one mapping, used by node-postgres, postgres.js and `@effect/sql-pg` alike.
 */
import type { ConnectionOptions } from "@pqcancel/core"
import { InvalidOption } from "@pqcancel/core/CancelError"
import * as Redacted from "effect/Redacted"
import * as Result from "effect/Result"
import * as Tls from "node:tls"

/** What the cancel takes from a driver's TLS options object */
export interface DriverTls {
  readonly sslmode: "require" | "verify-ca" | "verify-full"
  /** `system` when the driver verifies against Node's default roots */
  readonly sslrootcert: "system" | undefined
  readonly sslMaterial: ConnectionOptions.SslMaterial | undefined
  /** the name the session verifies and sends as SNI, when the object sets one (`servername`) */
  readonly servername: string | undefined
  readonly sslMinProtocolVersion: string | undefined
  readonly sslMaxProtocolVersion: string | undefined
}

/** The libpq file parameters given for the cancel: each one set takes precedence over its in-memory value */
export interface FileParams {
  readonly sslrootcert?: string | undefined
  readonly sslcert?: string | undefined
  readonly sslkey?: string | undefined
  readonly sslcrl?: string | undefined
}

type PemList = ReadonlyArray<string | Uint8Array>

const isPem = (value: unknown): value is string | Uint8Array => typeof value === "string" || value instanceof Uint8Array

// a PEM, or a list of them; `false` when it is anything else
const pemList = (value: unknown): PemList | undefined | false => {
  if (value === undefined || value === null) return undefined
  const list: ReadonlyArray<unknown> = Array.isArray(value) ? value : [value]
  return list.every(isPem) ? list as PemList : false
}

// one private key: a PEM, or a one-element list of a PEM or of tls's `{ pem, passphrase }`
const oneKey = (
  value: unknown
): { readonly pem: string | Uint8Array; readonly passphrase?: unknown } | undefined | false => {
  if (value === undefined || value === null) return undefined
  if (isPem(value)) return { pem: value }
  if (!Array.isArray(value) || value.length !== 1) return false
  const only: unknown = value[0]
  if (isPem(only)) return { pem: only }
  if (typeof only === "object" && only !== null && isPem((only as { readonly pem?: unknown }).pem)) {
    return only as { readonly pem: string | Uint8Array; readonly passphrase?: unknown }
  }
  return false
}

const invalid = (message: string) => Result.fail(new InvalidOption({ message }))

/**
 * The in-memory TLS material of a driver's `ssl` object (what node-postgres, postgres.js and sql-pg hand to
 * `tls.connect`), for the cancel's handshake: `ca`, `cert` and `crl` as PEM lists, the one private `key` and its
 * `passphrase` as `Redacted`. A file given for the cancel in `files` (`sslrootcert`, `sslcert`, `sslkey`, `sslcrl`)
 * takes precedence over the in-memory value. What pqcancel cannot use the same way (`pfx`, KeyObjects, several
 * keys, anything but PEM text or bytes) is refused with an `InvalidOption` rather than silently dropped. Which
 * sslmode the cancel uses is each adapter's own (the drivers' meanings differ).
 */
export const sslMaterialOf = (
  tls: Readonly<Record<string, unknown>>,
  files: FileParams = {}
): Result.Result<ConnectionOptions.SslMaterial | undefined, InvalidOption> => {
  if (tls.pfx !== undefined && tls.pfx !== null) {
    return invalid("ssl.pfx is not supported for the cancel: use ssl.ca/cert/key")
  }
  const ca = files.sslrootcert === undefined ? pemList(tls.ca) : undefined
  const cert = files.sslcert === undefined ? pemList(tls.cert) : undefined
  if (ca === false || cert === false) return invalid("ssl.ca and ssl.cert must be PEM strings or buffers")
  const crl = files.sslcrl === undefined ? pemList(tls.crl) : undefined
  if (crl === false) return invalid("ssl.crl must be PEM strings or buffers")
  const key = files.sslkey === undefined ? oneKey(tls.key) : undefined
  if (key === false) return invalid("ssl.key must be one PEM string or buffer for the cancel")
  // a passphrase given with the key (`{ pem, passphrase }`) wins over the object's, as in tls
  const passphrase = typeof key?.passphrase === "string"
    ? key.passphrase
    : typeof tls.passphrase === "string"
    ? tls.passphrase
    : undefined
  if (ca === undefined && cert === undefined && key === undefined && crl === undefined) {
    return Result.succeed(undefined)
  }
  return Result.succeed({
    ...(ca !== undefined ? { ca } : {}),
    ...(cert !== undefined ? { cert } : {}),
    ...(key !== undefined ? { key: Redacted.make(key.pem, { label: "ssl key" }) } : {}),
    ...(crl !== undefined ? { crl } : {}),
    ...(passphrase !== undefined ? { passphrase: Redacted.make(passphrase, { label: "ssl passphrase" }) } : {})
  })
}

const SSL_RANK: Readonly<Record<string, number>> = {
  disable: 0,
  allow: 1,
  prefer: 2,
  require: 3,
  "verify-ca": 4,
  "verify-full": 5
}

/**
 * Whether the `sslmode` asked for the cancel (in an adapter's `params`) is weaker than the one derived from the
 * session, or is no sslmode at all: the adapters refuse such a cancel (never weaker than the session)
 */
export const isWeakerSslmode = (requested: string, session: ConnectionOptions.SslMode): boolean =>
  SSL_RANK[requested] === undefined || SSL_RANK[requested] < SSL_RANK[session]!

const TLS_VERSIONS = ["TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"]

/**
 * THE mapping of a Node driver's TLS settings to the cancel's libpq options, for node-postgres, postgres.js and
 * `@effect/sql-pg` alike: `true` (Node's defaults) or a `tls.connect` options object (see the module comment).
 * `params` are the libpq keywords (`sslmode`, `sslrootcert`, `ssl_min_protocol_version`,
 * `ssl_max_protocol_version`); `sslMaterial` is always set, with `onlyGiven` (no libpq default file is read for what
 * the session did not have); `files` given for the cancel take precedence over the in-memory values.
 */
export const mapDriverTls = (
  ssl: true | Readonly<Record<string, unknown>>,
  files: FileParams = {}
): Result.Result<{
  readonly sslmode: "require" | "verify-ca" | "verify-full"
  readonly params: Readonly<Record<string, string>>
  readonly sslMaterial: ConnectionOptions.SslMaterial
  readonly servername: string | undefined
}, InvalidOption> => {
  if (ssl === true) {
    return Result.succeed({
      sslmode: "verify-full",
      params: { sslmode: "verify-full", sslrootcert: "system" },
      sslMaterial: { onlyGiven: true },
      servername: undefined
    })
  }
  const mapped = fromTlsObject(ssl, files)
  if (Result.isFailure(mapped)) return Result.fail(mapped.failure)
  const m = mapped.success
  return Result.succeed({
    sslmode: m.sslmode,
    params: {
      sslmode: m.sslmode,
      ...(m.sslrootcert !== undefined ? { sslrootcert: m.sslrootcert } : {}),
      ...(m.sslMinProtocolVersion !== undefined ? { ssl_min_protocol_version: m.sslMinProtocolVersion } : {}),
      ...(m.sslMaxProtocolVersion !== undefined ? { ssl_max_protocol_version: m.sslMaxProtocolVersion } : {})
    },
    sslMaterial: { ...m.sslMaterial, onlyGiven: true },
    servername: m.servername
  })
}

/** The cancel's TLS settings for a driver's `ssl` object (see the module comment for the mapping) */
export const fromTlsObject = (
  ssl: Readonly<Record<string, unknown>>,
  files: FileParams = {}
): Result.Result<DriverTls, InvalidOption> => {
  const verify = ssl.rejectUnauthorized !== false
  const chainOnly = verify && typeof ssl.checkServerIdentity === "function"
  const shared = sslMaterialOf(ssl, files)
  if (Result.isFailure(shared)) return Result.fail(shared.failure)
  const { ca: givenCa, cert, crl, key, passphrase } = shared.success ?? {}
  // a session that does not verify: neither does its cancel (its ca is dropped); libpq has no verify-ca with the
  // system roots: Node's default roots are then given in memory (unless a root certificate file is given)
  const ca = !verify
    ? undefined
    : givenCa ?? (chainOnly && files.sslrootcert === undefined ? Tls.rootCertificates : undefined)
  const material: ConnectionOptions.SslMaterial = {
    ...(ca !== undefined ? { ca } : {}),
    // libpq ignores a key without a certificate (and a certificate without its key cannot be presented)
    ...(cert !== undefined && key !== undefined ? { cert, key } : {}),
    ...(crl !== undefined ? { crl } : {}),
    ...(passphrase !== undefined ? { passphrase } : {})
  }
  const version = (value: unknown): string | undefined =>
    typeof value === "string" && TLS_VERSIONS.includes(value) ? value : undefined
  return Result.succeed({
    sslmode: !verify ? "require" : chainOnly ? "verify-ca" : "verify-full",
    sslrootcert: verify && ca === undefined && files.sslrootcert === undefined ? "system" : undefined,
    sslMaterial: Object.keys(material).length === 0 ? undefined : material,
    servername: typeof ssl.servername === "string" && ssl.servername !== "" ? ssl.servername : undefined,
    sslMinProtocolVersion: version(ssl.minVersion),
    sslMaxProtocolVersion: version(ssl.maxVersion)
  })
}

/**
 * The cancel's settings for an encrypted postgres.js session, from its `ssl` and `sslnegotiation` options (the
 * table in docs/adapters/postgres-js.md): `"require"` / `"allow"` / `"prefer"` (postgres.js sets
 * `rejectUnauthorized: false`) ⇒ `require`;
 * `true`, `"verify-full"` or any other string (postgres.js leaves Node's defaults: chain and host name against
 * Node's roots) ⇒ `verify-full` with `sslrootcert=system`; an options object ⇒ {@link fromTlsObject};
 * `sslnegotiation: "direct"` ⇒ direct. A plaintext session (no `ssl`, or `prefer` refused by the server) cancels
 * in plaintext.
 */
export const fromPostgresJsSsl = (
  ssl: unknown,
  sslnegotiation: unknown
): Result.Result<{
  readonly params: Readonly<Record<string, string>>
  readonly sslMaterial: ConnectionOptions.SslMaterial | undefined
}, InvalidOption> => {
  const direct = sslnegotiation === "direct" ? { sslnegotiation: "direct" } : {}
  if (ssl === "require" || ssl === "allow" || ssl === "prefer") {
    return Result.succeed({ params: { sslmode: "require", ...direct }, sslMaterial: { onlyGiven: true } })
  }
  const mapped = mapDriverTls(typeof ssl === "object" && ssl !== null ? ssl as Readonly<Record<string, unknown>> : true)
  return Result.map(mapped, (m) => ({ params: { ...m.params, ...direct }, sslMaterial: m.sslMaterial }))
}
