/**
 * The Node.js {@link Transport} for pqcancel: TCP (IPv4/IPv6) to the exact remote address, unix sockets, TLS by
 * SSLRequest upgrade on the same socket or by direct TLS with ALPN `postgresql`, server verification per sslmode
 * (verify-ca, verify-full with libpq's host name check, `sslrootcert` file or `system`), client certificates with
 * encrypted keys, SNI, CRLs, TLS version bounds, keepalives and TCP_NODELAY; GSSAPI encryption (`gssencmode`,
 * `krbsrvname`) through {@link NodeGss} when koffi and the system's MIT GSSAPI library load ({@link makeWith} turns it
 * off or names a credential cache). Every socket belongs to the Scope it was opened in.
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
 * @module
 * @since 0.1.0
 */
import type { ConnectionOptions } from "@pqcancel/core"
import * as CancelMachine from "@pqcancel/core/CancelMachine"
import * as Protocol from "@pqcancel/core/Protocol"
import { Transport } from "@pqcancel/core/Transport"
import type * as TransportNs from "@pqcancel/core/Transport"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Net from "node:net"
import * as Tls from "node:tls"
import * as GssChannel from "./internal/gssChannel.ts"
import { unverifiablePeer } from "./internal/peerCredentials.ts"
import * as TlsErrors from "./internal/tlsErrors.ts"
import type { TlsFiles } from "./internal/tlsFiles.ts"
import { checkHostName, tlsFiles } from "./internal/tlsFiles.ts"
import * as NodeGss from "./NodeGss.ts"

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

/** A driver's own host name check (a `tls` options object's `checkServerIdentity`), run where libpq checks none */
type IdentityCheck = (host: string, cert: Tls.PeerCertificate) => Error | undefined

const tlsOptions = (
  socket: Net.Socket,
  request: CancelMachine.TlsRequest,
  files: TlsFiles,
  identityCheck?: IdentityCheck
): Tls.ConnectionOptions => {
  const verifyChain = request.sslmode === "verify-ca" || request.sslmode === "verify-full" || files.verifyChain
  const verifyHost = request.sslmode === "verify-full" ? request.verifyHost : undefined
  return {
    socket,
    ALPNProtocols: ["postgresql"],
    ...(request.servername !== undefined ? { servername: request.servername } : {}),
    ...(files.secureContext !== undefined ? { secureContext: files.secureContext } : {}),
    rejectUnauthorized: verifyChain,
    checkServerIdentity: (name, cert) =>
      verifyHost !== undefined ? checkHostName(verifyHost, cert) : identityCheck?.(name, cert)
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

// One socket, reporting to the cancel's event sink straight from Node's callbacks (no queue, no fiber per event).
// A class, so a cancel allocates its listeners and nothing per method.
class NodeConnection implements TransportNs.Connection {
  private readonly raw: Net.Socket
  private active: Net.Socket
  private connected = false
  private secured = false
  private closed = false
  private readonly request: TransportNs.ConnectRequest
  private readonly emit: TransportNs.EventSink
  private readonly gssOptions: NodeGss.Options | false
  // GSS encryption (NodeGss): after the server's 'G' the channel owns the raw socket's data and end events; once it
  // has started, every write goes through it (dropped until the context is up, wrapped after), never in clear
  private gss: GssChannel.Channel | undefined
  /** set for a driver's session ({@link connectStream}) */
  identityCheck: IdentityCheck | undefined

  constructor(
    request: TransportNs.ConnectRequest,
    sink: TransportNs.EventSink,
    gssOptions: NodeGss.Options | false,
    onread?: Net.OnReadOpts
  ) {
    this.raw = new Net.Socket(onread === undefined ? undefined : { onread })
    this.active = this.raw
    this.request = request
    this.emit = sink
    this.gssOptions = gssOptions
    const raw = this.raw
    raw.on("data", this.onData)
    raw.on("end", this.onEnd)
    raw.on("error", this.onError)
    raw.once("connect", this.onConnect)
    if (request.address._tag === "Unix") {
      raw.connect({ path: request.address.path })
    } else {
      raw.connect({ host: request.address.address, port: request.address.port, family: request.address.family })
    }
  }

  private readonly onData = (bytes: Buffer) => this.emit({ _tag: "Data", bytes })
  private readonly onEnd = () => this.emit(Eof)
  private readonly onError = (error: NodeJS.ErrnoException) => {
    this.emit(
      this.connected
        ? { _tag: "IoError", code: error.code, message: errorText(error) }
        : {
          _tag: "ConnectFailed",
          message: errorText(error),
          errno: typeof error.errno === "number" ? Math.abs(error.errno) : undefined,
          code: error.code
        }
    )
  }
  private readonly onConnect = () => {
    this.connected = true
    const request = this.request
    const rejected = unverifiablePeer(request)
    if (rejected !== undefined) return this.emit(rejected)
    this.emit(Connected)
    // after the CancelRequest (or SSLRequest) went out: the first write on a fresh socket never waits for Nagle,
    // and keepalives only matter for a cancel that stays open
    if (request.address._tag === "Tcp" && !this.closed) applyKeepalives(this.raw, request.options)
  }

  fd(): number {
    return this.closed ? -1 : fdOf(this.raw)
  }

  write(bytes: Uint8Array): void {
    if (this.closed) return
    if (this.gss !== undefined) this.gss.write(bytes)
    else this.active.write(bytes)
  }

  startTls(tlsRequest: CancelMachine.TlsRequest): void {
    if (this.closed) return
    const emit = this.emit
    const files = tlsFiles(this.request.options)
    if (files.error !== undefined) {
      emit({ _tag: "TlsFailed", message: files.error })
      return
    }
    const raw = this.raw
    raw.off("data", this.onData)
    raw.off("end", this.onEnd)
    raw.off("error", this.onError)
    raw.on("error", ignore)
    const secure = Tls.connect(tlsOptions(raw, tlsRequest, files, this.identityCheck))
    this.active = secure
    secure.once("secureConnect", () => {
      this.secured = true
      const alpn = secure.alpnProtocol
      emit({ _tag: "TlsEstablished", alpn: typeof alpn === "string" ? alpn : false })
    })
    secure.on("data", this.onData)
    // the server hung up during the handshake: libpq's "SSL SYSCALL error: EOF detected"
    secure.on(
      "end",
      () => this.secured ? this.onEnd() : emit({ _tag: "TlsFailed", message: TlsErrors.EOF_DETECTED, code: "EOF" })
    )
    secure.on("error", (error: NodeJS.ErrnoException) => {
      emit(
        this.secured
          ? { _tag: "IoError", code: error.code, message: errorText(error) }
          : {
            _tag: "TlsFailed",
            // a reset or broken pipe is the network's (transient); a TLS or certificate code is not
            code: error.code,
            // libpq's texts (internal/tlsErrors.ts); Node sets authorizationError when verification failed
            message: TlsErrors.handshakeFailureText(error, {
              verificationFailed: typeof (secure as { authorizationError?: unknown }).authorizationError === "string",
              minVersion: this.request.options.sslMinProtocolVersion,
              maxVersion: this.request.options.sslMaxProtocolVersion
            })
          }
      )
    })
  }

  startGss(gssRequest: CancelMachine.GssRequest): void {
    if (this.closed || this.gss !== undefined) return
    const options = this.gssOptions
    const api = options === false ? undefined : NodeGss.loadApi(options)
    if (api === undefined || options === false) {
      this.emit({ _tag: "GssFailed", message: "GSSAPI encryption is not available (no GSSAPI library)" })
      return
    }
    this.raw.off("data", this.onData)
    this.raw.off("end", this.onEnd)
    this.gss = GssChannel.start(api, this.raw, {
      service: this.request.options.krbsrvname ?? "postgres",
      host: gssRequest.host,
      ccache: options.ccache,
      delegate: false
    }, this.emit)
  }

  /**
   * Hands the socket over (a driver's own session, see {@link connectStream}): this connection stops listening and
   * reporting, and closes nothing. Returns the socket to read and write (TLS, or the raw socket) and the raw one.
   */
  detach(): { readonly socket: Net.Socket; readonly raw: Net.Socket } {
    this.closed = true
    const raw = this.raw
    const active = this.active
    raw.off("data", this.onData)
    raw.off("end", this.onEnd)
    raw.off("error", this.onError)
    if (active !== raw) {
      active.removeAllListeners("data")
      active.removeAllListeners("end")
      active.removeAllListeners("error")
      active.removeAllListeners("secureConnect")
    }
    return { socket: active, raw }
  }

  close(): void {
    if (this.closed) return
    this.closed = true
    this.gss?.close()
    const active = this.active
    const raw = this.raw
    if (this.secured && !active.readableEnded) {
      // a TLS session the server has not closed (a failed or interrupted cancel): Node may still hold the
      // handshake's last flight (the client's Finished) for its next I/O turn; let it out before destroying
      setImmediate(() => {
        active.destroy()
        raw.destroy()
      })
      return
    }
    active.destroy()
    raw.destroy()
  }
}

const Connected = { _tag: "Connected" } as const
const Eof = { _tag: "Eof" } as const
const ignore = () => {}

const connect = (
  request: TransportNs.ConnectRequest,
  sink: TransportNs.EventSink,
  gss: NodeGss.Options | false = {}
): TransportNs.Connection => new NodeConnection(request, sink, gss)

/**
 * A driver's session socket, opened as the socket factory of a driver that speaks the protocol itself
 * (postgres.js): {@link connectStream}'s result.
 *
 * @category models
 * @since 0.1.0
 */
export interface Stream {
  /** what the driver reads and writes: the TLS socket, or the raw socket of a plaintext session */
  readonly socket: Net.Socket
  /** the TCP or unix socket under it */
  readonly raw: Net.Socket
  /** whether the session is TLS-encrypted (its cancel must be too) */
  readonly encrypted: boolean
}

/**
 * Opens a driver's own session the way a cancel connects (same code): the one address, TCP_NODELAY and keepalives,
 * then the session's encryption per libpq's rules for `options` — no SSLRequest on a unix socket or with
 * `sslmode=disable`; an SSLRequest whose refusal falls back to plaintext with `allow` / `prefer` and fails with
 * `require` / `verify-*`; direct TLS (ALPN `postgresql`, checked) with `sslnegotiation=direct`; the server verified
 * per sslmode, with the TLS material and versions of `options`. `verifyHost` is the name verify-full checks and SNI
 * sends (the host name; a driver's `servername`), `identityCheck` a driver's own host name check for verify-ca.
 * Resolves once the socket is ready for the startup packet; fails with libpq's texts, after `timeoutMs` with
 * `timeout expired`. The caller owns the sockets.
 *
 * @category constructors
 * @since 0.1.0
 */
export const connectStream = (request: {
  readonly host: ConnectionOptions.HostEntry
  readonly address: CancelMachine.RemoteAddress
  readonly options: ConnectionOptions.ConnectionOptions
  readonly verifyHost: string | undefined
  readonly timeoutMs: number
  readonly identityCheck?: IdentityCheck | undefined
  /** reads into one buffer of the caller's, for a session that stays plaintext (`sslmode=disable`, a unix socket) */
  readonly onread?: Net.OnReadOpts | undefined
}): Promise<Stream> =>
  new Promise((resolve, reject) => {
    const { address, options } = request
    const prefix = CancelMachine.hostPrefix(request.host, address)
    const tls = address._tag === "Tcp" && options.sslmode !== "disable"
    const direct = tls && options.sslnegotiation === "direct"
    const name = request.verifyHost
    const tlsRequest: CancelMachine.TlsRequest = {
      direct,
      sslmode: options.sslmode,
      servername: options.sslsni && name !== undefined && Net.isIP(name) === 0 ? name : undefined,
      verifyHost: name
    }
    let phase: "connecting" | "ssl" | "tls" | "done" = "connecting"
    const fail = (message: string): void => {
      if (phase === "done") return
      phase = "done"
      clearTimeout(timer)
      connection.close()
      reject(new Error(prefix + message))
    }
    const ready = (encrypted: boolean): void => {
      phase = "done"
      clearTimeout(timer)
      const { raw, socket } = connection.detach()
      if (socket !== raw) raw.on("error", ignore)
      resolve({ socket, raw, encrypted })
    }
    const connection = new NodeConnection(
      { address, options },
      (event) => {
        switch (event._tag) {
          case "Connected": {
            if (!tls) return ready(false)
            if (direct) {
              phase = "tls"
              return connection.startTls(tlsRequest)
            }
            phase = "ssl"
            return connection.write(Protocol.sslRequest)
          }
          case "Data": {
            if (phase !== "ssl") return fail(CancelMachine.Messages.unexpectedResponse)
            // one byte, nothing after it (CVE-2021-23222)
            if (event.bytes.length > 1) return fail(CancelMachine.Messages.sslUnencryptedData)
            const answer = Protocol.classifyNegotiationResponse(event.bytes[0]!, "ssl")
            if (answer.kind === "accept") {
              phase = "tls"
              return connection.startTls(tlsRequest)
            }
            if (answer.kind !== "reject") return fail(answer.error.message)
            return options.sslmode === "allow" || options.sslmode === "prefer"
              ? ready(false)
              : fail(CancelMachine.Messages.sslRequired)
          }
          case "TlsEstablished":
            if (direct && event.alpn !== "postgresql") {
              return fail(event.alpn === false ? CancelMachine.Messages.noAlpn : CancelMachine.Messages.wrongAlpn)
            }
            return ready(true)
          case "ConnectFailed":
            return fail(
              `${event.message}\n${
                address._tag === "Unix" ? CancelMachine.Messages.unixHint : CancelMachine.Messages.tcpHint
              }`
            )
          case "Eof":
            return fail(CancelMachine.Messages.serverClosed)
          case "IoError":
            return fail(CancelMachine.Messages.receiveFailed(event.message))
          case "TlsFailed":
          case "GssFailed":
          case "PeerRejected":
            return fail(event.message)
          case "GssEstablished":
            return fail(CancelMachine.Messages.unexpectedResponse)
        }
      },
      false,
      tls ? undefined : request.onread
    )
    connection.identityCheck = request.identityCheck
    const timer = setTimeout(() => fail(CancelMachine.Messages.timeout), Math.max(0, request.timeoutMs))
  })

// require: the exact check (its absence is an error); prefer: a recent answer will do (see NodeGss)
const gssCredentials = (options: ConnectionOptions.ConnectionOptions, gss: NodeGss.Options): Effect.Effect<boolean> =>
  options.gssencmode === "require" ? NodeGss.credentialsAvailable(gss) : NodeGss.credentialsAvailableRecent(gss)

/**
 * The Node transport.
 *
 * @category constructors
 * @since 0.1.0
 */
export const make: Transport["Service"] = Transport.of({
  connect: (request, sink) => connect(request, sink),
  // libpq's pg_GSS_have_cred_cache through NodeGss (false without koffi or the GSSAPI library)
  gssCredentialsAvailable: (options) => gssCredentials(options, {})
})

/**
 * The Node transport with GSS settings: `gss: false` turns GSS encryption off (as a libpq built without GSSAPI:
 * `gssencmode=prefer` never tries it); an {@link NodeGss.Options} object names the GSSAPI library or a credential
 * cache. {@link make} is `makeWith({})`.
 *
 * @example
 * ```ts
 * import { NodeTransport } from "@pqcancel/node"
 *
 * const withoutGss = NodeTransport.makeWith({ gss: false })
 * const ownCache = NodeTransport.makeWith({ gss: { ccache: "FILE:/var/lib/app/krb5cc" } })
 * ```
 *
 * @category constructors
 * @since 0.1.0
 */
export const makeWith = (options: { readonly gss?: NodeGss.Options | false | undefined }): Transport["Service"] => {
  const gss = options.gss ?? {}
  return Transport.of({
    connect: (request, sink) => connect(request, sink, gss),
    gssCredentialsAvailable: (connectionOptions) =>
      gss === false ? Effect.succeed(false) : gssCredentials(connectionOptions, gss)
  })
}

/**
 * {@link makeWith} as a Layer.
 *
 * @category layers
 * @since 0.1.0
 */
export const layerWith = (options: { readonly gss?: NodeGss.Options | false | undefined }): Layer.Layer<Transport> =>
  Layer.succeed(Transport, makeWith(options))

/**
 * The Node transport as a Layer.
 *
 * @example
 * ```ts
 * import { CancelConnection } from "@pqcancel/core"
 * import { NodeTransport } from "@pqcancel/node"
 * import * as Effect from "effect/Effect"
 *
 * declare const session: CancelConnection.SessionInfo
 *
 * const program = CancelConnection.cancel(session).pipe(Effect.provide(NodeTransport.layer))
 * ```
 *
 * @category layers
 * @since 0.1.0
 */
export const layer: Layer.Layer<Transport> = Layer.succeed(Transport, make)
