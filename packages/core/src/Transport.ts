/**
 * The `Transport` service: the only door between the cancel state machine and the network. It opens one socket to
 * one address, writes bytes, upgrades to TLS (or GSS) in place, and reports what happened as machine events to a
 * callback (an {@link EventSink}), so a cancel steps its state machine straight from the socket's callbacks.
 * `@pqcancel/node` provides it for Node (`net`, `tls`, unix sockets); tests can provide their own.
 *
 * @example
 * ```ts
 * import * as Layer from "effect/Layer"
 * import { Transport } from "@pqcancel/core"
 *
 * // a transport that refuses every connection, e.g. for a unit test
 * declare const refuseAll: Transport.Transport["Service"]
 * const TestTransport = Layer.succeed(Transport.Transport, refuseAll)
 * ```
 *
 * @module
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import type * as Effect from "effect/Effect"
import type { Event, GssRequest, RemoteAddress, TlsRequest } from "./CancelMachine.ts"
import type { ConnectionOptions } from "./ConnectionOptions.ts"

/**
 * Events a transport reports: connect outcome, bytes, EOF, I/O errors and handshake outcomes.
 *
 * @category models
 * @since 0.1.0
 */
export type TransportEvent = Extract<
  Event,
  {
    readonly _tag:
      | "Connected"
      | "ConnectFailed"
      | "PeerRejected"
      | "Data"
      | "Eof"
      | "IoError"
      | "TlsEstablished"
      | "TlsFailed"
      | "GssEstablished"
      | "GssFailed"
  }
>

/**
 * Where a connection reports its outcomes, in order. A transport may call it from any socket callback, also from
 * inside `Transport.connect` or a `Connection` method; the caller copes with re-entrant calls.
 *
 * @category models
 * @since 0.1.0
 */
export type EventSink = (event: TransportEvent) => void

/**
 * One open (or opening) socket. Plain synchronous methods, called straight from the cancel's state machine (no
 * fiber per call); every outcome arrives on the {@link EventSink} given to `connect`. The caller owns the connection
 * and closes it (`close`) when its Scope or its cancel ends.
 *
 * @category models
 * @since 0.1.0
 */
export interface Connection {
  /** the OS socket descriptor (what `PQcancelSocket` returns), or -1 when there is none or it is unknown */
  readonly fd: () => number
  /** queue bytes for writing; a write error arrives as an `IoError` event */
  readonly write: (bytes: Uint8Array) => void
  /** begin a TLS handshake on this socket; the outcome arrives as `TlsEstablished` or `TlsFailed` */
  readonly startTls: (request: TlsRequest) => void
  /**
   * begin GSS encryption (after the server's 'G'): the context for `<krbsrvname>@<request.host>`; the outcome arrives
   * as `GssEstablished` or `GssFailed`, and from then on `write` wraps and `Data` is unwrapped
   */
  readonly startGss: (request: GssRequest) => void
  /** close the socket now (idempotent); no event is reported after it */
  readonly close: () => void
}

/**
 * How to open a connection: the address and the options (keepalives, tcp_user_timeout, TLS files and versions).
 *
 * @category models
 * @since 0.1.0
 */
export interface ConnectRequest {
  readonly address: RemoteAddress
  readonly options: ConnectionOptions
}

/**
 * The transport service.
 *
 * @category services
 * @since 0.1.0
 */
export class Transport extends Context.Service<Transport, {
  /**
   * start connecting; never throws: the outcome arrives on `sink` as `Connected` or `ConnectFailed`, then the
   * socket's data, EOF, errors and handshake outcomes
   */
  readonly connect: (request: ConnectRequest, sink: EventSink) => Connection
  /** whether GSS encryption could be attempted (libpq's `pg_GSS_have_cred_cache`); false without a GSS provider */
  readonly gssCredentialsAvailable: (options: ConnectionOptions) => Effect.Effect<boolean>
}>()("@pqcancel/core/Transport") {}
