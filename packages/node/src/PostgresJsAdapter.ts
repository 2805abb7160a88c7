/**
 * postgres.js (`postgres` 3.4) adapter: queries that are cancelled on the server when the fiber is interrupted —
 * the exact session, over its encryption, never another query.
 *
 * {@link make} creates the `postgres()` instance (same arguments: a URL and/or options) with a `socket` factory that
 * opens every connection itself: TCP (TCP_NODELAY) or a unix socket, then TLS the way postgres.js would (SSLRequest
 * or `sslnegotiation: "direct"`, its `ssl` values and option objects). It records, per connection, the remote
 * address it actually reached, whether the session is encrypted, and the BackendKeyData — so a cancel goes to that
 * very address (not to the host name resolved again) with the session's pid and key, and the adapter can hold or
 * close that one connection. postgres.js itself then speaks plaintext protocol over the stream it is given (its
 * `ssl` is handled here; `max_pipeline` is set to 0 so one query at a time is written per connection).
 *
 * {@link query} runs one query with `CancelOnInterrupt.cancelOnInterrupt`. When the fiber is interrupted:
 * - the query is not written yet (queued in postgres.js; `query.state` is still null): it is emptied in place — it
 *   runs as an empty statement, nothing of it executes, and no cancel is sent;
 * - it is the connection's current query (`query.active`): a CancelRequest with the connection's key, to the
 *   connection's address, over the session's encryption. While the cancel is on its way the connection's reads are
 *   held, so postgres.js cannot see the query end and write the next one before the signal reached the backend
 *   (PostgreSQL drops a cancel that reaches an idle backend);
 * - otherwise it is waited for, bounded, without a cancel.
 * When a cancel cannot be confirmed or the query does not end in time, the connection is retired: its socket is
 * destroyed and postgres.js reconnects it on demand. postgres.js has no public way to close one pool connection;
 * the socket factory is what makes it possible.
 *
 * Reserved connections ({@link reserve}) work the same; a retired reserved connection is never released back to the
 * pool (postgres.js already took it back when its socket closed), and further queries on it fail.
 *
 * @example
 * ```ts
 * import * as Effect from "effect/Effect"
 * import { NodeTransport } from "@pqcancel/node"
 * import * as PostgresJsAdapter from "@pqcancel/node/PostgresJsAdapter"
 *
 * const program = Effect.gen(function*() {
 *   const sql = yield* PostgresJsAdapter.make("postgres://app@db.internal:5432/app", { ssl: "verify-full", max: 10 })
 *   const rows = yield* PostgresJsAdapter.query(sql, (sql) => sql`SELECT pg_sleep(60)`).pipe(
 *     Effect.timeout("1 second") // interrupts ⇒ CancelRequest ⇒ the backend stops
 *   )
 *   return rows
 * }).pipe(Effect.scoped, Effect.provide(NodeTransport.layer))
 * ```
 *
 * @module
 * @since 0.1.0
 */
import { CancelKey, ConnectionOptions } from "@pqcancel/core"
import type { CancelConnection, CancelError, CancelMachine } from "@pqcancel/core"
import * as CancelOnInterrupt from "@pqcancel/core/CancelOnInterrupt"
import { Transport } from "@pqcancel/core/Transport"
import type * as TransportNs from "@pqcancel/core/Transport"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Result from "effect/Result"
import type * as Schedule from "effect/Schedule"
import * as Schema from "effect/Schema"
import type * as Scope from "effect/Scope"
import * as Net from "node:net"
import * as Path from "node:path"
import * as Tls from "node:tls"
import postgres from "postgres"
import { fromPostgresJsSsl } from "./internal/driverTls.ts"

// -----------------------------------------------------------------------------
// errors
// -----------------------------------------------------------------------------

/**
 * A query failed on the server (or the connection broke). `code` is the SQLSTATE when the server sent one, else
 * postgres.js's error code (e.g. `CONNECTION_CLOSED`).
 *
 * @category errors
 * @since 0.1.0
 */
export class PostgresJsQueryError
  extends Schema.TaggedError<PostgresJsQueryError>("@pqcancel/node/PostgresJsAdapter/PostgresJsQueryError")(
    "PostgresJsQueryError",
    {
      message: Schema.String,
      code: Schema.UndefinedOr(Schema.String)
    }
  )
{}

/**
 * The `sql` was not created by {@link make} (or {@link reserve}), its options cannot be honoured, or its reserved
 * connection was retired.
 *
 * @category errors
 * @since 0.1.0
 */
export class PostgresJsAdapterError
  extends Schema.TaggedError<PostgresJsAdapterError>("@pqcancel/node/PostgresJsAdapter/PostgresJsAdapterError")(
    "PostgresJsAdapterError",
    { message: Schema.String }
  )
{}

// -----------------------------------------------------------------------------
// models
// -----------------------------------------------------------------------------

/**
 * How the adapter cancels (the bounds and the pooler option of `CancelOnInterrupt.cancelOnInterrupt`).
 *
 * @category models
 * @since 0.1.0
 */
export interface AdapterOptions {
  /** bound on sending one cancel, retries included (default: postgres.js's `connect_timeout`, at most 10 s) */
  readonly cancelTimeout?: Duration.Input | undefined
  /** bound on waiting for the interrupted query to end (default 5 s); the connection is retired when it does not */
  readonly drainTimeout?: Duration.Input | undefined
  /** when to send a cancel again after a transient failure (default: exponential from 20 ms, within the bound) */
  readonly retry?: Schedule.Schedule<unknown, CancelError.CancelFailed | CancelError.CancelTimeout> | undefined
  /** while the cancelled query still runs, send the cancel again after this long (default 500 ms) */
  readonly recancelInterval?: Duration.Input | undefined
  /**
   * retire the connection unless the interrupted query ended with SQLSTATE 57014: set it when postgres.js talks to
   * PostgreSQL through a pooler or proxy (PgBouncer, pgcat, RDS Proxy…) that closes the cancel connection before it
   * forwards the request, so a late cancel could hit the next query
   */
  readonly retireUnlessCanceled?: boolean | undefined
  /** a cancel was sent but the query completed (or failed by itself) first; default: a warning in the log */
  readonly onNotCanceled?: ((exit: Exit.Exit<unknown, unknown>) => Effect.Effect<void>) | undefined
}

/** The postgres.js options the adapter reads (its `parseOptions` result) */
interface ParsedOptions {
  readonly host: ReadonlyArray<string>
  readonly port: ReadonlyArray<number>
  readonly path: string | false | undefined
  readonly ssl: unknown
  readonly sslnegotiation: unknown
  readonly connect_timeout: number | null | undefined
  readonly socket: unknown
}

/** One connection opened by the socket factory */
interface Session {
  /** what postgres.js reads and writes: the TLS socket, or the raw socket of a plaintext session */
  readonly socket: Net.Socket
  /** the TCP or unix socket */
  readonly raw: Net.Socket
  readonly host: ConnectionOptions.HostEntry
  readonly address: CancelMachine.RemoteAddress
  readonly encrypted: boolean
  key: CancelKey.CancelKey | undefined
  /** the registry key (pid and secret as postgres.js keeps them in `query.state`), once BackendKeyData was read */
  id: string | undefined
  /** reads are held while a cancel for this session is on its way */
  held: boolean
  retired: boolean
}

interface Managed {
  readonly sessions: Map<string, Session>
  /** every socket the factory opened and that is not closed yet */
  readonly sockets: Set<Net.Socket>
  /** the cancel's options for encrypted sessions; a failure when the driver's TLS settings cannot be mapped */
  readonly encryptedOptions: Result.Result<ConnectionOptions.ConnectionOptions, CancelError.InvalidOption>
  readonly plainOptions: ConnectionOptions.ConnectionOptions
  /** the name an encrypted session verifies when the ssl object sets `servername` (else the host name) */
  readonly servername: string | undefined
  readonly adapter: AdapterOptions
  readonly connectTimeoutSeconds: number
  /** set for a reserved connection */
  readonly reserved: { retired: boolean } | undefined
}

const managed = new WeakMap<object, Managed>()

const sessionId = (pid: number, secret: number): string => `${pid}:${secret >>> 0}`

// -----------------------------------------------------------------------------
// the cancel's options, from what the user gave postgres.js
// -----------------------------------------------------------------------------

/**
 * The cancel's options for an encrypted postgres.js session, from its `ssl` and `sslnegotiation` option values (the
 * README's table "postgres.js `ssl` and the cancel"): never weaker than the session. `require` / `allow` / `prefer`
 * ⇒ `require`; `true` / `"verify-full"` ⇒ `verify-full` against Node's roots (`sslrootcert=system`); a `tls` options
 * object ⇒ `verify-full` with its `ca`, `cert`, `key`, `passphrase`, `crl` as in-memory material (`require` with
 * `rejectUnauthorized: false`, `verify-ca` with a custom `checkServerIdentity`); `sslnegotiation: "direct"` ⇒ direct.
 *
 * @example
 * ```ts
 * import * as PostgresJsAdapter from "@pqcancel/node/PostgresJsAdapter"
 *
 * const options = PostgresJsAdapter.cancelTlsOptions({ ca: "-----BEGIN CERTIFICATE-----…" })
 * // Result.succeed(options) with options.sslmode === "verify-full" and options.sslMaterial.ca set
 * ```
 *
 * @category mapping
 * @since 0.1.0
 */
export const cancelTlsOptions = (
  ssl: unknown,
  sslnegotiation?: unknown,
  connectTimeoutSeconds: number = 10
): Result.Result<ConnectionOptions.ConnectionOptions, CancelError.InvalidOption> => {
  const result = fromPostgresJsSsl(ssl, sslnegotiation)
  if (Result.isFailure(result)) return Result.fail(result.failure)
  const mapped = result.success
  return Result.map(
    // a postgres.js session is never GSS-encrypted: neither is its cancel
    ConnectionOptions.fromParams({
      ...mapped.params,
      gssencmode: "disable",
      connect_timeout: String(connectTimeoutSeconds)
    }),
    (options) => mapped.sslMaterial === undefined ? options : { ...options, sslMaterial: mapped.sslMaterial }
  )
}

// -----------------------------------------------------------------------------
// the socket factory
// -----------------------------------------------------------------------------

const SSL_REQUEST = Buffer.from([0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])

interface Target {
  readonly host: ConnectionOptions.HostEntry
  /** the name postgres.js would use for SNI and the host name check */
  readonly hostname: string | undefined
  readonly connect: Net.NetConnectOpts
}

const targets = (parsed: ParsedOptions): ReadonlyArray<Target> => {
  if (typeof parsed.path === "string" && parsed.path !== "") {
    const match = /\.s\.PGSQL\.(\d+)$/.exec(parsed.path)
    return [{
      host: {
        _tag: "Unix",
        directory: Path.dirname(parsed.path),
        port: match !== null ? Number(match[1]) : ConnectionOptions.DEFAULT_PORT
      },
      hostname: undefined,
      connect: { path: parsed.path }
    }]
  }
  return parsed.host.map((host, i) => {
    const port = parsed.port[i] ?? parsed.port[0] ?? ConnectionOptions.DEFAULT_PORT
    return {
      host: { _tag: "Tcp", host, hostaddr: undefined, port },
      hostname: host,
      connect: { host, port }
    }
  })
}

const connectError = (target: Target, error: unknown): Error => {
  const where = target.host._tag === "Unix"
    ? `socket "${(target.connect as Net.IpcNetConnectOpts).path}"`
    : `"${target.hostname}", port ${target.host.port}`
  return new Error(`connection to ${where} failed: ${error instanceof Error ? error.message : String(error)}`)
}

/** Resolves once the socket is connected; destroys it on failure or when the deadline passes */
const connectSocket = (options: Net.NetConnectOpts, deadline: number): Promise<Net.Socket> =>
  new Promise((resolve, reject) => {
    const socket = Net.connect(options)
    const timer = setTimeout(() => {
      socket.destroy()
      reject(new Error("timeout expired"))
    }, Math.max(0, deadline - Date.now()))
    socket.once("connect", () => {
      clearTimeout(timer)
      socket.removeAllListeners("error")
      resolve(socket)
    })
    socket.once("error", (error) => {
      clearTimeout(timer)
      socket.destroy()
      reject(error)
    })
  })

/** SSLRequest: resolves with the server's one-byte answer; more bytes than that are refused (CVE-2021-23222) */
const sslRequest = (socket: Net.Socket, deadline: number): Promise<"S" | "N"> =>
  new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      cleanup()
      reject(new Error("timeout expired"))
    }, Math.max(0, deadline - Date.now()))
    const cleanup = () => {
      clearTimeout(timer)
      socket.off("data", onData)
      socket.off("error", onError)
      socket.off("close", onClose)
    }
    const onData = (bytes: Buffer) => {
      cleanup()
      if (bytes.length !== 1 || (bytes[0] !== 0x53 && bytes[0] !== 0x4e)) {
        reject(new Error("received invalid response to SSL negotiation"))
      } else resolve(bytes[0] === 0x53 ? "S" : "N")
    }
    const onError = (error: Error) => {
      cleanup()
      reject(error)
    }
    const onClose = () => {
      cleanup()
      reject(new Error("server closed the connection unexpectedly"))
    }
    socket.on("data", onData)
    socket.once("error", onError)
    socket.once("close", onClose)
    socket.write(SSL_REQUEST)
  })

/** TLS on the raw socket, with exactly the options postgres.js would pass to `tls.connect` */
const startTls = (
  raw: Net.Socket,
  target: Target,
  parsed: ParsedOptions,
  deadline: number
): Promise<Tls.TLSSocket> =>
  new Promise((resolve, reject) => {
    const ssl = parsed.ssl
    const options: Tls.ConnectionOptions = {
      socket: raw,
      ...(target.hostname !== undefined && Net.isIP(target.hostname) === 0
        ? { servername: target.hostname }
        : {}),
      ...(target.hostname !== undefined ? { host: target.hostname } : {}),
      ...(parsed.sslnegotiation === "direct" ? { ALPNProtocols: ["postgresql"] } : {}),
      ...(ssl === "require" || ssl === "allow" || ssl === "prefer"
        ? { rejectUnauthorized: false }
        : typeof ssl === "object" && ssl !== null
        ? ssl as Tls.ConnectionOptions
        : {})
    }
    const secure = Tls.connect(options)
    const timer = setTimeout(() => {
      secure.destroy()
      reject(new Error("timeout expired"))
    }, Math.max(0, deadline - Date.now()))
    secure.once("secureConnect", () => {
      clearTimeout(timer)
      secure.removeAllListeners("error")
      resolve(secure)
    })
    secure.once("error", (error) => {
      clearTimeout(timer)
      secure.destroy()
      reject(error)
    })
  })

/** Reads the startup messages on the session's socket until BackendKeyData (then stops listening) */
const watchForKey = (session: Session, sessions: Map<string, Session>): void => {
  let buffered: Buffer = Buffer.alloc(0)
  const socket = session.socket
  const stop = (): void => {
    socket.off("data", onData)
  }
  const onData = (bytes: Buffer): void => {
    buffered = buffered.length === 0 ? bytes : Buffer.concat([buffered, bytes])
    while (buffered.length >= 5) {
      const length = buffered.readUInt32BE(1)
      if (length < 4 || length > 1 << 20) return stop()
      if (buffered.length < length + 1) return
      const type = buffered[0]
      if (type === 0x4b) { // 'K' BackendKeyData
        const decoded = CancelKey.fromBackendKeyData(buffered.subarray(5, length + 1), "3.0")
        if (Result.isSuccess(decoded)) {
          const body = buffered.subarray(5, length + 1)
          session.key = decoded.success
          session.id = sessionId(body.readUInt32BE(0), body.length >= 8 ? body.readUInt32BE(4) : 0)
          sessions.set(session.id, session)
        }
        return stop()
      }
      if (type === 0x5a || type === 0x45) return stop() // ReadyForQuery or ErrorResponse: no key is coming
      buffered = buffered.subarray(length + 1)
    }
  }
  socket.on("data", onData)
}

const socketFactory = (
  parsed: ParsedOptions,
  sessions: Map<string, Session>,
  sockets: Set<Net.Socket>,
  connectTimeoutSeconds: number
) => {
  const all = targets(parsed)
  let next = 0
  const open = async (target: Target, deadline: number): Promise<Net.Socket> => {
    const raw = await connectSocket(target.connect, deadline)
    sockets.add(raw)
    raw.once("close", () => sockets.delete(raw))
    try {
      if (target.host._tag === "Tcp") raw.setNoDelay(true)
      let socket: Net.Socket = raw
      let encrypted = false
      const ssl = parsed.ssl
      if (ssl !== false && ssl !== undefined && ssl !== null && ssl !== "disable") {
        const answer = parsed.sslnegotiation === "direct" ? "S" : await sslRequest(raw, deadline)
        if (answer === "S") {
          socket = await startTls(raw, target, parsed, deadline)
          // the TLS socket reports the connection's errors (postgres.js listens there); the raw one must not throw
          raw.on("error", () => {})
          encrypted = true
        } else if (ssl !== "prefer") {
          throw new Error("server does not support SSL, but SSL was required")
        }
      }
      const address: CancelMachine.RemoteAddress = target.host._tag === "Unix"
        ? { _tag: "Unix", path: (target.connect as Net.IpcNetConnectOpts).path }
        : {
          _tag: "Tcp",
          address: raw.remoteAddress ?? "",
          port: raw.remotePort ?? target.host.port,
          family: raw.remoteFamily === "IPv6" ? 6 : 4
        }
      const session: Session = {
        socket,
        raw,
        host: target.host,
        address,
        encrypted,
        key: undefined,
        id: undefined,
        held: false,
        retired: false
      }
      watchForKey(session, sessions)
      socket.once("close", () => {
        if (session.id !== undefined && sessions.get(session.id) === session) sessions.delete(session.id)
      })
      return socket
    } catch (error) {
      raw.destroy()
      throw error
    }
  }
  return async (): Promise<Net.Socket> => {
    // like postgres.js, each new connection starts at the next host; on failure the others are tried in order
    const start = next
    next = (next + 1) % all.length
    const deadline = Date.now() + connectTimeoutSeconds * 1000
    let last: Error | undefined
    for (let i = 0; i < all.length; i++) {
      const target = all[(start + i) % all.length]!
      try {
        return await open(target, deadline)
      } catch (error) {
        last = connectError(target, error)
      }
    }
    throw last ?? new Error("no host to connect to")
  }
}

// -----------------------------------------------------------------------------
// holding reads while a cancel is on its way, retiring a connection
// -----------------------------------------------------------------------------

const hold = (session: Session): void => {
  if (session.held || session.retired) return
  session.held = true
  session.socket.pause()
}

const release = (session: Session): void => {
  if (!session.held) return
  session.held = false
  if (!session.retired) session.socket.resume()
}

const retire = (session: Session): void => {
  session.retired = true
  session.held = false
  session.socket.destroy()
  session.raw.destroy()
}

/**
 * The transport, holding the session's reads while a cancel is on its way: postgres.js cannot see the query end and
 * write the next one on this connection before the signal has been delivered. The hold starts when the query is
 * located as running (and again when a cancel connects); it ends when a cancel connection closes after the server
 * closed it following the CancelRequest (the signal was delivered). A failed attempt keeps the hold: the next
 * attempt is coming (a released hold in between would let the next query start before a retried cancel), or the
 * connection is retired.
 */
const holdingTransport = (inner: Transport["Service"], session: () => Session | undefined): Transport["Service"] =>
  Transport.of({
    ...inner,
    connect: (request, sink) => {
      const held = session()
      if (held !== undefined) hold(held)
      // the CancelRequest is the one write inside TLS (the cancel's sslmode is disable, require or verify-*: no
      // plaintext fallback), or the only write of a plaintext cancel
      const expectTls = request.address._tag === "Tcp" && request.options.sslmode !== "disable"
      let tls = false
      let sent = false
      let delivered = false
      const connection = inner.connect(request, (event) => {
        if (event._tag === "TlsEstablished") tls = true
        else if (event._tag === "Eof" && sent) delivered = true
        sink(event)
      })
      const wrapped: TransportNs.Connection = {
        fd: () => connection.fd(),
        write: (bytes) => {
          if (tls || !expectTls) sent = true
          connection.write(bytes)
        },
        startTls: (tlsRequest) => connection.startTls(tlsRequest),
        startGss: (gssRequest) => connection.startGss(gssRequest),
        close: () => {
          connection.close()
          if (held !== undefined && delivered) release(held)
        }
      }
      return wrapped
    }
  })

// -----------------------------------------------------------------------------
// constructors
// -----------------------------------------------------------------------------

/**
 * postgres.js's options plus the adapter's (`cancel`). `socket` is the adapter's own (it opens the connections) and
 * cannot be given; `max_pipeline` is set to 0.
 *
 * @category models
 * @since 0.1.0
 */
export interface Options extends postgres.Options<{}> {
  readonly cancel?: AdapterOptions | undefined
}

const errorMessage = (error: unknown): string => error instanceof Error ? error.message : String(error)

const create = (urlOrOptions: string | Options, maybeOptions: Options | undefined): postgres.Sql<{}> => {
  const url = typeof urlOrOptions === "string" ? urlOrOptions : undefined
  const { cancel: adapter = {}, ...driverOptions } = (typeof urlOrOptions === "string" ? maybeOptions : urlOrOptions) ??
    {}
  if ((driverOptions as { readonly socket?: unknown }).socket !== undefined) {
    throw new Error("the socket option is the adapter's own: PostgresJsAdapter opens the connections")
  }
  // postgres.js's own parsing of the URL, options and environment, read back from a throwaway instance (it opens
  // nothing until a query runs)
  const probeOptions = { ...driverOptions, no_subscribe: true } as postgres.Options<{}>
  const probe = url === undefined ? postgres(probeOptions) : postgres(url, probeOptions)
  const parsed = probe.options as unknown as ParsedOptions
  const connectTimeout = typeof parsed.connect_timeout === "number" && parsed.connect_timeout > 0
    ? parsed.connect_timeout
    : 30
  const cancelConnectTimeout = Math.min(connectTimeout, 10)
  const encryptedOptions = cancelTlsOptions(parsed.ssl, parsed.sslnegotiation, cancelConnectTimeout)
  if (Result.isFailure(encryptedOptions) && parsed.ssl !== false && parsed.ssl !== undefined) {
    throw new Error(`the ssl option cannot be carried over to the cancel: ${encryptedOptions.failure.message}`)
  }
  const plainOptions = ConnectionOptions.fromParams({
    sslmode: "disable",
    gssencmode: "disable",
    connect_timeout: String(cancelConnectTimeout)
  })
  if (Result.isFailure(plainOptions)) throw new Error(plainOptions.failure.message)
  const sessions = new Map<string, Session>()
  const sockets = new Set<Net.Socket>()
  const driverConfig = {
    ...driverOptions,
    // TLS is negotiated by the socket factory (postgres.js's rules), so postgres.js speaks plaintext over it
    ssl: false,
    socket: socketFactory(parsed, sessions, sockets, connectTimeout),
    // one query written at a time per connection: a cancel can only hit the query it is meant for
    max_pipeline: 0,
    // the factory tries every host; postgres.js sees one (with several and a socket factory, it swallows a failed
    // connection attempt and leaves the query waiting forever)
    host: parsed.host[0],
    port: parsed.port[0]
  } as postgres.Options<{}>
  const sql = url === undefined ? postgres(driverConfig) : postgres(url, driverConfig)
  managed.set(sql, {
    sessions,
    sockets,
    encryptedOptions,
    plainOptions: plainOptions.success,
    servername: typeof parsed.ssl === "object" && parsed.ssl !== null &&
        typeof (parsed.ssl as { readonly servername?: unknown }).servername === "string"
      ? (parsed.ssl as { readonly servername: string }).servername
      : undefined,
    adapter,
    connectTimeoutSeconds: cancelConnectTimeout,
    reserved: undefined
  })
  return sql
}

/**
 * Creates a postgres.js instance (`postgres(url, options)` or `postgres(options)`) whose queries {@link query} can
 * cancel, owned by the Scope (`sql.end()` when it closes). The same instance is a normal `Sql` for everything else.
 *
 * @category constructors
 * @since 0.1.0
 */
export const make: {
  (url: string, options?: Options): Effect.Effect<postgres.Sql<{}>, PostgresJsAdapterError, Scope.Scope>
  (options: Options): Effect.Effect<postgres.Sql<{}>, PostgresJsAdapterError, Scope.Scope>
} = (urlOrOptions: string | Options, maybeOptions?: Options) =>
  Effect.acquireRelease(
    Effect.try({
      try: () => create(urlOrOptions, maybeOptions),
      catch: (error) => new PostgresJsAdapterError({ message: errorMessage(error) })
    }),
    (sql) => Effect.promise(() => close(sql))
  )

/**
 * Ends the instance at once (`sql.end({ timeout: 0 })`: postgres.js sends Terminate on every connection; a query
 * still running outside the adapter fails with `CONNECTION_DESTROYED`) and waits, bounded, until every socket is
 * closed. (A graceful `sql.end()` would wait for its timeout on a connection whose socket closed mid-query, such as
 * a retired one: postgres.js keeps that query as current until the connection is used again.)
 */
const close = async (sql: postgres.Sql<{}>): Promise<void> => {
  await sql.end({ timeout: 0 }).catch(() => undefined)
  const sockets = [...(managed.get(sql)?.sockets ?? [])]
  await Promise.all(sockets.map((socket) =>
    new Promise<void>((resolve) => {
      if (socket.destroyed) return resolve()
      const timer = setTimeout(() => {
        socket.destroy()
        resolve()
      }, 2000)
      socket.once("close", () => {
        clearTimeout(timer)
        resolve()
      })
    })
  ))
}

/**
 * Reserves one connection of the pool (`sql.reserve()`) for the Scope, for statements that must run on the same
 * session (transactions with `BEGIN`/`COMMIT`, session settings). Released when the Scope closes — unless a cancel
 * made it unsafe: it is then retired (its socket closed, postgres.js reconnects that slot on demand) and never
 * released; later {@link query} calls on it fail with a `PostgresJsAdapterError`.
 *
 * @category constructors
 * @since 0.1.0
 */
export const reserve = (
  sql: postgres.Sql<{}>
): Effect.Effect<postgres.ReservedSql<{}>, PostgresJsAdapterError | PostgresJsQueryError, Scope.Scope> =>
  Effect.suspend((): Effect.Effect<
    postgres.ReservedSql<{}>,
    PostgresJsAdapterError | PostgresJsQueryError,
    Scope.Scope
  > => {
    const parent = managed.get(sql)
    if (parent === undefined) return Effect.fail(notManaged)
    const state = { retired: false }
    return Effect.acquireRelease(
      Effect.tryPromise({
        try: () => sql.reserve(),
        catch: toQueryError
      }).pipe(Effect.tap((reserved) => Effect.sync(() => managed.set(reserved, { ...parent, reserved: state })))),
      (reserved) =>
        Effect.sync(() => {
          if (!state.retired) reserved.release()
        })
    )
  })

/**
 * Whether the adapter retired this reserved connection (a cancel could not be confirmed or the query did not end in
 * time, or — with `retireUnlessCanceled` — it did not end cancelled): its socket was closed and it is not released.
 *
 * @category guards
 * @since 0.1.0
 */
export const isRetired = (sql: postgres.Sql<{}>): boolean => managed.get(sql)?.reserved?.retired === true

const notManaged = new PostgresJsAdapterError({
  message: "this sql was not created by PostgresJsAdapter.make or PostgresJsAdapter.reserve"
})

// -----------------------------------------------------------------------------
// queries
// -----------------------------------------------------------------------------

const toQueryError = (error: unknown): PostgresJsQueryError => {
  const code = (error as { readonly code?: unknown } | null)?.code
  return new PostgresJsQueryError({
    message: errorMessage(error),
    code: typeof code === "string" ? code : undefined
  })
}

/** The fields of a postgres.js Query the adapter reads and (for a query not written yet) rewrites */
interface QueryInternals {
  /** `{ pid, secret }` of the connection, set when the query is written */
  readonly state: { readonly pid: number; readonly secret: number } | null
  /** the query is the connection's current one */
  readonly active: boolean
  strings: ReadonlyArray<string> & { readonly raw?: ReadonlyArray<string> }
  args: ReadonlyArray<unknown>
  options: Record<string, unknown>
}

/**
 * Empties a query that postgres.js has not written yet: it will run as an empty statement (an EmptyQueryResponse),
 * so nothing of it executes, and postgres.js's queues and connection states stay as they are. (postgres.js's own
 * `query.cancel()` on a query that is not written leaves a connection stuck when the query was a connection's
 * first, or queued on a reserved connection.)
 */
const withdraw = (query: QueryInternals): void => {
  const empty = Object.assign([""], { raw: [""] })
  query.strings = empty
  query.args = []
  query.options = { ...query.options, simple: true, prepare: false }
}

const isCanceled = (exit: Exit.Exit<unknown, unknown>): boolean =>
  Exit.isFailure(exit) &&
  Exit.findErrorOption(exit).pipe((error) =>
    error._tag === "Some" && error.value instanceof PostgresJsQueryError && error.value.code === "57014"
  )

/**
 * Runs one postgres.js query (`f` builds it from `sql`, e.g. ``(sql) => sql`SELECT …` ``); when the fiber is
 * interrupted, cancels it on the server — only if the connection is running it — and waits, bounded, for it to end
 * before the interruption completes. A query that postgres.js has not written yet is emptied instead (it never
 * runs). `sql` is an instance from {@link make} or {@link reserve}.
 *
 * @category combinators
 * @since 0.1.0
 */
export const query = <T extends ReadonlyArray<postgres.MaybeRow>>(
  sql: postgres.Sql<{}>,
  f: (sql: postgres.Sql<{}>) => postgres.PendingQuery<T>
): Effect.Effect<postgres.RowList<T>, PostgresJsQueryError | PostgresJsAdapterError, Transport> =>
  Effect.suspend((): Effect.Effect<
    postgres.RowList<T>,
    PostgresJsQueryError | PostgresJsAdapterError,
    Transport
  > => {
    const m = managed.get(sql)
    if (m === undefined) return Effect.fail(notManaged)
    if (m.reserved?.retired === true) {
      return Effect.fail(new PostgresJsAdapterError({ message: "this reserved connection was retired" }))
    }
    let pending: QueryInternals | undefined
    let running: Session | undefined
    const run = Effect.callback<postgres.RowList<T>, PostgresJsQueryError>((resume) => {
      let q: postgres.PendingQuery<T>
      try {
        q = f(sql)
      } catch (error) {
        return resume(Effect.fail(toQueryError(error)))
      }
      pending = q as unknown as QueryInternals
      q.then((rows) => resume(Effect.succeed(rows)), (error: unknown) => resume(Effect.fail(toQueryError(error))))
    })
    const locate = (): CancelOnInterrupt.Location => {
      const q = pending
      if (q === undefined) return "withdrawn"
      if (q.state === null) {
        withdraw(q)
        return "withdrawn"
      }
      if (!q.active) return "elsewhere"
      const session = m.sessions.get(sessionId(q.state.pid, q.state.secret))
      if (session === undefined || session.retired) return "elsewhere"
      running = session
      // hold the session's reads from this very moment (not only once the cancel connects: getting there may yield
      // to the event loop) until the cancel connection is closed
      hold(session)
      return "running"
    }
    const session = (): CancelConnection.SessionInfo => {
      const s = running!
      return {
        options: s.encrypted && Result.isSuccess(m.encryptedOptions) ? m.encryptedOptions.success : m.plainOptions,
        host: s.encrypted && s.host._tag === "Tcp" && m.servername !== undefined
          ? { ...s.host, host: m.servername }
          : s.host,
        address: s.address,
        key: s.key,
        open: !s.socket.destroyed
      }
    }
    return CancelOnInterrupt.cancelOnInterrupt(run, {
      session,
      locate,
      isCanceled,
      cancelTimeout: m.adapter.cancelTimeout,
      drainTimeout: m.adapter.drainTimeout,
      retry: m.adapter.retry,
      recancelInterval: m.adapter.recancelInterval,
      retireUnlessCanceled: m.adapter.retireUnlessCanceled,
      onNotCanceled: m.adapter.onNotCanceled,
      onUnsafe: () =>
        Effect.sync(() => {
          if (m.reserved !== undefined) m.reserved.retired = true
          if (running !== undefined) retire(running)
        })
    }).pipe(Effect.updateService(Transport, (transport) => holdingTransport(transport, () => running)))
  })

/**
 * Runs `body` in a transaction on a reserved connection ({@link reserve}): `BEGIN` (with `mode`, e.g.
 * `"isolation level serializable"` or `"read only"`; letters and spaces only, as postgres.js's `sql.begin`), then
 * `COMMIT` when `body` succeeds, `ROLLBACK` when it fails or is interrupted. Statements inside run through
 * {@link query} on `tx`: an interrupted one is cancelled on the server, so nothing of the transaction commits. If a
 * cancel made the connection unsafe it is retired instead (the server then aborts the transaction with the
 * session).
 *
 * @example
 * ```ts
 * import * as Effect from "effect/Effect"
 * import * as PostgresJsAdapter from "@pqcancel/node/PostgresJsAdapter"
 * import type postgres from "postgres"
 *
 * declare const sql: postgres.Sql<{}> // from PostgresJsAdapter.make
 * const moved = PostgresJsAdapter.transaction(sql, (tx) =>
 *   Effect.gen(function*() {
 *     yield* PostgresJsAdapter.query(tx, (tx) => tx`UPDATE accounts SET balance = balance - 10 WHERE id = 1`)
 *     yield* PostgresJsAdapter.query(tx, (tx) => tx`UPDATE accounts SET balance = balance + 10 WHERE id = 2`)
 *   }))
 * ```
 *
 * @category combinators
 * @since 0.1.0
 */
export const transaction = <A, E, R>(
  sql: postgres.Sql<{}>,
  body: (tx: postgres.ReservedSql<{}>) => Effect.Effect<A, E, R>,
  mode: string = ""
): Effect.Effect<A, E | PostgresJsQueryError | PostgresJsAdapterError, R | Transport> =>
  Effect.scoped(
    Effect.flatMap(reserve(sql), (tx) =>
      Effect.uninterruptibleMask((restore) =>
        Effect.gen(function*() {
          const begin = `begin ${mode.replace(/[^a-z ]/gi, "")}`.trim()
          yield* restore(query(tx, (tx) => tx.unsafe(begin)))
          const exit = yield* Effect.exit(restore(body(tx)))
          if (Exit.isSuccess(exit)) {
            yield* query(tx, (tx) => tx`commit`)
            return exit.value
          }
          // a retired connection refuses the ROLLBACK: the server aborts the transaction with the session
          yield* Effect.ignore(query(tx, (tx) => tx`rollback`))
          return yield* Effect.failCause(exit.cause)
        })
      ))
  )
