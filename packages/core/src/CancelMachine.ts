/**
 * The sans-IO cancel state machine: libpq 18's `PQcancelStart` / `PQcancelPoll` (and the `PQconnectPoll` states a
 * cancel connection walks through) as a pure function from `(state, event)` to `(state, actions)`.
 *
 * Every cancel path of pqcancel (the blocking and polling API, the legacy API, the benchmarks and the model tests)
 * steps this one machine; the I/O around it only executes the actions it returns and feeds back what happened.
 *
 * - statuses: `ALLOCATED`, `STARTED`, `MADE`, `AWAITING_RESPONSE`, `SSL_STARTUP`, `GSS_STARTUP`, `OK`, `BAD`
 * - polling results: `READING`, `WRITING`, `OK`, `FAILED`, step for step as libpq's: `WRITING`/`MADE` after the
 *   connect, after a TLS/GSS handshake and after a refusal on the same socket; the poll after that sends the next
 *   packet without waiting for I/O ({@link advancesOnPoll})
 * - encryption selection exactly as libpq's `init_allowed_encryption_methods` / `select_next_encryption_method`:
 *   GSS first (when a credential is available), then, for `sslmode=allow`, plaintext before TLS, otherwise TLS
 *   before plaintext; a refused SSLRequest (`'N'`) falls back on the same socket, a failed handshake on a new one;
 *   with `require`/`verify-*` the key is never written before TLS is up.
 *
 * @example
 * ```ts
 * import { CancelMachine } from "@pqcancel/core"
 *
 * declare const config: CancelMachine.MachineConfig
 * let state = CancelMachine.initial
 * const started = CancelMachine.step(config, state, CancelMachine.Events.start)
 * state = started.state // STARTED; started.actions holds the Connect action
 * ```
 *
 * @module
 * @since 0.1.0
 */
import * as Redacted from "effect/Redacted"
import type { CancelKey } from "./CancelKey.ts"
import type { GssEncMode, HostEntry, SslMode, SslNegotiation } from "./ConnectionOptions.ts"
import * as checks from "./internal/optionChecks.ts"
import * as Protocol from "./Protocol.ts"

/**
 * libpq's `ConnStatusType` values a cancel connection can be in.
 *
 * @category models
 * @since 0.1.0
 */
export type Status =
  | "ALLOCATED"
  | "STARTED"
  | "MADE"
  | "AWAITING_RESPONSE"
  | "SSL_STARTUP"
  | "GSS_STARTUP"
  | "OK"
  | "BAD"

/**
 * libpq's `PostgresPollingStatusType`: what the caller should wait for before polling again.
 *
 * @category models
 * @since 0.1.0
 */
export type PollingStatus = "READING" | "WRITING" | "OK" | "FAILED"

/**
 * The concrete address a cancel goes to: the remote address the original session's socket connected to.
 *
 * @category models
 * @since 0.1.0
 */
export type RemoteAddress =
  | { readonly _tag: "Tcp"; readonly address: string; readonly port: number; readonly family: 4 | 6 }
  | { readonly _tag: "Unix"; readonly path: string }

/**
 * What the TLS layer must do and verify for a handshake, derived from the options by {@link makeConfig}.
 *
 * @category models
 * @since 0.1.0
 */
export interface TlsRequest {
  readonly direct: boolean
  readonly sslmode: SslMode
  /** host name for SNI (undefined when `sslsni=0` or the host is an IP literal) */
  readonly servername: string | undefined
  /** host name verify-full checks the certificate against */
  readonly verifyHost: string | undefined
}

/**
 * What the GSS layer needs for a handshake, derived from the options by {@link makeConfig}.
 *
 * @category models
 * @since 0.1.0
 */
export interface GssRequest {
  /** libpq's `PQhost`: the host name, else hostaddr; the target is `<krbsrvname>@<host>` (undefined on a socket) */
  readonly host: string | undefined
}

/**
 * Effects the machine asks its driver to perform, in order.
 *
 * @category models
 * @since 0.1.0
 */
export type Action =
  | { readonly _tag: "Connect"; readonly address: RemoteAddress }
  | {
    readonly _tag: "Write"
    readonly kind: "SSLRequest" | "GSSENCRequest" | "CancelRequest"
    /** the packet; `Redacted` because a CancelRequest carries the secret key */
    readonly bytes: Redacted.Redacted<Uint8Array>
    /** whether the bytes travel inside TLS/GSS encryption */
    readonly encrypted: boolean
  }
  | { readonly _tag: "StartTls"; readonly request: TlsRequest }
  | { readonly _tag: "StartGss"; readonly request: GssRequest }
  | { readonly _tag: "Close" }

/**
 * What happened: a call of the API or an I/O outcome reported by the driver.
 *
 * @category models
 * @since 0.1.0
 */
export type Event =
  | { readonly _tag: "Start" }
  | { readonly _tag: "Poll" }
  | { readonly _tag: "Reset" }
  | { readonly _tag: "Connected" }
  | {
    readonly _tag: "ConnectFailed"
    /** the C library's text, e.g. `Connection refused` */
    readonly message: string
    /** the errno value, e.g. 111 (the legacy `PQcancel` prints only this: it cannot call strerror) */
    readonly errno?: number | undefined
    /** the errno name, e.g. `ECONNREFUSED` (tells a transient failure from one that would happen again) */
    readonly code?: string | undefined
  }
  | { readonly _tag: "Data"; readonly bytes: Uint8Array }
  /** the transport refused the connected peer (libpq's `requirepeer` checks on unix sockets) */
  | { readonly _tag: "PeerRejected"; readonly message: string }
  | { readonly _tag: "Eof" }
  | { readonly _tag: "IoError"; readonly code: string | undefined; readonly message: string }
  | { readonly _tag: "TlsEstablished"; readonly alpn: string | false }
  | {
    readonly _tag: "TlsFailed"
    readonly message: string
    /**
     * why, when the network failed the handshake rather than TLS: the errno name (`ECONNRESET`, `EPIPE`), or `EOF`
     * when the server closed during it (a new attempt may succeed); absent for certificate and protocol failures
     */
    readonly code?: string | undefined
  }
  | { readonly _tag: "GssEstablished" }
  | {
    readonly _tag: "GssFailed"
    readonly message: string
    /** as `TlsFailed`'s: `EOF` or an errno name when the network, not GSSAPI, failed the handshake */
    readonly code?: string | undefined
  }
  | { readonly _tag: "Deadline" }

/**
 * Preallocated events without payload, so drivers don't allocate per step.
 *
 * @category constructors
 * @since 0.1.0
 */
export const Events = {
  start: { _tag: "Start" } as Event,
  poll: { _tag: "Poll" } as Event,
  reset: { _tag: "Reset" } as Event,
  connected: { _tag: "Connected" } as Event,
  eof: { _tag: "Eof" } as Event,
  deadline: { _tag: "Deadline" } as Event,
  gssEstablished: { _tag: "GssEstablished" } as Event
} as const

const METHOD_NONE = 0
const METHOD_PLAIN = 1
const METHOD_GSS = 2
const METHOD_SSL = 4

/**
 * The machine's state. Small and immutable: a step allocates one of these.
 *
 * @category models
 * @since 0.1.0
 */
export interface State {
  readonly status: Status
  readonly polling: PollingStatus
  /** bitmask of encryption methods still allowed (1 plaintext, 2 GSS, 4 TLS) */
  readonly allowed: number
  /** bitmask of methods that already failed */
  readonly failed: number
  /** the method of the current attempt */
  readonly method: number
  /** TLS or GSS encryption is up on the current socket */
  readonly encrypted: boolean
  /** a TLS or GSS handshake the machine asked for is under way (`SSL_STARTUP` / `GSS_STARTUP`, `READING`) */
  readonly handshaking: boolean
  /** whether a socket is open */
  readonly open: boolean
  /** accumulated libpq error text (each message ends with "\n"); empty after success */
  readonly error: string
}

/**
 * A freshly created cancel connection (`CONNECTION_ALLOCATED`).
 *
 * @category constructors
 * @since 0.1.0
 */
export const initial: State = {
  status: "ALLOCATED",
  polling: "WRITING",
  allowed: 0,
  failed: 0,
  method: METHOD_NONE,
  encrypted: false,
  handshaking: false,
  open: false,
  error: ""
}

/**
 * A state that is `BAD` from the start (a failed `PQcancelCreate`), carrying its message.
 *
 * @category constructors
 * @since 0.1.0
 */
export const failedState = (message: string): State => ({
  ...initial,
  status: "BAD",
  polling: "FAILED",
  error: message
})

/**
 * Everything fixed for the life of a cancel connection; built once by {@link makeConfig}. Actions are preallocated
 * here so a step allocates only its result.
 *
 * @category models
 * @since 0.1.0
 */
export interface MachineConfig {
  readonly address: RemoteAddress
  readonly sslmode: SslMode
  readonly sslnegotiation: SslNegotiation
  readonly gssencmode: GssEncMode
  /** whether a GSS provider has a credential (libpq's `pg_GSS_have_cred_cache`) */
  readonly gssAvailable: boolean
  /**
   * libpq's legacy `PQcancel`: plaintext only, no host prefix, `PQcancel() -- …` messages, and any reply or read
   * error after the request counts as success
   */
  readonly legacy: boolean
  /** libpq's `emitHostIdentityInfo` prefix, e.g. `connection to server at "h" (10.0.0.1), port 5432 failed: ` */
  readonly hostPrefix: string
  readonly actions: {
    readonly connect: Action
    readonly close: Action
    readonly sslRequest: Action
    readonly gssRequest: Action
    readonly cancelPlain: Action
    readonly cancelEncrypted: Action
    readonly startTls: Action
    readonly startTlsDirect: Action
    readonly startGss: Action
  }
}

const SSL_REQUEST = Redacted.make(Protocol.sslRequest)
const GSSENC_REQUEST = Redacted.make(Protocol.gssEncRequest)

const isIpLiteral = (host: string): boolean => /^[0-9.]+$/.test(host) || host.includes(":")

/**
 * libpq's `emitHostIdentityInfo`: the prefix that attributes every connect-phase error to its server.
 *
 * @category constructors
 * @since 0.1.0
 */
export const hostPrefix = (host: HostEntry, address: RemoteAddress): string => {
  if (address._tag === "Unix") return `connection to server on socket "${address.path}" failed: `
  const port = host.port
  if (host._tag === "Tcp" && host.hostaddr !== undefined) {
    return `connection to server at "${host.hostaddr}", port ${port} failed: `
  }
  const displayed = host._tag === "Tcp" && host.host !== undefined ? host.host : address.address
  return displayed !== address.address
    ? `connection to server at "${displayed}" (${address.address}), port ${port} failed: `
    : `connection to server at "${displayed}", port ${port} failed: `
}

// the actions that are the same for every cancel connection
const CLOSE: Action = { _tag: "Close" }
const SSL_REQUEST_WRITE: Action = { _tag: "Write", kind: "SSLRequest", bytes: SSL_REQUEST, encrypted: false }
const GSSENC_REQUEST_WRITE: Action = { _tag: "Write", kind: "GSSENCRequest", bytes: GSSENC_REQUEST, encrypted: false }

// The CancelRequest of a key, encoded once per key object: a key is immutable and a session cancels with the same one
// (adapters keep it per connection), so a cancel allocates no packet and registers no new Redacted. The packet lives
// as long as the key it copies.
const cancelPackets = new WeakMap<CancelKey, Redacted.Redacted<Uint8Array>>()
const cancelPacket = (key: CancelKey): Redacted.Redacted<Uint8Array> => {
  let packet = cancelPackets.get(key)
  if (packet === undefined) {
    packet = Redacted.make(Protocol.encodeCancelRequest(key), { label: "CancelRequest" })
    cancelPackets.set(key, packet)
  }
  return packet
}

/**
 * Builds the fixed configuration of a cancel connection.
 *
 * @category constructors
 * @since 0.1.0
 */
export const makeConfig = (options: {
  readonly host: HostEntry
  readonly address: RemoteAddress
  readonly sslmode: SslMode
  readonly sslnegotiation: SslNegotiation
  readonly gssencmode: GssEncMode
  readonly sslsni: boolean
  readonly gssAvailable: boolean
  readonly key: CancelKey
  readonly legacy?: boolean | undefined
}): MachineConfig => {
  const name = options.host._tag === "Tcp" ? (options.host.host ?? options.host.hostaddr) : undefined
  const servername = options.sslsni && name !== undefined && !isIpLiteral(name) ? name : undefined
  const request = (direct: boolean): TlsRequest => ({
    direct,
    sslmode: options.sslmode,
    servername,
    verifyHost: name
  })
  const cancel = cancelPacket(options.key)
  return {
    address: options.address,
    sslmode: options.sslmode,
    sslnegotiation: options.sslnegotiation,
    gssencmode: options.gssencmode,
    gssAvailable: options.gssAvailable,
    legacy: options.legacy === true,
    hostPrefix: options.legacy === true ? "" : hostPrefix(options.host, options.address),
    actions: {
      connect: { _tag: "Connect", address: options.address },
      close: CLOSE,
      sslRequest: SSL_REQUEST_WRITE,
      gssRequest: GSSENC_REQUEST_WRITE,
      cancelPlain: { _tag: "Write", kind: "CancelRequest", bytes: cancel, encrypted: false },
      cancelEncrypted: { _tag: "Write", kind: "CancelRequest", bytes: cancel, encrypted: true },
      startTls: { _tag: "StartTls", request: request(false) },
      startTlsDirect: { _tag: "StartTls", request: request(true) },
      startGss: { _tag: "StartGss", request: { host: name } }
    }
  }
}

/**
 * The result of one step.
 *
 * @category models
 * @since 0.1.0
 */
export interface Step {
  readonly state: State
  readonly actions: ReadonlyArray<Action>
  /** for `Start`: libpq's `PQcancelStart` return value (1 ⇒ true) */
  readonly accepted: boolean
}

const NO_ACTIONS: ReadonlyArray<Action> = []

/**
 * libpq's texts, without their trailing newline.
 *
 * @category constants
 * @since 0.1.0
 */
export const Messages = {
  alreadySending: "cancel request is already being sent on this connection",
  unexpectedResponse: "unexpected response from server",
  timeout: "timeout expired",
  invalidState: "invalid connection state, probably indicative of memory corruption",
  sslRequired: "server does not support SSL, but SSL was required",
  sslErrorResponse: "server sent an error response during SSL exchange",
  sslUnencryptedData: "received unencrypted data after SSL response",
  gssRequired: "server doesn't support GSSAPI encryption, but it was required",
  gssErrorResponse: "server sent an error response during GSS encryption exchange",
  gssUnencryptedData: "received unencrypted data after GSSAPI encryption response",
  gssLocalSocket: "GSSAPI encryption required but it is not supported over a local socket",
  gssNoCredentials: "GSSAPI encryption required but no credential cache",
  noAlpn: "direct SSL connection was established without ALPN protocol negotiation extension",
  wrongAlpn: "SSL connection was established with unexpected ALPN protocol",
  serverClosed: "server closed the connection unexpectedly\n" +
    "\tThis probably means the server terminated abnormally\n" +
    "\tbefore or while processing the request.",
  tcpHint: "\tIs the server running on that host and accepting TCP/IP connections?",
  unixHint: "\tIs the server running locally and accepting connections on that socket?",
  invalidSslResponse: (byte: number) => `received invalid response to SSL negotiation: ${String.fromCharCode(byte)}`,
  invalidGssResponse: (byte: number) => `received invalid response to GSSAPI negotiation: ${String.fromCharCode(byte)}`,
  receiveFailed: (reason: string) => `could not receive data from server: ${reason}`
} as const

const make = (
  prev: State,
  status: Status,
  polling: PollingStatus,
  changes?: Partial<Omit<State, "status" | "polling">>
): State => ({
  status,
  polling,
  allowed: changes?.allowed ?? prev.allowed,
  failed: changes?.failed ?? prev.failed,
  method: changes?.method ?? prev.method,
  encrypted: changes?.encrypted ?? prev.encrypted,
  handshaking: changes?.handshaking ?? prev.handshaking,
  open: changes?.open ?? prev.open,
  error: changes?.error ?? prev.error
})

const result = (state: State, actions: ReadonlyArray<Action> = NO_ACTIONS, accepted = false): Step => ({
  state,
  actions,
  accepted
})

// libpq's `error_return`: status BAD, the socket is left for Reset/Finish to close.
const bad = (state: State, message: string): Step =>
  result(make(state, "BAD", "FAILED", { error: state.error + message + "\n" }))

// select_next_encryption_method
const nextMethod = (config: MachineConfig, allowed: number, failed: number): number => {
  const remaining = allowed & ~failed
  if (remaining & METHOD_GSS) return METHOD_GSS
  if (config.sslmode === "allow" && remaining & METHOD_PLAIN) return METHOD_PLAIN
  if (remaining & METHOD_SSL) return METHOD_SSL
  if (remaining & METHOD_PLAIN) return METHOD_PLAIN
  return METHOD_NONE
}

// init_allowed_encryption_methods, with the gssencmode=require checks libpq makes before it
const initMethods = (config: MachineConfig): { allowed: number; error: string | undefined } => {
  if (config.legacy) return { allowed: METHOD_PLAIN, error: undefined }
  // safety invariant, whatever validated the options: direct TLS never runs with a sslmode that allows plaintext,
  // so a failed direct attempt can never fall back to a plaintext CancelRequest
  const weakDirect = checks.checkSslNegotiation(config.sslmode, config.sslnegotiation)
  if (weakDirect !== undefined) return { allowed: 0, error: weakDirect }
  if (config.address._tag === "Unix") {
    return config.gssencmode === "require"
      ? { allowed: 0, error: Messages.gssLocalSocket }
      : { allowed: METHOD_PLAIN, error: undefined }
  }
  if (config.gssencmode === "require" && !config.gssAvailable) {
    return { allowed: 0, error: Messages.gssNoCredentials }
  }
  let allowed = 0
  if (config.sslmode !== "disable" && config.gssencmode !== "require") allowed |= METHOD_SSL
  if (config.gssencmode !== "disable" && config.gssAvailable) allowed |= METHOD_GSS
  const weakSsl = config.sslmode === "disable" || config.sslmode === "prefer" || config.sslmode === "allow"
  if (weakSsl && config.gssencmode !== "require" && config.sslnegotiation !== "direct") allowed |= METHOD_PLAIN
  return { allowed, error: undefined }
}

// CONNECTION_NEEDED: open a (new) socket to the one address, announcing the host in the error buffer
const connect = (config: MachineConfig, state: State, method: number, closeFirst: boolean): Step =>
  result(
    make(state, "STARTED", "WRITING", {
      method,
      encrypted: false,
      handshaking: false,
      open: true,
      error: state.error + config.hostPrefix
    }),
    closeFirst ? [config.actions.close, config.actions.connect] : [config.actions.connect]
  )

// libpq returns WRITING/MADE after connecting, after a handshake and after a refusal on the same socket: the next
// poll (the socket is writable at once) runs CONNECTION_MADE
const toMade = (state: State, changes?: Partial<Omit<State, "status" | "polling">>): Step =>
  result(make(state, "MADE", "WRITING", { handshaking: false, ...changes }))

// CONNECTION_MADE: negotiate encryption or send the CancelRequest
const made = (config: MachineConfig, state: State): Step => {
  if (state.method === METHOD_GSS && !state.encrypted) {
    return result(make(state, "GSS_STARTUP", "READING"), [config.actions.gssRequest])
  }
  if (state.method === METHOD_SSL && !state.encrypted) {
    // direct: SSL_STARTUP, WRITING; the next poll starts the handshake (pqsecure_open_client)
    return config.sslnegotiation === "direct"
      ? result(make(state, "SSL_STARTUP", "WRITING"))
      : result(make(state, "SSL_STARTUP", "READING"), [config.actions.sslRequest])
  }
  // a plaintext CancelRequest over TCP with direct TLS configured is impossible (initMethods never allows it): never
  // send one (unix sockets never encrypt, as in libpq)
  if (!state.encrypted && config.sslnegotiation === "direct" && !config.legacy && config.address._tag === "Tcp") {
    return bad(state, checks.checkSslNegotiation(config.sslmode, config.sslnegotiation) ?? Messages.invalidState)
  }
  return result(
    make(state, "AWAITING_RESPONSE", "READING"),
    [state.encrypted ? config.actions.cancelEncrypted : config.actions.cancelPlain]
  )
}

// ENCRYPTION_NEGOTIATION_FAILED: 0 ⇒ error, same socket, or a new socket for direct TLS
const negotiationFailed = (config: MachineConfig, state: State, message: string): Step => {
  const failed = state.failed | state.method
  const method = nextMethod(config, state.allowed, failed)
  if (method === METHOD_NONE) return bad(make(state, state.status, state.polling, { failed }), message)
  if (method === METHOD_SSL && config.sslnegotiation === "direct") {
    return connect(config, make(state, state.status, state.polling, { failed }), method, true)
  }
  return toMade(state, { failed, method })
}

// CONNECTION_FAILED: the attempt with this method is over; a new socket with the next method, or BAD
const connectionFailed = (config: MachineConfig, state: State, message: string): Step => {
  const failed = state.failed | state.method
  const withError = make(state, state.status, state.polling, {
    failed,
    handshaking: false,
    error: state.error + message + "\n"
  })
  const method = nextMethod(config, state.allowed, failed)
  if (method === METHOD_NONE) return result(make(withError, "BAD", "FAILED"))
  return connect(config, withError, method, true)
}

const readError = (event: { readonly code: string | undefined; readonly message: string }): string =>
  event.code === "ECONNRESET" || event.code === "EPIPE" ? Messages.serverClosed : Messages.receiveFailed(event.message)

// libpq's connectFailureMessage (or PQcancel's "connect() failed")
const connectFailure = (config: MachineConfig, reason: string, errno?: number): string => {
  // PQcancel is signal-safe: no strerror, only "error <errno>"
  if (config.legacy) return `PQcancel() -- connect() failed: ${errno === undefined ? reason : `error ${errno}`}`
  return `${reason}\n${config.address._tag === "Unix" ? Messages.unixHint : Messages.tcpHint}`
}

// the server closed the cancel connection: the request was dispatched
const succeeded = (config: MachineConfig, state: State): Step =>
  result(make(state, "OK", "OK", { error: "", open: false }), [config.actions.close])

const isNegotiating = (status: Status): boolean => status === "SSL_STARTUP" || status === "GSS_STARTUP"

/**
 * Whether the next poll advances without waiting for I/O: `MADE` (send the next packet) and, for direct TLS,
 * `SSL_STARTUP` + `WRITING` (start the handshake). libpq finds the socket writable at once there; a driver steps
 * {@link Events.poll} instead of waiting for a socket event.
 *
 * @category guards
 * @since 0.1.0
 */
export const advancesOnPoll = (state: State): boolean =>
  state.status === "MADE" || (state.status === "SSL_STARTUP" && state.polling === "WRITING" && !state.handshaking)

/**
 * One transition. Pure: the same inputs give the same outputs; the only allocation is the result.
 *
 * @category transitions
 * @since 0.1.0
 */
export const step = (config: MachineConfig, state: State, event: Event): Step => {
  switch (event._tag) {
    case "Start": {
      if (state.status === "BAD") return result(state)
      if (state.status !== "ALLOCATED") return bad(state, Messages.alreadySending)
      const init = initMethods(config)
      if (init.error !== undefined) return bad(make(state, state.status, state.polling, { allowed: 0 }), init.error)
      const method = nextMethod(config, init.allowed, 0)
      const started = connect(
        config,
        make(state, state.status, state.polling, { allowed: init.allowed }),
        method,
        false
      )
      return { ...started, accepted: true }
    }
    case "Reset":
      return result(initial, state.open ? [config.actions.close] : NO_ACTIONS)
    case "Poll": {
      if (state.status === "ALLOCATED") return bad(state, Messages.invalidState)
      if (state.status === "MADE") return made(config, state)
      if (state.status === "SSL_STARTUP" && state.polling === "WRITING" && !state.handshaking) {
        return result(make(state, "SSL_STARTUP", "READING", { handshaking: true }), [config.actions.startTlsDirect])
      }
      return result(state)
    }
  }
  // I/O events only matter while the request is in flight
  if (state.status === "OK" || state.status === "BAD" || state.status === "ALLOCATED") return result(state)
  switch (event._tag) {
    case "Deadline":
      return bad(state, Messages.timeout)
    case "ConnectFailed": {
      if (state.status !== "STARTED") return result(state)
      return bad(state, connectFailure(config, event.message, event.errno))
    }
    case "PeerRejected": {
      if (state.status !== "STARTED") return result(state)
      return bad(state, event.message)
    }
    case "Connected": {
      if (state.status !== "STARTED") return result(state)
      return toMade(state)
    }
    case "IoError": {
      if (state.status === "STARTED") return bad(state, connectFailure(config, event.message))
      if (config.legacy && state.status === "AWAITING_RESPONSE") return succeeded(config, state)
      return bad(state, readError(event))
    }
    case "Eof": {
      if (state.status === "AWAITING_RESPONSE") return succeeded(config, state)
      return bad(state, Messages.serverClosed)
    }
    case "Data": {
      const bytes = event.bytes
      if (bytes.length === 0) return result(state)
      if (state.status === "AWAITING_RESPONSE") {
        return config.legacy ? succeeded(config, state) : bad(state, Messages.unexpectedResponse)
      }
      if (state.status === "SSL_STARTUP") {
        // the handshake is under way (or, direct, about to start): plaintext bytes now are an attack or a broken
        // server
        if (state.handshaking || state.polling === "WRITING") return bad(state, Messages.sslUnencryptedData)
        const answer = bytes[0]!
        if (answer === 0x53 /* S */) {
          if (bytes.length > 1) return bad(state, Messages.sslUnencryptedData)
          // libpq reads 'S' and starts the handshake in the same poll: READING for the server's first flight
          return result(make(state, "SSL_STARTUP", "READING", { handshaking: true }), [config.actions.startTls])
        }
        if (answer === 0x4e /* N */) {
          if (bytes.length > 1) return bad(state, Messages.sslUnencryptedData)
          return negotiationFailed(config, state, Messages.sslRequired)
        }
        if (answer === 0x45 /* E */) return bad(state, Messages.sslErrorResponse)
        return bad(state, Messages.invalidSslResponse(answer))
      }
      if (state.status === "GSS_STARTUP") {
        if (state.handshaking) return bad(state, Messages.gssUnencryptedData)
        const answer = bytes[0]!
        if (answer === 0x47 /* G */) {
          if (bytes.length > 1) return bad(state, Messages.gssUnencryptedData)
          return result(make(state, "GSS_STARTUP", "READING", { handshaking: true }), [config.actions.startGss])
        }
        if (answer === 0x4e /* N */) {
          if (bytes.length > 1) return bad(state, Messages.gssUnencryptedData)
          return negotiationFailed(config, state, Messages.gssRequired)
        }
        if (answer === 0x45 /* E */) return connectionFailed(config, state, Messages.gssErrorResponse)
        return bad(state, Messages.invalidGssResponse(answer))
      }
      return bad(state, Messages.unexpectedResponse)
    }
    case "TlsEstablished": {
      // only a handshake the machine asked for counts
      if (state.status !== "SSL_STARTUP" || !state.handshaking) return result(state)
      if (config.sslnegotiation === "direct") {
        // libpq fails the attempt (CONNECTION_FAILED) when direct TLS came up without ALPN "postgresql"
        if (event.alpn === false) return connectionFailed(config, state, Messages.noAlpn)
        if (event.alpn !== "postgresql") return connectionFailed(config, state, Messages.wrongAlpn)
      }
      // libpq: "SSL handshake done, ready to send startup packet": MADE, WRITING
      return toMade(state, { encrypted: true })
    }
    case "TlsFailed": {
      if (state.status !== "SSL_STARTUP" || !state.handshaking) return result(state)
      return connectionFailed(config, state, event.message)
    }
    case "GssEstablished": {
      if (state.status !== "GSS_STARTUP" || !state.handshaking) return result(state)
      return toMade(state, { encrypted: true })
    }
    case "GssFailed": {
      if (state.status !== "GSS_STARTUP" || !state.handshaking) return result(state)
      return connectionFailed(config, state, event.message)
    }
  }
}

/**
 * Whether the machine is done (`OK` or `BAD`).
 *
 * @category guards
 * @since 0.1.0
 */
export const isTerminal = (state: State): boolean => state.status === "OK" || state.status === "BAD"

/**
 * Whether the machine is waiting on I/O between `start` and a terminal state.
 *
 * @category guards
 * @since 0.1.0
 */
export const isInFlight = (state: State): boolean =>
  state.status === "STARTED" || state.status === "MADE" || state.status === "AWAITING_RESPONSE" ||
  isNegotiating(state.status)
