/**
 * The smallest honest PostgreSQL client a cancellation test needs, written directly on `node:net` / `node:tls`:
 * plain TCP (IPv4/IPv6) or Unix sockets, TLS through SSLRequest or direct TLS (ALPN `postgresql`), protocol 3.0 or
 * 3.2 (with NegotiateProtocolVersion), trust / cleartext / MD5 / SCRAM-SHA-256 authentication, the simple query
 * protocol, and the BackendKeyData a cancel request needs.
 *
 * A session is scoped: the socket is closed (Terminate, then destroy) when the Scope closes.
 *
 * @example
 * ```ts
 * import * as Effect from "effect/Effect"
 * import { EmbeddedPostgres, TestSession } from "@pqcancel/test-utils"
 *
 * const program = Effect.gen(function*() {
 *   const pg = yield* EmbeddedPostgres.EmbeddedPostgres
 *   const session = yield* TestSession.connectTo(pg, { transport: "tcp", tls: "sslrequest", protocol: "3.2" })
 *   const sleeping = yield* session.startQuery("SELECT pg_sleep(60)")
 *   const monitor = yield* TestSession.connectTo(pg)
 *   yield* TestSession.waitUntilSleeping(monitor, session.backendKey.pid)
 *   yield* monitor.query(`SELECT pg_cancel_backend(${session.backendKey.pid})`)
 *   const result = yield* sleeping.result // { _tag: "Error", sqlstate: "57014", ... }
 * })
 * ```
 *
 * @since 0.1.0
 */
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Schedule from "effect/Schedule"
import * as Schema from "effect/Schema"
import type * as Scope from "effect/Scope"
import * as Semaphore from "effect/Semaphore"
import * as Crypto from "node:crypto"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Tls from "node:tls"
import * as Wire from "./internal/wire.ts"

// ---------------------------------------------------------------------------------------------------------------------
// errors
// ---------------------------------------------------------------------------------------------------------------------

/**
 * The socket could not be opened (refused, unreachable, bad path) or the connect timeout expired.
 *
 * @category errors
 * @since 0.1.0
 */
export class ConnectError
  extends Schema.TaggedError<ConnectError>("@pqcancel/test-utils/TestSession/ConnectError")("ConnectError", {
    address: Schema.String,
    message: Schema.String
  })
{}

/**
 * TLS could not be established: the server answered `N` to an SSLRequest, or the handshake (certificate
 * verification, ALPN, …) failed.
 *
 * @category errors
 * @since 0.1.0
 */
export class TlsError extends Schema.TaggedError<TlsError>("@pqcancel/test-utils/TestSession/TlsError")("TlsError", {
  message: Schema.String
}) {}

/**
 * The server refused the connection during startup/authentication with an ErrorResponse (e.g. `28000` from
 * pg_hba.conf, `28P01` for a wrong password).
 *
 * @category errors
 * @since 0.1.0
 */
export class StartupRejected
  extends Schema.TaggedError<StartupRejected>("@pqcancel/test-utils/TestSession/StartupRejected")("StartupRejected", {
    severity: Schema.String,
    sqlstate: Schema.String,
    message: Schema.String
  })
{}

/**
 * Authentication could not be carried out by this client: unsupported method, missing password, or the server's
 * SCRAM signature did not verify.
 *
 * @category errors
 * @since 0.1.0
 */
export class AuthError
  extends Schema.TaggedError<AuthError>("@pqcancel/test-utils/TestSession/AuthError")("AuthError", {
    message: Schema.String
  })
{}

/**
 * The server sent something this client does not accept (unexpected message, invalid BackendKeyData, plaintext
 * bytes after the `S` of an SSLRequest, …).
 *
 * @category errors
 * @since 0.1.0
 */
export class ProtocolError
  extends Schema.TaggedError<ProtocolError>("@pqcancel/test-utils/TestSession/ProtocolError")("ProtocolError", {
    message: Schema.String
  })
{}

/**
 * The connection ended while a message was expected (server crash, `pg_terminate_backend`, RST, …).
 *
 * @category errors
 * @since 0.1.0
 */
export class SessionClosed
  extends Schema.TaggedError<SessionClosed>("@pqcancel/test-utils/TestSession/SessionClosed")("SessionClosed", {
    message: Schema.String
  })
{}

/**
 * A bounded wait (`waitUntilSleeping`, `waitUntilIdle`, `waitUntil`) gave up.
 *
 * @category errors
 * @since 0.1.0
 */
export class WaitTimeout
  extends Schema.TaggedError<WaitTimeout>("@pqcancel/test-utils/TestSession/WaitTimeout")("WaitTimeout", {
    message: Schema.String
  })
{}

/**
 * Every error `connect` can fail with.
 *
 * @category errors
 * @since 0.1.0
 */
export type ConnectFailure = ConnectError | TlsError | StartupRejected | AuthError | ProtocolError | SessionClosed

/**
 * Every error a query can fail with (a server ErrorResponse is not a failure: see {@link QueryResult}).
 *
 * @category errors
 * @since 0.1.0
 */
export type QueryFailure = ProtocolError | SessionClosed

// ---------------------------------------------------------------------------------------------------------------------
// models
// ---------------------------------------------------------------------------------------------------------------------

/**
 * How to reach the server.
 *
 * @category models
 * @since 0.1.0
 */
export type Transport = "tcp" | "tcp6" | "unix"

/**
 * `disable`: plaintext; `sslrequest`: SSLRequest then TLS on the same socket (fails on `N`); `direct`: TLS from the
 * first byte with ALPN `postgresql` (PG 17+).
 *
 * @category models
 * @since 0.1.0
 */
export type TlsMode = "disable" | "sslrequest" | "direct"

/**
 * Frontend/backend protocol version.
 *
 * @category models
 * @since 0.1.0
 */
export type ProtocolVersion = "3.0" | "3.2"

/**
 * @category models
 * @since 0.1.0
 */
export interface ConnectOptions {
  readonly transport: Transport
  /** Host for `tcp` / `tcp6`; defaults to `127.0.0.1` / `::1`. */
  readonly host?: string | undefined
  readonly port: number
  /** Full path of the Unix socket (`<dir>/.s.PGSQL.<port>`), required for `unix`. */
  readonly socketPath?: string | undefined
  /** Default `disable`. */
  readonly tls?: TlsMode | undefined
  /** Trusted CA (PEM text). When given, the server certificate is verified (`verify-full` with `servername`). */
  readonly ca?: string | undefined
  /** Verify the server certificate; defaults to `ca !== undefined`. */
  readonly rejectUnauthorized?: boolean | undefined
  /** SNI and the name the certificate is checked against; default `localhost`. */
  readonly servername?: string | undefined
  /** Client certificate / key (PEM text) for `cert` authentication. */
  readonly clientCert?: string | undefined
  readonly clientKey?: string | undefined
  readonly clientKeyPassphrase?: string | undefined
  /** Protocol version requested in the StartupMessage; default `3.0`. */
  readonly protocol?: ProtocolVersion | undefined
  /** Default `postgres`. */
  readonly user?: string | undefined
  /** Default `postgres`. */
  readonly database?: string | undefined
  readonly password?: string | undefined
  /** Extra StartupMessage parameters (`application_name`, `options`, …). */
  readonly parameters?: Record<string, string> | undefined
  /** Bound on the whole connection establishment; default 10 seconds. */
  readonly connectTimeout?: Duration.Input | undefined
}

/**
 * The backend's cancellation key as received in BackendKeyData, with the negotiated protocol version.
 *
 * @category models
 * @since 0.1.0
 */
export interface BackendKey {
  readonly pid: number
  readonly secret: Uint8Array
  readonly protocolVersion: ProtocolVersion
}

/**
 * The address the socket actually connected to.
 *
 * @category models
 * @since 0.1.0
 */
export type Remote =
  | { readonly _tag: "Tcp"; readonly address: string; readonly port: number; readonly family: 4 | 6 }
  | { readonly _tag: "Unix"; readonly path: string }

/**
 * Outcome of a simple query. A server error is a value (tests assert on `sqlstate`), not a failure.
 *
 * @category models
 * @since 0.1.0
 */
export type QueryResult =
  | {
    readonly _tag: "Ok"
    /** Rows of the last row-returning statement, text format. */
    readonly rows: Array<Array<string | null>>
    /** Command tag of the last statement, e.g. `SELECT 1`. */
    readonly command: string
  }
  | {
    readonly _tag: "Error"
    readonly sqlstate: string
    readonly message: string
    readonly severity: string
  }

/**
 * A query that has been sent; `result` waits for its outcome (it can be awaited once or many times).
 *
 * @category models
 * @since 0.1.0
 */
export interface PendingQuery {
  readonly result: Effect.Effect<QueryResult, QueryFailure>
}

/**
 * An established session.
 *
 * @category models
 * @since 0.1.0
 */
export interface TestSession {
  readonly backendKey: BackendKey
  readonly remote: Remote
  /** `server_version` ParameterStatus, e.g. `18.4`. */
  readonly serverVersion: string
  /** All ParameterStatus values received so far. */
  readonly parameters: ReadonlyMap<string, string>
  /** Whether the connection is TLS-encrypted. */
  readonly encrypted: boolean
  /** The TLS protocol (`TLSv1.3`) and ALPN result, when encrypted. */
  readonly tlsInfo: { readonly protocol: string | null; readonly alpn: string | false } | undefined
  /** Whether the server sent NegotiateProtocolVersion. */
  readonly negotiatedDown: boolean
  /** Runs a simple query and waits for ReadyForQuery. Queries on one session run one at a time. */
  readonly query: (sql: string) => Effect.Effect<QueryResult, QueryFailure>
  /** Sends a simple query now and returns a handle to await its outcome later. */
  readonly startQuery: (sql: string) => Effect.Effect<PendingQuery, QueryFailure>
  /** Sends Terminate and closes the socket (the Scope does this too). */
  readonly close: Effect.Effect<void>
}

/**
 * Where a cluster can be reached: `EmbeddedPostgres`'s service satisfies it.
 *
 * @category models
 * @since 0.1.0
 */
export interface Target {
  readonly host: string
  readonly host6: string | undefined
  readonly port: number
  readonly socketPath: string
  readonly caCertPath: string
}

// ---------------------------------------------------------------------------------------------------------------------
// internals
// ---------------------------------------------------------------------------------------------------------------------

const closed = (e: Wire.WireClosed) => new SessionClosed({ message: e.message })

const describeAddress = (options: ConnectOptions): string =>
  options.transport === "unix"
    ? (options.socketPath ?? "<no socket path>")
    : `${options.host ?? (options.transport === "tcp6" ? "::1" : "127.0.0.1")}:${options.port}`

const tlsOptions = (options: ConnectOptions): Tls.ConnectionOptions => {
  const o: Tls.ConnectionOptions = {
    servername: options.servername ?? "localhost",
    rejectUnauthorized: options.rejectUnauthorized ?? options.ca !== undefined
  }
  if (options.ca !== undefined) o.ca = options.ca
  if (options.clientCert !== undefined) o.cert = options.clientCert
  if (options.clientKey !== undefined) o.key = options.clientKey
  if (options.clientKeyPassphrase !== undefined) o.passphrase = options.clientKeyPassphrase
  return o
}

interface Streams {
  raw: Net.Socket | undefined
  secure: Tls.TLSSocket | undefined
}

const destroyStreams = (streams: Streams) =>
  Effect.sync(() => {
    streams.secure?.destroy()
    streams.raw?.destroy()
  })

/** Opens the transport (and, for direct TLS, completes the handshake). */
const open = (options: ConnectOptions, streams: Streams) =>
  Effect.callback<void, ConnectError | TlsError>((resume) => {
    const address = describeAddress(options)
    const direct = options.tls === "direct"
    const onError = (error: NodeJS.ErrnoException) => {
      resume(Effect.fail(
        direct && error.syscall === undefined
          ? new TlsError({ message: error.message })
          : new ConnectError({ address, message: error.message })
      ))
    }
    const target: Net.NetConnectOpts = options.transport === "unix"
      ? { path: options.socketPath ?? "" }
      : {
        host: options.host ?? (options.transport === "tcp6" ? "::1" : "127.0.0.1"),
        port: options.port,
        family: options.transport === "tcp6" ? 6 : 4
      }
    if (options.transport === "unix" && options.socketPath === undefined) {
      resume(Effect.fail(new ConnectError({ address, message: "transport unix needs socketPath" })))
      return
    }
    if (direct) {
      const secure = Tls.connect(
        { ...target, ...tlsOptions(options), ALPNProtocols: ["postgresql"] } as Tls.ConnectionOptions
      )
      streams.secure = secure
      secure.once("error", onError)
      secure.once("secureConnect", () => {
        secure.off("error", onError)
        resume(Effect.void)
      })
    } else {
      const raw = Net.connect(target)
      streams.raw = raw
      raw.once("error", onError)
      raw.once("connect", () => {
        raw.off("error", onError)
        resume(Effect.void)
      })
    }
  })

/** SSLRequest, one byte, then the TLS handshake on the same socket. */
const sslRequest = Effect.fnUntraced(function*(options: ConnectOptions, streams: Streams, reader: Wire.StreamReader) {
  const raw = streams.raw!
  raw.write(Wire.sslRequest())
  const answer = yield* reader.read(1).pipe(Effect.mapError(closed))
  const code = String.fromCharCode(answer[0]!)
  if (code === "N") return yield* new TlsError({ message: "server does not support SSL, but SSL was required" })
  if (code !== "S") {
    return yield* new TlsError({ message: `received invalid response to SSL negotiation: ${code}` })
  }
  if (reader.available > 0) {
    return yield* new ProtocolError({ message: "received unencrypted data after SSL response" })
  }
  reader.detach()
  yield* Effect.callback<void, TlsError>((resume) => {
    const secure = Tls.connect({ socket: raw, ...tlsOptions(options) })
    streams.secure = secure
    const onError = (error: Error) => resume(Effect.fail(new TlsError({ message: error.message })))
    secure.once("error", onError)
    secure.once("secureConnect", () => {
      secure.off("error", onError)
      resume(Effect.void)
    })
  })
  reader.attach(streams.secure!)
})

const sha256 = (data: Uint8Array) => Crypto.createHash("sha256").update(data).digest()
const hmac = (key: Uint8Array, data: string | Uint8Array) => Crypto.createHmac("sha256", key).update(data).digest()

/** Authentication exchange after the StartupMessage, up to and including AuthenticationOk. */
const authenticate = Effect.fnUntraced(function*(
  first: Buffer,
  options: ConnectOptions,
  write: (b: Uint8Array) => void,
  reader: Wire.StreamReader
) {
  const user = options.user ?? "postgres"
  const needPassword = () =>
    options.password === undefined
      ? Effect.fail(new AuthError({ message: "the server requested a password, but none was given" }))
      : Effect.succeed(options.password)
  const code = first.readInt32BE(0)
  switch (code) {
    case 0:
      return
    case 3: {
      const password = yield* needPassword()
      write(Wire.message("p", Wire.cstring(password)))
      break
    }
    case 5: {
      const password = yield* needPassword()
      const salt = first.subarray(4, 8)
      const inner = Crypto.createHash("md5").update(password + user).digest("hex")
      const outer = Crypto.createHash("md5").update(Buffer.concat([Buffer.from(inner), salt])).digest("hex")
      write(Wire.message("p", Wire.cstring(`md5${outer}`)))
      break
    }
    case 10: {
      const mechanisms = Wire.readCStrings(first.subarray(4)).filter((m) => m !== "")
      if (!mechanisms.includes("SCRAM-SHA-256")) {
        return yield* new AuthError({ message: `no supported SASL mechanism in ${mechanisms.join(", ")}` })
      }
      const password = yield* needPassword()
      const clientNonce = Crypto.randomBytes(18).toString("base64")
      const clientFirstBare = `n=,r=${clientNonce}`
      const clientFirst = Buffer.from(`n,,${clientFirstBare}`)
      write(
        Wire.message(
          "p",
          Buffer.concat([Wire.cstring("SCRAM-SHA-256"), Wire.int32(clientFirst.length), clientFirst])
        )
      )
      const cont = yield* reader.readMessage.pipe(Effect.mapError(closed))
      if (cont.type === "E") return yield* startupRejected(cont.body)
      if (cont.type !== "R" || cont.body.readInt32BE(0) !== 11) {
        return yield* new ProtocolError({ message: `expected AuthenticationSASLContinue, got '${cont.type}'` })
      }
      const serverFirst = cont.body.toString("utf8", 4)
      const attrs = new Map(serverFirst.split(",").map((kv) => [kv[0]!, kv.slice(2)] as const))
      const nonce = attrs.get("r")
      const salt = attrs.get("s")
      const iterations = Number(attrs.get("i"))
      if (nonce === undefined || salt === undefined || !nonce.startsWith(clientNonce) || !(iterations > 0)) {
        return yield* new AuthError({ message: `invalid SCRAM server-first-message: ${serverFirst}` })
      }
      const salted = Crypto.pbkdf2Sync(
        password.normalize("NFKC"),
        Buffer.from(salt, "base64"),
        iterations,
        32,
        "sha256"
      )
      const clientKey = hmac(salted, "Client Key")
      const storedKey = sha256(clientKey)
      const clientFinalWithoutProof = `c=biws,r=${nonce}`
      const authMessage = `${clientFirstBare},${serverFirst},${clientFinalWithoutProof}`
      const clientSignature = hmac(storedKey, authMessage)
      const proof = Buffer.from(clientKey.map((b, i) => b ^ clientSignature[i]!))
      const serverSignature = hmac(hmac(salted, "Server Key"), authMessage).toString("base64")
      write(Wire.message("p", Buffer.from(`${clientFinalWithoutProof},p=${proof.toString("base64")}`)))
      const final = yield* reader.readMessage.pipe(Effect.mapError(closed))
      if (final.type === "E") return yield* startupRejected(final.body)
      if (final.type !== "R" || final.body.readInt32BE(0) !== 12) {
        return yield* new ProtocolError({ message: `expected AuthenticationSASLFinal, got '${final.type}'` })
      }
      if (final.body.toString("utf8", 4) !== `v=${serverSignature}`) {
        return yield* new AuthError({ message: "SCRAM server signature does not verify" })
      }
      break
    }
    default:
      return yield* new AuthError({ message: `unsupported authentication request ${code}` })
  }
  const ok = yield* reader.readMessage.pipe(Effect.mapError(closed))
  if (ok.type === "E") return yield* startupRejected(ok.body)
  if (ok.type !== "R" || ok.body.readInt32BE(0) !== 0) {
    return yield* new ProtocolError({ message: `expected AuthenticationOk, got '${ok.type}'` })
  }
})

const startupRejected = (body: Buffer) => {
  const fields = Wire.parseErrorFields(body)
  return Effect.fail(
    new StartupRejected({
      severity: fields["V"] ?? fields["S"] ?? "FATAL",
      sqlstate: fields["C"] ?? "",
      message: fields["M"] ?? ""
    })
  )
}

/** Reads a simple-query response up to ReadyForQuery. */
const readQueryResult = Effect.fnUntraced(function*(reader: Wire.StreamReader, parameters: Map<string, string>) {
  let rows: Array<Array<string | null>> = []
  let command = ""
  let error: QueryResult | undefined = undefined
  while (true) {
    const msg = yield* reader.readMessage.pipe(Effect.mapError(closed))
    switch (msg.type) {
      case "T":
        rows = []
        break
      case "D": {
        const count = msg.body.readInt16BE(0)
        const row: Array<string | null> = []
        let offset = 2
        for (let i = 0; i < count; i++) {
          const length = msg.body.readInt32BE(offset)
          offset += 4
          if (length < 0) {
            row.push(null)
          } else {
            row.push(msg.body.toString("utf8", offset, offset + length))
            offset += length
          }
        }
        rows.push(row)
        break
      }
      case "C":
        command = Wire.readCStrings(msg.body)[0] ?? ""
        break
      case "I":
        command = ""
        break
      case "E": {
        const fields = Wire.parseErrorFields(msg.body)
        error = {
          _tag: "Error",
          sqlstate: fields["C"] ?? "",
          message: fields["M"] ?? "",
          severity: fields["V"] ?? fields["S"] ?? "ERROR"
        }
        break
      }
      case "S": {
        const [name, value] = Wire.readCStrings(msg.body)
        if (name !== undefined && value !== undefined) parameters.set(name, value)
        break
      }
      case "N":
      case "A":
        break
      case "Z":
        return error ?? { _tag: "Ok" as const, rows, command }
      default:
        return yield* new ProtocolError({ message: `unexpected message '${msg.type}' in query response` })
    }
  }
})

// ---------------------------------------------------------------------------------------------------------------------
// constructors
// ---------------------------------------------------------------------------------------------------------------------

/**
 * Opens a session and runs startup up to the first ReadyForQuery. The socket is closed when the Scope closes.
 *
 * @category constructors
 * @since 0.1.0
 */
export const connect: (options: ConnectOptions) => Effect.Effect<TestSession, ConnectFailure, Scope.Scope> = Effect
  .fn("TestSession.connect")(function*(options: ConnectOptions) {
    const streams: Streams = { raw: undefined, secure: undefined }
    const scope = yield* Effect.scope
    yield* Effect.addFinalizer(() => destroyStreams(streams))
    const reader = new Wire.StreamReader()
    const write = (bytes: Uint8Array) => {
      ;(streams.secure ?? streams.raw)?.write(bytes)
    }
    const requested: ProtocolVersion = options.protocol ?? "3.0"
    const handshake = Effect.gen(function*() {
      yield* open(options, streams)
      reader.attach((streams.secure ?? streams.raw)!)
      if (options.tls === "sslrequest") yield* sslRequest(options, streams, reader)
      write(
        Wire.startupMessage(requested === "3.2" ? Wire.PROTOCOL_3_2 : Wire.PROTOCOL_3_0, {
          user: options.user ?? "postgres",
          database: options.database ?? "postgres",
          ...options.parameters
        })
      )
      const parameters = new Map<string, string>()
      let protocolVersion: ProtocolVersion = requested
      let negotiatedDown = false
      let key: { pid: number; secret: Uint8Array } | undefined = undefined
      let authenticated = false
      while (true) {
        const msg = yield* reader.readMessage.pipe(Effect.mapError(closed))
        if (msg.type === "E") return yield* startupRejected(msg.body)
        if (msg.type === "R" && !authenticated) {
          yield* authenticate(msg.body, options, write, reader)
          authenticated = true
        } else if (msg.type === "v") {
          // PostgreSQL sends the full version code (3 << 16 | minor), as libpq compares it
          const version = msg.body.readInt32BE(0)
          const minor = version & 0xffff
          if (version >>> 16 !== 3 || (minor !== 0 && minor !== 2)) {
            return yield* new ProtocolError({
              message: `server negotiated unsupported protocol ${version >>> 16}.${minor}`
            })
          }
          protocolVersion = minor === 2 ? "3.2" : "3.0"
          negotiatedDown = true
        } else if (msg.type === "S") {
          const [name, value] = Wire.readCStrings(msg.body)
          if (name !== undefined && value !== undefined) parameters.set(name, value)
        } else if (msg.type === "K") {
          const length = msg.body.length - 4
          if (protocolVersion === "3.0" && length !== 4) {
            return yield* new ProtocolError({
              message:
                `received invalid BackendKeyData message: cancel key with length ${length} not allowed in protocol version 3.0 (must be 4 bytes)`
            })
          }
          if (length < 4 || length > 256) {
            return yield* new ProtocolError({
              message: `received invalid BackendKeyData message: cancel key with length ${length} is out of range`
            })
          }
          key = { pid: msg.body.readInt32BE(0), secret: new Uint8Array(msg.body.subarray(4)) }
        } else if (msg.type === "N") {
          // notice: ignored
        } else if (msg.type === "Z" && authenticated) {
          break
        } else {
          return yield* new ProtocolError({ message: `unexpected message '${msg.type}' during startup` })
        }
      }
      if (key === undefined) return yield* new ProtocolError({ message: "no BackendKeyData received" })
      return { parameters, protocolVersion, negotiatedDown, key }
    })
    const established = yield* handshake.pipe(
      Effect.timeoutOrElse({
        duration: options.connectTimeout ?? Duration.seconds(10),
        orElse: () =>
          Effect.fail(new ConnectError({ address: describeAddress(options), message: "connection timeout expired" }))
      })
    )
    const active = (streams.secure ?? streams.raw)!
    const remote: Remote = options.transport === "unix"
      ? { _tag: "Unix", path: options.socketPath! }
      : {
        _tag: "Tcp",
        address: active.remoteAddress ?? "",
        port: active.remotePort ?? 0,
        family: active.remoteFamily === "IPv6" ? 6 : 4
      }
    const lock = yield* Semaphore.make(1)
    const startQuery = (sql: string): Effect.Effect<PendingQuery, QueryFailure> =>
      Effect.uninterruptibleMask((restore) =>
        Effect.gen(function*() {
          yield* restore(lock.take(1))
          if (reader.closedReason !== undefined) {
            yield* lock.release(1)
            return yield* new SessionClosed({ message: reader.closedReason })
          }
          write(Wire.message("Q", Wire.cstring(sql)))
          const fiber = yield* readQueryResult(reader, established.parameters).pipe(
            Effect.ensuring(lock.release(1)),
            Effect.forkIn(scope)
          )
          return { result: Fiber.join(fiber) }
        })
      )
    const secure = streams.secure
    return {
      backendKey: { ...established.key, protocolVersion: established.protocolVersion },
      remote,
      serverVersion: established.parameters.get("server_version") ?? "",
      parameters: established.parameters,
      encrypted: secure !== undefined,
      tlsInfo: secure === undefined
        ? undefined
        : { protocol: secure.getProtocol(), alpn: secure.alpnProtocol ?? false },
      negotiatedDown: established.negotiatedDown,
      startQuery,
      query: (sql) => Effect.flatMap(startQuery(sql), (pending) => pending.result),
      close: Effect.sync(() => {
        const stream = streams.secure ?? streams.raw
        if (stream !== undefined && !stream.destroyed) stream.end(Wire.message("X"))
      }).pipe(
        Effect.andThen(reader.awaitEnd),
        Effect.timeoutOption("2 seconds"),
        Effect.andThen(destroyStreams(streams))
      )
    } satisfies TestSession
  })

/**
 * Connects to a cluster (e.g. the `EmbeddedPostgres` service) with sensible defaults: `tcp`, the cluster's host,
 * port, socket path and CA (read from `caCertPath`), user/database `postgres`.
 *
 * @category constructors
 * @since 0.1.0
 */
export const connectTo = (
  target: Target,
  options?: Partial<ConnectOptions>
): Effect.Effect<TestSession, ConnectFailure, Scope.Scope> => {
  const transport = options?.transport ?? "tcp"
  const tls = options?.tls ?? "disable"
  return connect({
    ...options,
    transport,
    host: options?.host ?? (transport === "tcp6" ? (target.host6 ?? "::1") : target.host),
    port: options?.port ?? target.port,
    socketPath: options?.socketPath ?? target.socketPath,
    ca: options?.ca ?? (tls === "disable" ? undefined : Fs.readFileSync(target.caCertPath, "utf8"))
  })
}

// ---------------------------------------------------------------------------------------------------------------------
// waiting
// ---------------------------------------------------------------------------------------------------------------------

/**
 * Polls `sql` on `monitor` (every 5 ms) until the first column of the first row satisfies `done`; fails with
 * {@link WaitTimeout} after `timeout` (default 10 s).
 *
 * @category combinators
 * @since 0.1.0
 */
export const waitUntil = (
  monitor: TestSession,
  sql: string,
  done: (value: string | null | undefined) => boolean,
  options?: { readonly timeout?: Duration.Input | undefined; readonly description?: string | undefined }
): Effect.Effect<void, WaitTimeout | QueryFailure> => {
  let last: string | null | undefined = undefined
  const probe = Effect.flatMap(monitor.query(sql), (result) => {
    if (result._tag === "Error") {
      return Effect.fail(new ProtocolError({ message: `polling query failed: ${result.sqlstate} ${result.message}` }))
    }
    last = result.rows[0]?.[0]
    return Effect.succeed(done(last))
  })
  return probe.pipe(
    Effect.repeat({ schedule: Schedule.spaced("5 millis"), until: (ok) => ok }),
    Effect.asVoid,
    Effect.timeoutOrElse({
      duration: options?.timeout ?? Duration.seconds(10),
      orElse: () =>
        Effect.fail(
          new WaitTimeout({
            message: `timed out waiting for ${options?.description ?? sql} (last value: ${String(last)})`
          })
        )
    })
  )
}

/**
 * Waits until `pg_stat_activity` shows backend `pid` waiting on `PgSleep` (i.e. inside `pg_sleep`), polling through
 * `monitor` (a second session).
 *
 * @category combinators
 * @since 0.1.0
 */
export const waitUntilSleeping = (
  monitor: TestSession,
  pid: number,
  options?: { readonly timeout?: Duration.Input | undefined }
): Effect.Effect<void, WaitTimeout | QueryFailure> =>
  waitUntil(
    monitor,
    `SELECT wait_event FROM pg_stat_activity WHERE pid = ${Math.trunc(pid)}`,
    (value) => value === "PgSleep",
    { timeout: options?.timeout, description: `backend ${pid} to sleep in pg_sleep` }
  )

/**
 * Waits until `pg_stat_activity` shows backend `pid` as `idle` (waiting for the next command).
 *
 * @category combinators
 * @since 0.1.0
 */
export const waitUntilIdle = (
  monitor: TestSession,
  pid: number,
  options?: { readonly timeout?: Duration.Input | undefined }
): Effect.Effect<void, WaitTimeout | QueryFailure> =>
  waitUntil(
    monitor,
    `SELECT state FROM pg_stat_activity WHERE pid = ${Math.trunc(pid)}`,
    (value) => value === "idle",
    { timeout: options?.timeout, description: `backend ${pid} to be idle` }
  )

/**
 * Waits until backend `pid` no longer appears in `pg_stat_activity` (it exited).
 *
 * @category combinators
 * @since 0.1.0
 */
export const waitUntilGone = (
  monitor: TestSession,
  pid: number,
  options?: { readonly timeout?: Duration.Input | undefined }
): Effect.Effect<void, WaitTimeout | QueryFailure> =>
  waitUntil(
    monitor,
    `SELECT count(*) FROM pg_stat_activity WHERE pid = ${Math.trunc(pid)}`,
    (value) => value === "0",
    { timeout: options?.timeout, description: `backend ${pid} to exit` }
  )
