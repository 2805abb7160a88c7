/**
 * The Node.js {@link Transport} for pqcancel: TCP (IPv4/IPv6) to the exact remote address, unix sockets, TLS by
 * SSLRequest upgrade on the same socket or by direct TLS with ALPN `postgresql`, server verification per sslmode
 * (verify-ca, verify-full with libpq's host name check, `sslrootcert` file or `system`), client certificates with
 * encrypted keys, SNI, CRLs, TLS version bounds, keepalives and TCP_NODELAY. Every socket belongs to the Scope it
 * was opened in.
 *
 * @example
 * ```ts
 * import * as Effect from "effect/Effect"
 * import { CancelConnection } from "@pqcancel/core"
 * import { NodeTransport } from "@pqcancel/node"
 *
 * declare const session: CancelConnection.SessionInfo
 * const program = CancelConnection.cancel(session).pipe(Effect.provide(NodeTransport.layer))
 * ```
 *
 * @since 0.1.0
 */
import type { CancelMachine, ConnectionOptions } from "@pqcancel/core"
import { Transport } from "@pqcancel/core/Transport"
import type * as TransportNs from "@pqcancel/core/Transport"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Queue from "effect/Queue"
import * as Redacted from "effect/Redacted"
import type * as Scope from "effect/Scope"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Os from "node:os"
import * as Path from "node:path"
import * as Tls from "node:tls"

// strerror texts for the codes Node reports, so messages read like libpq's
const strerror: Record<string, string> = {
  ECONNREFUSED: "Connection refused",
  ECONNRESET: "Connection reset by peer",
  EPIPE: "Broken pipe",
  ETIMEDOUT: "Connection timed out",
  EHOSTUNREACH: "No route to host",
  ENETUNREACH: "Network is unreachable",
  ENOENT: "No such file or directory",
  EACCES: "Permission denied",
  EADDRNOTAVAIL: "Cannot assign requested address",
  EAFNOSUPPORT: "Address family not supported by protocol",
  ENOTSOCK: "Socket operation on non-socket",
  ECONNABORTED: "Software caused connection abort"
}

/**
 * The C library's text for a Node error (what libpq's messages embed), e.g. `Connection refused`.
 *
 * @category utils
 * @since 0.1.0
 */
export const errorText = (error: NodeJS.ErrnoException): string =>
  (error.code !== undefined ? strerror[error.code] : undefined) ?? error.message

interface TlsFiles {
  /** a root certificate (file or system store) is configured: libpq then verifies the chain in every sslmode */
  readonly verifyChain: boolean
  readonly error: string | undefined
  /** built once per options object: parsing certificates and keys is the costly part of a TLS setup */
  readonly secureContext: Tls.SecureContext | undefined
}

const readIfExists = (path: string): Buffer | undefined => {
  try {
    return Fs.readFileSync(path)
  } catch {
    return undefined
  }
}

const keyLoadError = (keyPath: string, error: unknown): string =>
  `could not load private key file "${keyPath}": ${error instanceof Error ? error.message : String(error)}`

// libpq's default file locations under ~/.postgresql
const userFile = (name: string): string => Path.join(Os.homedir(), ".postgresql", name)

const tlsFilesCache = new WeakMap<ConnectionOptions.ConnectionOptions, TlsFiles>()

// Read the certificate files once per options object (as libpq reads them per connection, but cheaper)
const tlsFiles = (options: ConnectionOptions.ConnectionOptions): TlsFiles => {
  const cached = tlsFilesCache.get(options)
  if (cached !== undefined) return cached
  let error: string | undefined
  const useSystemCa = options.sslrootcert === "system"
  const caPath = useSystemCa ? undefined : (options.sslrootcert ?? userFile("root.crt"))
  const ca = caPath === undefined ? undefined : readIfExists(caPath)
  if (
    ca === undefined && !useSystemCa && (options.sslmode === "verify-ca" || options.sslmode === "verify-full")
  ) {
    error = `root certificate file "${caPath}" does not exist\n` +
      "Either provide the file, use the system's trusted roots with sslrootcert=system, " +
      "or change sslmode to disable server certificate verification."
  }
  const certPath = options.sslcert ?? userFile("postgresql.crt")
  const keyPath = options.sslkey ?? userFile("postgresql.key")
  const cert = readIfExists(certPath)
  const key = cert === undefined ? undefined : readIfExists(keyPath)
  if (cert !== undefined && key === undefined && error === undefined) {
    error = `certificate present, but not private key file "${keyPath}"`
  }
  const crls: Array<Buffer> = []
  if (options.sslcrl !== undefined) {
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
  let secureContext: Tls.SecureContext | undefined
  if (error === undefined) {
    try {
      secureContext = Tls.createSecureContext({
        ...(ca !== undefined ? { ca } : {}),
        ...(cert !== undefined && key !== undefined
          ? {
            cert,
            key,
            ...(options.sslpassword !== undefined ? { passphrase: Redacted.value(options.sslpassword) } : {})
          }
          : {}),
        ...(crls.length > 0 ? { crl: crls } : {}),
        minVersion: options.sslMinProtocolVersion ?? "TLSv1.2",
        ...(options.sslMaxProtocolVersion !== undefined ? { maxVersion: options.sslMaxProtocolVersion } : {}),
        // the classical groups libpq's OpenSSL offers; Node's default also sends a hybrid ML-KEM key share, which
        // costs ~5-10% of a cancel's TLS time and protects nothing here (a cancel key dies with its backend)
        ecdhCurve: "X25519:prime256v1:secp384r1"
      })
    } catch (cause) {
      // e.g. an encrypted client key with a wrong or missing sslpassword
      error = keyLoadError(keyPath, cause)
    }
  }
  const files: TlsFiles = { verifyChain: ca !== undefined || useSystemCa, error, secureContext }
  tlsFilesCache.set(options, files)
  return files
}

// libpq's verify-full check and its message
const checkHostName = (host: string, cert: Tls.PeerCertificate): Error | undefined => {
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
  return Object.assign(new Error(message), { code: HOST_MISMATCH })
}

const HOST_MISMATCH = "PQCANCEL_HOST_MISMATCH"

const tlsErrorText = (error: NodeJS.ErrnoException): string => {
  const code = error.code ?? ""
  if (
    code === "UNABLE_TO_VERIFY_LEAF_SIGNATURE" || code === "SELF_SIGNED_CERT_IN_CHAIN" ||
    code === "DEPTH_ZERO_SELF_SIGNED_CERT" || code === "UNABLE_TO_GET_ISSUER_CERT_LOCALLY" ||
    code === "CERT_HAS_EXPIRED" || code === "CERT_REVOKED" || code === "CERT_UNTRUSTED" ||
    code === "UNABLE_TO_GET_ISSUER_CERT"
  ) {
    return "SSL error: certificate verify failed"
  }
  // libpq reports a host name mismatch without the "SSL error: " prefix
  if (code === HOST_MISMATCH || code === "ERR_TLS_CERT_ALTNAME_INVALID") return error.message
  if (code === "ECONNRESET" || code === "EPIPE") return "SSL SYSCALL error: EOF detected"
  // OpenSSL's reason, e.g. "wrong version number", as libpq prints it
  const reason = (error as { readonly reason?: unknown }).reason
  return `SSL error: ${typeof reason === "string" && reason !== "" ? reason : error.message.trim()}`
}

const tlsOptions = (
  socket: Net.Socket,
  request: CancelMachine.TlsRequest,
  files: TlsFiles
): Tls.ConnectionOptions => {
  const verifyChain = request.sslmode === "verify-ca" || request.sslmode === "verify-full" || files.verifyChain
  const verifyHost = request.sslmode === "verify-full" ? request.verifyHost : undefined
  return {
    socket,
    ALPNProtocols: ["postgresql"],
    ...(request.servername !== undefined ? { servername: request.servername } : {}),
    ...(files.secureContext !== undefined ? { secureContext: files.secureContext } : {}),
    rejectUnauthorized: verifyChain,
    checkServerIdentity: (_name, cert) => verifyHost === undefined ? undefined : checkHostName(verifyHost, cert)
  }
}

const fdOf = (socket: Net.Socket): number => {
  const handle = (socket as unknown as { readonly _handle?: { readonly fd?: number } })._handle
  return typeof handle?.fd === "number" && handle.fd >= 0 ? handle.fd : -1
}

const applyKeepalives = (socket: Net.Socket, options: ConnectionOptions.ConnectionOptions): void => {
  socket.setNoDelay(true)
  if (options.keepalives) {
    // Node sets TCP_KEEPIDLE only; interval and count keep the OS defaults
    socket.setKeepAlive(true, (options.keepalivesIdle ?? 0) * 1000)
  }
}

const connect = (request: TransportNs.ConnectRequest): Effect.Effect<TransportNs.Connection, never, Scope.Scope> =>
  Effect.map(Queue.unbounded<TransportNs.TransportEvent>(), (events) => {
    const emit = (event: TransportNs.TransportEvent) => {
      Queue.offerUnsafe(events, event)
    }
    const raw = new Net.Socket()
    let active: Net.Socket = raw
    let connected = false
    let closed = false

    const onData = (bytes: Buffer) => emit({ _tag: "Data", bytes })
    const onEnd = () => emit({ _tag: "Eof" })
    const onError = (error: NodeJS.ErrnoException) => {
      emit(
        connected
          ? { _tag: "IoError", code: error.code, message: errorText(error) }
          : {
            _tag: "ConnectFailed",
            message: errorText(error),
            errno: typeof error.errno === "number" ? Math.abs(error.errno) : undefined
          }
      )
    }
    raw.on("data", onData)
    raw.on("end", onEnd)
    raw.on("error", onError)
    raw.once("connect", () => {
      connected = true
      if (request.address._tag === "Unix" && request.options.requirepeer !== undefined) {
        // Node cannot read the peer's credentials (SO_PEERCRED): refuse, as libpq does where it cannot check
        emit({ _tag: "PeerRejected", message: "requirepeer parameter is not supported on this platform" })
        return
      }
      if (request.address._tag === "Tcp") applyKeepalives(raw, request.options)
      emit({ _tag: "Connected" })
    })
    if (request.address._tag === "Unix") {
      raw.connect({ path: request.address.path })
    } else {
      raw.connect({ host: request.address.address, port: request.address.port, family: request.address.family })
    }

    const startTls = (tlsRequest: CancelMachine.TlsRequest) =>
      Effect.sync(() => {
        if (closed) return
        const files = tlsFiles(request.options)
        if (files.error !== undefined) {
          emit({ _tag: "TlsFailed", message: files.error })
          return
        }
        raw.off("data", onData)
        raw.off("end", onEnd)
        raw.off("error", onError)
        raw.on("error", () => {})
        let secured = false
        const secure = Tls.connect(tlsOptions(raw, tlsRequest, files))
        active = secure
        secure.once("secureConnect", () => {
          secured = true
          const alpn = secure.alpnProtocol
          emit({ _tag: "TlsEstablished", alpn: typeof alpn === "string" ? alpn : false })
        })
        secure.on("data", onData)
        // the server hung up during the handshake: libpq's "SSL SYSCALL error: EOF detected"
        secure.on("end", () =>
          secured ? onEnd() : emit({ _tag: "TlsFailed", message: "SSL SYSCALL error: EOF detected" }))
        secure.on("error", (error: NodeJS.ErrnoException) => {
          emit(
            secured
              ? { _tag: "IoError", code: error.code, message: errorText(error) }
              : { _tag: "TlsFailed", message: tlsErrorText(error) }
          )
        })
      })

    const close = Effect.sync(() => {
      if (closed) return
      closed = true
      active.destroy()
      raw.destroy()
      Queue.shutdownUnsafe(events)
    })

    const connection: TransportNs.Connection = {
      fd: () => closed ? -1 : fdOf(raw),
      events,
      write: (bytes) =>
        Effect.sync(() => {
          if (!closed) active.write(bytes)
        }),
      startTls,
      startGss: Effect.sync(() => emit({ _tag: "GssFailed", message: "GSSAPI encryption is not supported" })),
      close
    }
    return connection
  }).pipe(Effect.flatMap((connection) => Effect.as(Effect.addFinalizer(() => connection.close), connection)))

/**
 * The Node transport.
 *
 * @category constructors
 * @since 0.1.0
 */
export const make: Transport["Service"] = Transport.of({
  connect,
  // no GSS provider in Node: gssencmode=prefer falls back, require fails with libpq's text
  gssCredentialsAvailable: () => Effect.succeed(false)
})

/**
 * The Node transport as a Layer.
 *
 * @category layers
 * @since 0.1.0
 */
export const layer: Layer.Layer<Transport> = Layer.succeed(Transport, make)
