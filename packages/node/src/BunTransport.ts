/**
 * The Bun {@link Transport} for pqcancel, on Bun's own sockets (`Bun.connect`, `socket.upgradeTLS`) instead of its
 * `node:net` / `node:tls` layer: TCP to the exact remote address, unix sockets, TLS by SSLRequest upgrade on the same
 * socket or by direct TLS with ALPN `postgresql`, and the same TLS rules as {@link NodeTransport} (the same material
 * read the same way: root certificates from a file, memory or the system store, client certificates with encrypted
 * keys, CRLs, version bounds; verify-ca / verify-full with libpq's host name check and texts). No GSSAPI (as
 * `NodeTransport.makeWith({ gss: false })`). Only on Bun: elsewhere every connection fails with a clear message.
 *
 * @example
 * ```ts
 * import * as Effect from "effect/Effect"
 * import { CancelConnection } from "@pqcancel/core"
 * import * as BunTransport from "@pqcancel/node/BunTransport"
 *
 * declare const session: CancelConnection.SessionInfo
 * const program = CancelConnection.cancel(session).pipe(Effect.provide(BunTransport.layer))
 * ```
 *
 * @module
 * @since 0.1.0
 */
import type { CancelMachine } from "@pqcancel/core"
import { Transport } from "@pqcancel/core/Transport"
import type * as TransportNs from "@pqcancel/core/Transport"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import type * as Tls from "node:tls"
import { unverifiablePeer } from "./internal/peerCredentials.ts"
import * as TlsErrors from "./internal/tlsErrors.ts"
import type { TlsFiles } from "./internal/tlsFiles.ts"
import { checkHostName, tlsFiles } from "./internal/tlsFiles.ts"
import { errorText } from "./NodeTransport.ts"

// Bun's socket API, as far as this transport uses it (no bun-types in the workspace)
interface BunSocket {
  write(bytes: Uint8Array): number
  end(): void
  terminate(): void
  setNoDelay(noDelay?: boolean): boolean
  setKeepAlive(enable?: boolean, initialDelay?: number): boolean
  upgradeTLS(options: { readonly tls: BunTlsOptions; readonly socket: Handlers }): [BunSocket, BunSocket]
  getPeerCertificate(): Tls.PeerCertificate
  readonly alpnProtocol: string | false | null
}
interface BunTlsOptions {
  readonly rejectUnauthorized: boolean
  readonly ALPNProtocols: string
  readonly serverName: string
  readonly ca?: Buffer | Array<string>
  readonly cert?: Buffer | string
  readonly key?: Buffer
  readonly passphrase?: string
  readonly crl?: Array<Buffer>
  readonly minVersion: number
  readonly maxVersion?: number
}
interface Handlers {
  readonly open?: (socket: BunSocket) => void
  readonly data: (socket: BunSocket, bytes: Uint8Array) => void
  readonly drain: (socket: BunSocket) => void
  readonly end: (socket: BunSocket) => void
  readonly close: (socket: BunSocket, error?: NodeJS.ErrnoException) => void
  readonly error: (socket: BunSocket, error: NodeJS.ErrnoException) => void
  readonly connectError?: (socket: BunSocket, error: NodeJS.ErrnoException) => void
  readonly handshake?: (socket: BunSocket, success: boolean, error: NodeJS.ErrnoException | null) => void
}
interface BunApi {
  connect(
    options:
      | { readonly hostname: string; readonly port: number; readonly socket: Handlers }
      | { readonly unix: string; readonly socket: Handlers }
  ): Promise<BunSocket>
}

const bun = (globalThis as { readonly Bun?: BunApi }).Bun

// TLS protocol versions as Bun takes them (the TLS wire numbers)
const tlsVersion = { TLSv1: 0x0301, "TLSv1.1": 0x0302, "TLSv1.2": 0x0303, "TLSv1.3": 0x0304 } as const

// ALPN in wire format: a length byte, then the protocol name
const ALPN_POSTGRESQL = "\npostgresql"

const bunTlsOptions = (
  request: CancelMachine.TlsRequest,
  files: TlsFiles,
  minVersion: string | undefined,
  maxVersion: string | undefined
): BunTlsOptions => {
  const material = files.material
  const clientIdentity = material.cert !== undefined && material.key !== undefined
    ? {
      cert: material.cert,
      key: Redacted.value(material.key),
      ...(material.passphrase !== undefined ? { passphrase: Redacted.value(material.passphrase) } : {})
    }
    : {}
  const min = tlsVersion[(minVersion ?? "TLSv1.2") as keyof typeof tlsVersion]
  const max = maxVersion !== undefined ? tlsVersion[maxVersion as keyof typeof tlsVersion] : undefined
  return {
    // verified in the handshake callback, with libpq's rules per sslmode
    rejectUnauthorized: false,
    ALPNProtocols: ALPN_POSTGRESQL,
    // no SNI for sslsni=0 or an IP address (Bun would send the address otherwise)
    serverName: request.servername ?? "",
    ...(material.ca !== undefined ? { ca: material.ca } : {}),
    ...clientIdentity,
    ...(material.crls.length > 0 ? { crl: [...material.crls] } : {}),
    minVersion: min,
    ...(max !== undefined ? { maxVersion: max } : {})
  }
}

// One socket, reporting to the cancel's event sink straight from Bun's socket handlers.
class BunConnection implements TransportNs.Connection {
  private socket: BunSocket | undefined
  private pending: Uint8Array | undefined
  private connected = false
  private handshaking = false
  // TLS started: the raw socket's handlers see ciphertext from then on, and report nothing
  private upgraded = false
  private secured = false
  // the handshake's outcome came: on close, let its last flight (the client's Finished) out first
  private handshakeDone = false
  // Eof or an error was reported for the current socket (Bun may follow an `end` or `error` with a `close`)
  private ended = false
  private closed = false
  private readonly request: TransportNs.ConnectRequest
  private readonly emit: TransportNs.EventSink

  constructor(request: TransportNs.ConnectRequest, sink: TransportNs.EventSink) {
    this.request = request
    this.emit = sink
    if (bun === undefined) {
      sink({ _tag: "ConnectFailed", message: "BunTransport runs on Bun only", errno: undefined, code: undefined })
      return
    }
    const socket = this.plainHandlers
    const address = request.address
    bun.connect(
      address._tag === "Unix"
        ? { unix: address.path, socket }
        : { hostname: address.address, port: address.port, socket }
    ).catch(() => {
      // reported by connectError
    })
  }

  private readonly plainHandlers: Handlers = {
    open: (socket) => {
      if (this.closed) return socket.terminate()
      this.socket = socket
      this.connected = true
      const request = this.request
      const rejected = unverifiablePeer(request)
      if (rejected !== undefined) return this.emit(rejected)
      this.emit(Connected)
      if (request.address._tag === "Tcp" && !this.closed) {
        socket.setNoDelay(true)
        if (request.options.keepalives) socket.setKeepAlive(true, (request.options.keepalivesIdle ?? 0) * 1000)
      }
    },
    data: (_socket, bytes) => {
      if (!this.closed && !this.upgraded) this.emit({ _tag: "Data", bytes })
    },
    drain: (socket) => {
      if (!this.upgraded) this.flush(socket)
    },
    end: () => this.plainEnded(undefined),
    close: (_socket, error) => this.plainEnded(error),
    error: (_socket, error) => this.plainEnded(error),
    connectError: (_socket, error) => {
      if (!this.closed) this.emit(connectFailed(error))
    }
  }

  // the plain socket ended (EOF, reset, a failed connect), reported once
  private plainEnded(error: NodeJS.ErrnoException | undefined): void {
    if (this.closed || this.upgraded || this.ended) return
    this.ended = true
    if (!this.connected) {
      this.emit(connectFailed(error ?? Object.assign(new Error("Connection refused"), { code: "ECONNREFUSED" })))
    } else this.emit(error === undefined ? Eof : { _tag: "IoError", code: error.code, message: errorText(error) })
  }

  // the TLS socket ended: during the handshake a TlsFailed (libpq's texts), after it Eof or an I/O error; once
  private tlsEnded(error: NodeJS.ErrnoException | undefined): void {
    if (this.closed || this.ended) return
    if (this.secured) {
      this.ended = true
      this.emit(error === undefined ? Eof : { _tag: "IoError", code: error.code, message: errorText(error) })
      return
    }
    if (!this.handshaking) return
    this.handshaking = false
    this.ended = true
    const options = this.request.options
    this.emit(
      error === undefined
        // the server hung up during the handshake: libpq's "SSL SYSCALL error: EOF detected"
        ? { _tag: "TlsFailed", message: TlsErrors.EOF_DETECTED, code: "EOF" }
        : {
          _tag: "TlsFailed",
          code: error.code,
          message: TlsErrors.handshakeFailureText(error, {
            verificationFailed: false,
            minVersion: options.sslMinProtocolVersion,
            maxVersion: options.sslMaxProtocolVersion
          })
        }
    )
  }

  private flush(socket: BunSocket): void {
    const pending = this.pending
    if (pending === undefined || this.closed) return
    const written = socket.write(pending)
    this.pending = written >= pending.length ? undefined : pending.subarray(Math.max(0, written))
  }

  fd(): number {
    // Bun's sockets expose no descriptor: "unknown"
    return -1
  }

  write(bytes: Uint8Array): void {
    const socket = this.socket
    if (this.closed || socket === undefined) return
    if (this.pending !== undefined) {
      const joined = new Uint8Array(this.pending.length + bytes.length)
      joined.set(this.pending)
      joined.set(bytes, this.pending.length)
      this.pending = joined
      return
    }
    const written = socket.write(bytes)
    if (written < bytes.length) this.pending = bytes.subarray(Math.max(0, written))
  }

  startTls(tlsRequest: CancelMachine.TlsRequest): void {
    const raw = this.socket
    if (this.closed || raw === undefined || this.handshaking || this.secured) return
    const options = this.request.options
    const files = tlsFiles(options)
    if (files.error !== undefined) {
      this.emit({ _tag: "TlsFailed", message: files.error })
      return
    }
    const verifyChain = tlsRequest.sslmode === "verify-ca" || tlsRequest.sslmode === "verify-full" ||
      files.verifyChain
    const verifyHost = tlsRequest.sslmode === "verify-full" ? tlsRequest.verifyHost : undefined
    const handshakeFailed = (error: NodeJS.ErrnoException, verificationFailed: boolean) =>
      this.emit({
        _tag: "TlsFailed",
        code: error.code,
        message: TlsErrors.handshakeFailureText(error, {
          verificationFailed,
          minVersion: options.sslMinProtocolVersion,
          maxVersion: options.sslMaxProtocolVersion
        })
      })
    this.handshaking = true
    this.upgraded = true
    let tls: BunSocket
    try {
      ;[, tls] = raw.upgradeTLS({
        tls: bunTlsOptions(tlsRequest, files, options.sslMinProtocolVersion, options.sslMaxProtocolVersion),
        socket: {
          handshake: (socket, success, error) => {
            if (this.closed || !this.handshaking) return
            this.handshaking = false
            this.handshakeDone = true
            if (error !== null && error.code !== "ERR_TLS_CERT_ALTNAME_INVALID") {
              // a certificate the chain check refused: fatal where libpq verifies it; any other error means the
              // handshake itself failed
              if (!TlsErrors.isVerificationCode(error.code)) return handshakeFailed(error, false)
              if (verifyChain) return handshakeFailed(error, true)
            } else if (error === null && !success) {
              return this.emit({ _tag: "TlsFailed", message: TlsErrors.EOF_DETECTED, code: "EOF" })
            }
            // Bun folds its own host name check (against serverName) into the result after the chain check: a
            // name mismatch means the chain verified; libpq's host name check is ours (verify-full)
            const mismatch = verifyHost === undefined
              ? undefined
              : checkHostName(verifyHost, socket.getPeerCertificate())
            if (mismatch !== undefined) return this.emit({ _tag: "TlsFailed", message: mismatch.message })
            this.secured = true
            const alpn = socket.alpnProtocol
            this.emit({ _tag: "TlsEstablished", alpn: typeof alpn === "string" ? alpn : false })
          },
          data: (_socket, bytes) => {
            if (!this.closed && this.secured) this.emit({ _tag: "Data", bytes })
          },
          drain: (socket) => this.flush(socket),
          end: () => this.tlsEnded(undefined),
          close: (_socket, error) => this.tlsEnded(error),
          error: (_socket, error) => this.tlsEnded(error)
        }
      })
    } catch (error) {
      this.handshaking = false
      this.emit({ _tag: "TlsFailed", message: `SSL error: ${error instanceof Error ? error.message : String(error)}` })
      return
    }
    this.socket = tls
  }

  startGss(): void {
    if (!this.closed) {
      this.emit({ _tag: "GssFailed", message: "GSSAPI encryption is not available (no GSSAPI library)" })
    }
  }

  close(): void {
    if (this.closed) return
    this.closed = true
    const socket = this.socket
    if (socket === undefined) return
    // a graceful end flushes what BoringSSL still holds (the handshake's last flight) before the FIN
    if (this.handshakeDone) socket.end()
    else socket.terminate()
  }
}

const connectFailed = (error: NodeJS.ErrnoException): TransportNs.TransportEvent => ({
  _tag: "ConnectFailed",
  message: errorText(error),
  errno: typeof error.errno === "number" ? Math.abs(error.errno) : undefined,
  code: error.code
})

const Connected = { _tag: "Connected" } as const
const Eof = { _tag: "Eof" } as const

/**
 * The Bun transport.
 *
 * @category constructors
 * @since 0.1.0
 */
export const make: Transport["Service"] = Transport.of({
  connect: (request, sink) => new BunConnection(request, sink),
  // no GSSAPI here: gssencmode=prefer never tries it, require fails with libpq's text
  gssCredentialsAvailable: () => Effect.succeed(false)
})

/**
 * The Bun transport as a Layer.
 *
 * @category layers
 * @since 0.1.0
 */
export const layer: Layer.Layer<Transport> = Layer.succeed(Transport, make)
