/**
 * The Cloudflare Workers {@link Transport} for pqcancel, over `cloudflare:sockets`: TCP to the session's exact
 * address, TLS by SSLRequest upgrade on the same socket (`connect` with `secureTransport: "starttls"`, then
 * `startTls()` after the server's 'S'), the server verified by the platform against its trusted roots and the host
 * name.
 *
 * What a Worker cannot do fails before anything is sent, with libpq's text where libpq has one, never by sending the
 * key in plaintext: unix-domain sockets; a private CA (`sslrootcert` other than `system`, `sslMaterial.ca`: the
 * platform trusts its public roots only, so `verify-ca` / `verify-full` need `sslrootcert=system`); direct TLS
 * (`sslnegotiation=direct`: no ALPN `postgresql`); client certificates in memory; revocation lists;
 * `ssl_min_protocol_version=TLSv1.3`; GSSAPI. Under `require` the platform still verifies the server (stricter than
 * libpq): a server whose certificate the Worker does not trust fails the handshake, and `prefer` falls back to
 * plaintext as libpq does after a failed handshake.
 *
 * @example
 * ```ts
 * import * as Effect from "effect/Effect"
 * import { CancelConnection } from "@pqcancel/core"
 * import { CloudflareTransport } from "@pqcancel/cloudflare"
 *
 * declare const session: CancelConnection.SessionInfo
 * const program = CancelConnection.cancel(session).pipe(Effect.provide(CloudflareTransport.layer))
 * ```
 *
 * @module
 * @since 0.1.0
 */
import type { CancelMachine, ConnectionOptions } from "@pqcancel/core"
import { Transport } from "@pqcancel/core/Transport"
import type * as TransportNs from "@pqcancel/core/Transport"
import { connect as socketConnect } from "cloudflare:sockets"
import type { Socket, StreamReader, StreamWriter } from "cloudflare:sockets"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"

const reasonOf = (error: unknown): string => error instanceof Error ? error.message : String(error)

// the platform's connect errors carry no errno: the C library's text for the ones it names
const connectFailure = (error: unknown): Extract<TransportNs.TransportEvent, { readonly _tag: "ConnectFailed" }> => {
  const message = reasonOf(error)
  return /refused/i.test(message)
    ? { _tag: "ConnectFailed", message: "Connection refused", errno: 111, code: "ECONNREFUSED" }
    : { _tag: "ConnectFailed", message, errno: undefined, code: undefined }
}

// libpq's message for verify-ca / verify-full without a readable root certificate (a Worker has no files)
const noRootCertificate = (path: string): string =>
  `root certificate file "${path}" does not exist\n` +
  "Either provide the file, use the system's trusted roots with sslrootcert=system, " +
  "or change sslmode to disable server certificate verification."

/**
 * Why a TLS request cannot be honoured in a Worker (checked before the handshake, so nothing is sent), or undefined.
 */
const tlsUnsupported = (
  request: CancelMachine.TlsRequest,
  options: ConnectionOptions.ConnectionOptions
): string | undefined => {
  const material = options.sslMaterial
  if (request.direct) {
    // the platform's TLS offers no ALPN, which a server requires for direct TLS: libpq's text for that outcome
    return "direct SSL connection was established without ALPN protocol negotiation extension"
  }
  if (material?.ca !== undefined) {
    return "could not use the root certificate (sslMaterial.ca): a Worker verifies servers against the platform's " +
      "trusted roots only"
  }
  const verify = request.sslmode === "verify-ca" || request.sslmode === "verify-full"
  if (verify && options.sslrootcert !== "system") {
    return noRootCertificate(options.sslrootcert ?? "~/.postgresql/root.crt")
  }
  if (material?.cert !== undefined || material?.key !== undefined) {
    return "could not use the client certificate (sslMaterial.cert): a Worker cannot present one"
  }
  if (material?.crl !== undefined || options.sslcrl !== undefined || options.sslcrldir !== undefined) {
    return "could not load SSL certificate revocation list: a Worker does not check revocation lists"
  }
  if (options.sslMinProtocolVersion === "TLSv1.3") {
    return "ssl_min_protocol_version=TLSv1.3 cannot be enforced in a Worker"
  }
  return undefined
}

// One socket, reporting to the cancel's event sink from the socket's promises. A read loop per stage (plain, then
// TLS): `stage` changes when TLS starts or the connection closes, and a stale loop reports nothing.
class CloudflareConnection implements TransportNs.Connection {
  private socket: Socket | undefined
  private reader: StreamReader | undefined
  private writer: StreamWriter | undefined
  private stage = 0
  private closed = false
  private handshaking = false
  private readonly request: TransportNs.ConnectRequest
  private readonly emit: TransportNs.EventSink

  constructor(request: TransportNs.ConnectRequest, sink: TransportNs.EventSink) {
    this.request = request
    this.emit = sink
    const address = request.address
    if (address._tag === "Unix") {
      // a Worker has no unix-domain sockets: what libpq prints where the address family is missing
      sink({
        _tag: "ConnectFailed",
        message: "Address family not supported by protocol",
        errno: 97,
        code: "EAFNOSUPPORT"
      })
      return
    }
    let socket: Socket
    try {
      socket = socketConnect({ hostname: address.address, port: address.port }, { secureTransport: "starttls" })
    } catch (error) {
      sink(connectFailure(error))
      return
    }
    this.socket = socket
    const stage = this.stage
    socket.opened.then(() => {
      if (this.closed || stage !== this.stage) return
      this.emit(Connected)
      this.read(socket, stage)
    }, (error: unknown) => {
      if (!this.closed && stage === this.stage) this.emit(connectFailure(error))
    })
  }

  private read(socket: Socket, stage: number): void {
    const reader = socket.readable.getReader()
    this.reader = reader
    const next = (): void => {
      reader.read().then(({ done, value }) => {
        if (this.closed || stage !== this.stage) return
        if (done) return this.emit(Eof)
        if (value !== undefined && value.length > 0) this.emit({ _tag: "Data", bytes: value })
        if (!this.closed && stage === this.stage) next()
      }, (error: unknown) => {
        if (!this.closed && stage === this.stage) {
          this.emit({ _tag: "IoError", code: undefined, message: reasonOf(error) })
        }
      })
    }
    next()
  }

  fd(): number {
    return -1
  }

  write(bytes: Uint8Array): void {
    const socket = this.socket
    if (this.closed || this.handshaking || socket === undefined) return
    const stage = this.stage
    this.writer ??= socket.writable.getWriter()
    this.writer.write(bytes).catch((error: unknown) => {
      if (!this.closed && stage === this.stage) {
        this.emit({ _tag: "IoError", code: undefined, message: reasonOf(error) })
      }
    })
  }

  startTls(tlsRequest: CancelMachine.TlsRequest): void {
    const plain = this.socket
    if (this.closed || plain === undefined || this.handshaking) return
    const unsupported = tlsUnsupported(tlsRequest, this.request.options)
    if (unsupported !== undefined) {
      this.emit({ _tag: "TlsFailed", message: unsupported })
      return
    }
    // the plain stage ends: its read loop goes stale, and the locks are released for the upgrade
    const stage = ++this.stage
    this.handshaking = true
    this.releaseLocks()
    let secure: Socket
    try {
      const hostname = tlsRequest.verifyHost ?? tlsRequest.servername
      secure = plain.startTls(hostname !== undefined ? { expectedServerHostname: hostname } : {})
    } catch (error) {
      this.emit({ _tag: "TlsFailed", message: `SSL error: ${reasonOf(error)}` })
      return
    }
    this.socket = secure
    secure.opened.then(() => {
      if (this.closed || stage !== this.stage) return
      this.handshaking = false
      // no ALPN on this platform (direct TLS was refused above)
      this.emit({ _tag: "TlsEstablished", alpn: false })
      this.read(secure, stage)
    }, (error: unknown) => {
      // the platform says "internal error" for every verification failure: the handshake failed, the key was
      // never sent
      if (!this.closed && stage === this.stage) {
        this.emit({ _tag: "TlsFailed", message: `SSL error: ${reasonOf(error)}` })
      }
    })
  }

  startGss(): void {
    if (!this.closed) this.emit({ _tag: "GssFailed", message: "GSSAPI encryption is not available in a Worker" })
  }

  private releaseLocks(): void {
    try {
      this.reader?.releaseLock()
    } catch {
      // a pending read: it rejects, and its loop is stale
    }
    try {
      this.writer?.releaseLock()
    } catch {
      // nothing to release
    }
    this.reader = undefined
    this.writer = undefined
  }

  close(): void {
    if (this.closed) return
    this.closed = true
    this.stage++
    this.releaseLocks()
    this.socket?.close().catch(() => {})
  }
}

const Connected = { _tag: "Connected" } as const
const Eof = { _tag: "Eof" } as const

/**
 * The Workers transport.
 *
 * @category constructors
 * @since 0.1.0
 */
export const make: Transport["Service"] = Transport.of({
  connect: (request, sink) => new CloudflareConnection(request, sink),
  // no GSSAPI in a Worker: gssencmode=prefer never tries it, require fails with libpq's text
  gssCredentialsAvailable: () => Effect.succeed(false)
})

/**
 * The Workers transport as a Layer.
 *
 * @category layers
 * @since 0.1.0
 */
export const layer: Layer.Layer<Transport> = Layer.succeed(Transport, make)
