/**
 * The TLS material of a cancel's options (root certificates, client certificate and key, revocation lists, version
 * bounds), read once per options object with libpq's rules and texts, and libpq's verify-full host name check: shared
 * by NodeTransport and BunTransport.
 *
 * @internal
 */
import type { ConnectionOptions } from "@pqcancel/core"
import * as Redacted from "effect/Redacted"
import * as Crypto from "node:crypto"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import * as Tls from "node:tls"
import * as TlsErrors from "./tlsErrors.ts"

/** @internal */
export interface TlsFiles {
  /** a root certificate (file, in memory or system store) is configured: libpq then verifies the chain in every
   * sslmode */
  readonly verifyChain: boolean
  readonly error: string | undefined
  /** built once per options object: parsing certificates and keys is the costly part of a TLS setup */
  readonly secureContext: Tls.SecureContext | undefined
  /**
   * the material as read, for a transport that takes it raw (BunTransport); checked by building `secureContext`
   * (an `error` otherwise)
   */
  readonly material: {
    readonly ca: Buffer | Array<string> | undefined
    readonly cert: Buffer | string | undefined
    readonly key: Redacted.Redacted<Buffer> | undefined
    readonly passphrase: Redacted.Redacted<string> | undefined
    readonly crls: ReadonlyArray<Buffer>
  }
}

const readIfExists = (path: string): Buffer | undefined => {
  try {
    return Fs.readFileSync(path)
  } catch {
    return undefined
  }
}

const reasonOf = (error: unknown): string => error instanceof Error ? error.message : String(error)

const keyLoadError = (keyPath: string, error: unknown): string =>
  `could not load private key file "${keyPath}": ${reasonOf(error)}`

// libpq's default file locations under ~/.postgresql
const userFile = (name: string): string => Path.join(Os.homedir(), ".postgresql", name)

type Material = string | Uint8Array | ReadonlyArray<string | Uint8Array>

const materialList = (material: Material | undefined): ReadonlyArray<string | Uint8Array> | undefined =>
  material === undefined
    ? undefined
    : typeof material === "string" || material instanceof Uint8Array
    ? [material]
    : material.length === 0
    ? undefined
    : material

const asBuffer = (value: string | Uint8Array): Buffer =>
  typeof value === "string"
    ? Buffer.from(value, "utf8")
    : Buffer.from(value.buffer, value.byteOffset, value.byteLength)

const PEM_CERTIFICATE =
  /-----BEGIN (?:X509 |TRUSTED )?CERTIFICATE-----[\s\S]*?-----END (?:X509 |TRUSTED )?CERTIFICATE-----/g

/**
 * In-memory certificates as PEM for Node: PEM text is checked (every certificate in it must parse, and there must
 * be one), DER bytes are converted. The error names the field, never the material.
 */
const certificatesPem = (
  values: ReadonlyArray<string | Uint8Array>,
  what: string
): { readonly pem: Array<string>; readonly error: string | undefined } => {
  const pem: Array<string> = []
  for (const value of values) {
    const text = typeof value === "string" ? value : asBuffer(value).toString("latin1")
    try {
      if (text.includes("-----BEGIN")) {
        const blocks = text.match(PEM_CERTIFICATE) ?? []
        if (blocks.length === 0) throw new Error("no certificate found")
        for (const block of blocks) {
          new Crypto.X509Certificate(block)
          pem.push(block)
        }
      } else {
        pem.push(new Crypto.X509Certificate(asBuffer(value)).toString())
      }
    } catch (cause) {
      return { pem, error: `could not read ${what}: ${reasonOf(cause)}` }
    }
  }
  return { pem, error: undefined }
}

// Keyed by the options object (options are immutable): two options objects never share a context, so two different
// in-memory CAs (or files) never do either. A caller that cancels often should reuse its options object.
const tlsFilesCache = new WeakMap<ConnectionOptions.ConnectionOptions, TlsFiles>()

// Read the certificate files (or take the in-memory material) once per options object (as libpq reads them per
// connection, but cheaper)
export const tlsFiles = (options: ConnectionOptions.ConnectionOptions): TlsFiles => {
  const cached = tlsFilesCache.get(options)
  if (cached !== undefined) return cached
  let files: TlsFiles
  try {
    files = loadTlsFiles(options)
  } catch (cause) {
    // material of the wrong type from an untyped caller (e.g. a number as ca): a typed failure, not a crash
    files = {
      verifyChain: true,
      error: `invalid TLS material: ${reasonOf(cause)}`,
      secureContext: undefined,
      material: { ca: undefined, cert: undefined, key: undefined, passphrase: undefined, crls: [] }
    }
  }
  tlsFilesCache.set(options, files)
  return files
}

const loadTlsFiles = (options: ConnectionOptions.ConnectionOptions): TlsFiles => {
  const material = options.sslMaterial
  let error: string | undefined
  // libpq's default files, unless the material is all a driver session had
  const defaultFile = (name: string): string | undefined => material?.onlyGiven === true ? undefined : userFile(name)

  // root certificate(s): in memory, else the system store, else a file
  const memoryCa = materialList(material?.ca)
  let ca: Buffer | Array<string> | undefined
  const useSystemCa = memoryCa === undefined && options.sslrootcert === "system"
  if (memoryCa !== undefined) {
    const read = certificatesPem(memoryCa, "root certificate (sslMaterial.ca)")
    error = read.error
    ca = read.pem
  } else if (!useSystemCa) {
    const caPath = options.sslrootcert ?? defaultFile("root.crt")
    ca = caPath === undefined ? undefined : readIfExists(caPath)
    if (ca === undefined && (options.sslmode === "verify-ca" || options.sslmode === "verify-full")) {
      error = `root certificate file "${caPath}" does not exist\n` +
        "Either provide the file, use the system's trusted roots with sslrootcert=system, " +
        "or change sslmode to disable server certificate verification."
    }
  }

  // client certificate and key: each in memory, else its file
  const memoryCert = materialList(material?.cert)
  let cert: Buffer | string | undefined
  if (memoryCert !== undefined) {
    const read = certificatesPem(memoryCert, "certificate (sslMaterial.cert)")
    error ??= read.error
    // one chain for one key (leaf first): Node reads an array as one chain per key
    cert = read.pem.join("\n")
  } else {
    const certPath = options.sslcert ?? defaultFile("postgresql.crt")
    cert = certPath === undefined ? undefined : readIfExists(certPath)
  }
  const keyPath = options.sslkey ?? defaultFile("postgresql.key") ?? "(none)"
  const keyWhere = material?.key !== undefined ? "private key (sslMaterial.key)" : `private key file "${keyPath}"`
  const key: Buffer | undefined = cert === undefined
    ? undefined
    : material?.key !== undefined
    ? asBuffer(Redacted.value(material.key))
    : readIfExists(keyPath)
  if (cert !== undefined && key === undefined) error ??= `certificate present, but not private key file "${keyPath}"`
  const passphrase = material?.passphrase ?? options.sslpassword

  // revocation lists: in memory (else the sslcrl file), plus the sslcrldir files
  const crls: Array<Buffer> = []
  const memoryCrl = materialList(material?.crl)
  if (memoryCrl !== undefined) {
    for (const crl of memoryCrl) crls.push(asBuffer(crl))
  } else if (options.sslcrl !== undefined) {
    const crl = readIfExists(options.sslcrl)
    if (crl !== undefined) crls.push(crl)
  }
  if (options.sslcrldir !== undefined) {
    try {
      for (const entry of Fs.readdirSync(options.sslcrldir)) {
        const crl = readIfExists(Path.join(options.sslcrldir, entry))
        if (crl !== undefined) crls.push(crl)
      }
    } catch {
      // libpq ignores a missing CRL directory
    }
  }

  if (error === undefined && denoTls) error = denoTlsError(crls, memoryCrl, options, key, passphrase, keyWhere, keyPath)
  let secureContext: Tls.SecureContext | undefined
  if (error === undefined) {
    const clientIdentity = cert !== undefined && key !== undefined
      ? { cert, key, ...(passphrase !== undefined ? { passphrase: Redacted.value(passphrase) } : {}) }
      : {}
    try {
      secureContext = Tls.createSecureContext({
        ...(ca !== undefined ? { ca } : {}),
        ...clientIdentity,
        ...(crls.length > 0 ? { crl: crls } : {}),
        minVersion: options.sslMinProtocolVersion ?? "TLSv1.2",
        ...(options.sslMaxProtocolVersion !== undefined ? { maxVersion: options.sslMaxProtocolVersion } : {}),
        // the classical groups libpq's OpenSSL offers; Node's default also sends a hybrid ML-KEM key share, which
        // costs ~5-10% of a cancel's TLS time and protects nothing here (a cancel key dies with its backend)
        ecdhCurve: "X25519:prime256v1:secp384r1"
      })
    } catch (cause) {
      // name the part that failed (never its content): a revocation list, else the client key (e.g. an encrypted
      // key with a wrong or missing passphrase)
      error = crlError(crls, memoryCrl !== undefined ? "(sslMaterial.crl)" : `file "${options.sslcrl ?? ""}"`) ??
        (material?.key !== undefined ? `could not load ${keyWhere}: ${reasonOf(cause)}` : keyLoadError(keyPath, cause))
    }
  }
  return {
    verifyChain: ca !== undefined || useSystemCa,
    error,
    secureContext,
    material: {
      ca,
      cert: key !== undefined ? cert : undefined,
      key: key !== undefined && cert !== undefined ? Redacted.make(key) : undefined,
      passphrase,
      crls
    }
  }
}

// Deno's node:tls (2.9) accepts a `crl` and never checks it, and takes an encrypted key with a wrong passphrase
// without a word: a revocation list is refused (rather than a revoked server accepted) and the key decrypted here,
// so both fail as libpq does, before anything is sent
const denoTls = "Deno" in globalThis

const denoTlsError = (
  crls: ReadonlyArray<Buffer>,
  memoryCrl: ReadonlyArray<string | Uint8Array> | undefined,
  options: ConnectionOptions.ConnectionOptions,
  key: Buffer | undefined,
  passphrase: Redacted.Redacted<string> | undefined,
  keyWhere: string,
  keyPath: string
): string | undefined => {
  if (crls.length > 0) {
    const where = memoryCrl !== undefined ? "(sslMaterial.crl)" : `file "${options.sslcrl ?? options.sslcrldir ?? ""}"`
    return `could not load SSL certificate revocation list ${where}: Deno's node:tls does not check revocation lists`
  }
  if (key === undefined) return undefined
  try {
    Crypto.createPrivateKey({ key, ...(passphrase !== undefined ? { passphrase: Redacted.value(passphrase) } : {}) })
    return undefined
  } catch (cause) {
    return options.sslMaterial?.key !== undefined
      ? `could not load ${keyWhere}: ${reasonOf(cause)}`
      : keyLoadError(keyPath, cause)
  }
}

// only on the failure path: whether the revocation lists alone are what Node refuses
const crlError = (crls: ReadonlyArray<Buffer>, where: string): string | undefined => {
  if (crls.length === 0) return undefined
  try {
    Tls.createSecureContext({ crl: [...crls] })
    return undefined
  } catch (cause) {
    return `could not load SSL certificate revocation list ${where}: ${reasonOf(cause)}`
  }
}

// libpq's verify-full check and its message
export const checkHostName = (host: string, cert: Tls.PeerCertificate): Error | undefined => {
  if (Tls.checkServerIdentity(host, cert) === undefined) return undefined
  const names = (cert.subjectaltname ?? "")
    .split(", ")
    .filter((n) => n.startsWith("DNS:") || n.startsWith("IP Address:"))
    .map((n) => n.replace(/^DNS:|^IP Address:/, ""))
  const cn = cert.subject?.CN
  const first: string = names[0] ?? (typeof cn === "string" ? cn : "")
  const others = names.length - 1
  const message = others <= 0
    ? `server certificate for "${first}" does not match host name "${host}"`
    : `server certificate for "${first}" (and ${others} other name${
      others === 1 ? "" : "s"
    }) does not match host name "${host}"`
  return Object.assign(new Error(message), { code: TlsErrors.HOST_MISMATCH })
}
