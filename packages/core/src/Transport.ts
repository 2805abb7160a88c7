/**
 * The `Transport` service: the only door between the cancel state machine and the network. It opens one socket to
 * one address, writes bytes, upgrades to TLS (or GSS) in place, and reports what happened as machine events on a
 * queue. `@pqcancel/node` provides it for Node (`net`, `tls`, unix sockets); tests can provide their own.
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
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import type * as Effect from "effect/Effect"
import type * as Queue from "effect/Queue"
import type * as Scope from "effect/Scope"
import type { Event, RemoteAddress, TlsRequest } from "./CancelMachine.ts"
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
 * One open (or opening) socket. Closed by the Scope it was acquired in, or earlier by `close`.
 *
 * @category models
 * @since 0.1.0
 */
export interface Connection {
  /** the OS socket descriptor (what `PQcancelSocket` returns), or -1 when there is none or it is unknown */
  readonly fd: () => number
  /** every outcome of this socket, in order */
  readonly events: Queue.Dequeue<TransportEvent>
  /** queue bytes for writing; a write error arrives as an `IoError` event */
  readonly write: (bytes: Uint8Array) => Effect.Effect<void>
  /** begin a TLS handshake on this socket; the outcome arrives as `TlsEstablished` or `TlsFailed` */
  readonly startTls: (request: TlsRequest) => Effect.Effect<void>
  /** begin GSS encryption; the outcome arrives as `GssEstablished` or `GssFailed` */
  readonly startGss: Effect.Effect<void>
  /** close the socket now (idempotent) */
  readonly close: Effect.Effect<void>
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
  /** start connecting; the outcome arrives on the connection's `events` as `Connected` or `ConnectFailed` */
  readonly connect: (request: ConnectRequest) => Effect.Effect<Connection, never, Scope.Scope>
  /** whether GSS encryption could be attempted (libpq's `pg_GSS_have_cred_cache`); false without a GSS provider */
  readonly gssCredentialsAvailable: (options: ConnectionOptions) => Effect.Effect<boolean>
}>()("@pqcancel/core/Transport") {}
