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
 *   its client certificate on a cancel connection too); `pfx` is not supported (no client certificate is then
 *   presented: a CancelRequest needs none).
 */
import type { ConnectionOptions } from "@pqcancel/core"
import * as Redacted from "effect/Redacted"
import * as Tls from "node:tls"

type Material = string | Uint8Array | ReadonlyArray<string | Uint8Array>

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

const isMaterial = (value: unknown): value is Material =>
  typeof value === "string" || value instanceof Uint8Array ||
  (Array.isArray(value) && value.every((v) => typeof v === "string" || v instanceof Uint8Array))

const keyMaterial = (value: unknown): string | Uint8Array | undefined => {
  if (typeof value === "string" || value instanceof Uint8Array) return value
  // tls accepts [{ pem, passphrase }] or a list of keys: take the first PEM
  if (Array.isArray(value) && value.length > 0) {
    const first: unknown = value[0]
    if (typeof first === "string" || first instanceof Uint8Array) return first
    if (typeof first === "object" && first !== null) return keyMaterial((first as { readonly pem?: unknown }).pem)
  }
  return undefined
}

const TLS_VERSIONS = ["TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"]

/** The cancel's TLS settings for a driver `ssl` object (see the module comment for the mapping) */
export const fromTlsObject = (ssl: Readonly<Record<string, unknown>>): DriverTls => {
  const verify = ssl.rejectUnauthorized !== false
  const chainOnly = verify && typeof ssl.checkServerIdentity === "function"
  // libpq has no verify-ca with the system roots: Node's default roots are then given in memory
  const ca = verify && isMaterial(ssl.ca) ? ssl.ca : chainOnly ? Tls.rootCertificates : undefined
  const cert = isMaterial(ssl.cert) ? ssl.cert : undefined
  const key = keyMaterial(ssl.key)
  const crl = isMaterial(ssl.crl) ? ssl.crl : undefined
  const passphrase = typeof ssl.passphrase === "string" ? ssl.passphrase : undefined
  const material: ConnectionOptions.SslMaterial = {
    ...(ca !== undefined ? { ca } : {}),
    ...(cert !== undefined && key !== undefined ? { cert, key: Redacted.make(key, { label: "ssl key" }) } : {}),
    ...(crl !== undefined ? { crl } : {}),
    ...(passphrase !== undefined ? { passphrase: Redacted.make(passphrase, { label: "ssl passphrase" }) } : {})
  }
  const version = (value: unknown): string | undefined =>
    typeof value === "string" && TLS_VERSIONS.includes(value) ? value : undefined
  return {
    sslmode: !verify ? "require" : chainOnly ? "verify-ca" : "verify-full",
    sslrootcert: verify && ca === undefined ? "system" : undefined,
    sslMaterial: Object.keys(material).length === 0 ? undefined : material,
    servername: typeof ssl.servername === "string" && ssl.servername !== "" ? ssl.servername : undefined,
    sslMinProtocolVersion: version(ssl.minVersion),
    sslMaxProtocolVersion: version(ssl.maxVersion)
  }
}

/**
 * The cancel's settings for an encrypted postgres.js session, from its `ssl` and `sslnegotiation` options (the
 * README's table): `"require"` / `"allow"` / `"prefer"` (postgres.js sets `rejectUnauthorized: false`) ⇒ `require`;
 * `true`, `"verify-full"` or any other string (postgres.js leaves Node's defaults: chain and host name against
 * Node's roots) ⇒ `verify-full` with `sslrootcert=system`; an options object ⇒ {@link fromTlsObject};
 * `sslnegotiation: "direct"` ⇒ direct. A plaintext session (no `ssl`, or `prefer` refused by the server) cancels
 * in plaintext.
 */
export const fromPostgresJsSsl = (
  ssl: unknown,
  sslnegotiation: unknown
): {
  readonly params: Readonly<Record<string, string>>
  readonly sslMaterial: ConnectionOptions.SslMaterial | undefined
} => {
  const direct = sslnegotiation === "direct" ? { sslnegotiation: "direct" } : {}
  if (ssl === "require" || ssl === "allow" || ssl === "prefer") {
    return { params: { sslmode: "require", ...direct }, sslMaterial: undefined }
  }
  if (typeof ssl === "object" && ssl !== null) {
    const mapped = fromTlsObject(ssl as Readonly<Record<string, unknown>>)
    return {
      params: {
        sslmode: mapped.sslmode,
        ...direct,
        ...(mapped.sslrootcert !== undefined ? { sslrootcert: mapped.sslrootcert } : {}),
        ...(mapped.sslMinProtocolVersion !== undefined
          ? { ssl_min_protocol_version: mapped.sslMinProtocolVersion }
          : {}),
        ...(mapped.sslMaxProtocolVersion !== undefined
          ? { ssl_max_protocol_version: mapped.sslMaxProtocolVersion }
          : {})
      },
      sslMaterial: mapped.sslMaterial
    }
  }
  return { params: { sslmode: "verify-full", sslrootcert: "system", ...direct }, sslMaterial: undefined }
}
