/**
 * Single-cancel samples (dispatch and end-to-end latency) for every system, per cell.
 *
 * Each system holds one session per cell, reused across samples: send `SELECT pg_sleep(60)`, wait (untimed) until
 * pg_stat_activity shows the backend in `PgSleep`, then time the cancel call until the server closed the cancel
 * connection (dispatch) and until the session received SQLSTATE 57014 (end-to-end).
 */
import { CancelConnection } from "@pqcancel/core"
import type { Transport } from "@pqcancel/core/Transport"
import type { Cluster } from "@pqcancel/test-utils/EmbeddedPostgres"
import * as TestSession from "@pqcancel/test-utils/TestSession"
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import type * as Scope from "effect/Scope"
import type * as EventEmitter from "node:events"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Tls from "node:tls"
import pg from "pg"
import postgres from "postgres"
import type { Cell, SystemId } from "./cells.ts"
import { encrypted as isEncrypted, libpqConninfo, pqcancelSession, systems, tlsMode, verifyFull } from "./cells.ts"
import type { Harness } from "./harness.ts"

export const SLEEP = "SELECT pg_sleep(60)"

export class BenchError extends Data.TaggedError("BenchError")<{ readonly message: string }> {}

export const failure = (message: string): BenchError => new BenchError({ message })

export const benchError = (context: string) => (error: unknown): BenchError =>
  failure(`${context}: ${error instanceof Error ? error.message : String(error)}`)

export interface Sample {
  /** milliseconds */
  readonly dispatch: number
  /** milliseconds */
  readonly e2e: number
}

/** Waits (untimed) until `expected` backends with this application_name sleep in pg_sleep. */
export const waitSleeping = (monitor: TestSession.TestSession, app: string, expected: number) =>
  TestSession.waitUntil(
    monitor,
    `SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep' AND application_name = '${app}'`,
    (value) => Number(value) >= expected,
    { timeout: "30 seconds", description: `${expected} × ${app} in pg_sleep` }
  ).pipe(Effect.mapError(benchError("waiting for pg_sleep")))

const checkCancelled = (system: SystemId, code: string | undefined) =>
  code === "57014" ? Effect.void : Effect.fail(failure(`${system}: query ended with ${code}, not 57014`))

/** pqcancel's start+poll loop, as an application would write it. */
export const startAndPoll = (session: CancelConnection.SessionInfo) =>
  Effect.scoped(Effect.gen(function*() {
    const connection = yield* CancelConnection.make(session)
    yield* connection.start
    let status = yield* connection.poll
    while (status === "READING" || status === "WRITING") status = yield* connection.poll
    if (status !== "OK") return yield* failure(yield* connection.errorMessage)
  })).pipe(Effect.mapError(benchError("pqcancel start+poll")))

interface PgPrivate {
  readonly _getActiveQuery: () => pg.Query
  readonly connection: EventEmitter.EventEmitter
  /** undocumented: `canceller.cancel(target, target.activeQuery)` */
  readonly cancel: (client: pg.Client, query: pg.Query) => void
}

/** node-postgres's cancel (`new Client(config).cancel(client, activeQuery)`), resolved when the server closed it. */
export const pgCancel = (client: pg.Client, config: pg.ClientConfig) =>
  new Promise<{ t0: number; t1: number }>((resolve, reject) => {
    const t0 = performance.now()
    const canceller = new pg.Client(config)
    const connection = (canceller as unknown as PgPrivate).connection
    connection.once("end", () => resolve({ t0, t1: performance.now() }))
    connection.once("error", reject)
    ;(canceller as unknown as PgPrivate).cancel(client, (client as unknown as PgPrivate)._getActiveQuery())
  })

type PostgresQuery = postgres.PendingQuery<postgres.Row[]> & {
  canceller: ((query: unknown) => Promise<void>) | null
}

/**
 * postgres.js's `query.cancel()` returns nothing; its canceller (what `cancel()` calls) returns the promise that
 * resolves when the server closed the cancel connection. Same request, observable dispatch — except over TLS, where
 * that promise never settles (postgres.js 3.4.9 bug: `secure()` calls `socket.removeAllListeners()` on the raw socket,
 * dropping the `close` listener `cancel()` registered), so there only the end-to-end time is measurable.
 */
export const postgresjsCancel = (query: PostgresQuery): { readonly t0: number; readonly closed: Promise<number> } => {
  const t0 = performance.now()
  const canceller = query.canceller
  query.canceller = null
  if (canceller === null) return { t0, closed: Promise.reject(new Error("query already cancelled")) }
  return { t0, closed: canceller(query).then(() => performance.now()) }
}

/**
 * The Node floor: the same cancel written by hand on `node:net` / `node:tls` (SSLRequest + upgrade, or direct TLS
 * with ALPN), no validation, no state machine, no Effect. What any Node implementation pays at least. `tls` is the
 * TLS setup (see {@link floorTls}): tuned like NodeTransport (one SecureContext per cell, classical groups) or naive.
 */
export const rawCancelWith = (
  remote: TestSession.Remote,
  packet: Uint8Array,
  mode: "disable" | "sslrequest" | "direct",
  tls: Tls.ConnectionOptions,
  done: (error?: Error) => void
): void => {
  const target = remote._tag === "Unix"
    ? { path: remote.path }
    : { host: remote.address, port: remote.port, family: remote.family, noDelay: true }
  const finish = (socket: Net.Socket) => {
    socket.once("end", () => {
      socket.destroy()
      done()
    })
    socket.resume()
  }
  if (mode === "direct") {
    const secure = Tls.connect({ ...target, ...tls, ALPNProtocols: ["postgresql"] })
    secure.once("error", done)
    secure.once("secureConnect", () => secure.write(packet))
    return finish(secure)
  }
  const socket = Net.connect(target)
  socket.once("error", done)
  socket.once("connect", () => {
    if (mode === "disable") {
      socket.write(packet)
      return finish(socket)
    }
    socket.write(SSL_REQUEST)
    socket.once("data", () => {
      const secure = Tls.connect({ socket, ...tls, ALPNProtocols: ["postgresql"] })
      secure.once("error", done)
      secure.once("secureConnect", () => secure.write(packet))
      finish(secure)
    })
  })
}

/** {@link rawCancelWith} as a promise of its start and end times (for bench/profile.ts). */
export const rawCancel = (
  remote: TestSession.Remote,
  packet: Uint8Array,
  mode: "disable" | "sslrequest" | "direct",
  tls: Tls.ConnectionOptions = { rejectUnauthorized: false }
) =>
  new Promise<{ t0: number; t1: number }>((resolve, reject) => {
    const t0 = performance.now()
    rawCancelWith(remote, packet, mode, tls, (error) =>
      error === undefined ? resolve({ t0, t1: performance.now() }) : reject(error))
  })

/**
 * The floor's TLS setup for a cell, with the verification pqcancel does there (verify-full: the CA and the host
 * name "localhost"; otherwise none). Tuned: one SecureContext per cell (NodeTransport builds one per options
 * object) and the classical ECDH groups NodeTransport and libpq's OpenSSL offer. Naive: what `tls.connect` does
 * by default — a new SecureContext per cancel and Node's default groups (a hybrid post-quantum key share).
 */
export const floorTls = (cluster: Cluster, cell: Cell, tuned: boolean): Tls.ConnectionOptions => {
  const verify = verifyFull(cell)
  const ca = verify ? Fs.readFileSync(cluster.caCertPath) : undefined
  const check = verify ? { rejectUnauthorized: true, servername: "localhost" } : { rejectUnauthorized: false }
  if (!tuned) return { ...(ca !== undefined ? { ca } : {}), ...check }
  return {
    secureContext: Tls.createSecureContext({
      ...(ca !== undefined ? { ca } : {}),
      minVersion: "TLSv1.2",
      ecdhCurve: "X25519:prime256v1:secp384r1"
    }),
    ...check
  }
}

const SSL_REQUEST = Uint8Array.of(0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f)

/** A CancelRequest packet (length, 80877102, pid, key bytes). */
export const cancelPacket = (key: TestSession.BackendKey): Uint8Array => {
  const packet = new Uint8Array(12 + key.secret.length)
  const view = new DataView(packet.buffer)
  view.setInt32(0, packet.length)
  view.setInt32(4, 80877102)
  view.setInt32(8, key.pid)
  packet.set(key.secret, 12)
  return packet
}

export const pgConfig = (cluster: Cluster, cell: Cell, app?: string): pg.ClientConfig => ({
  host: cell.transport === "unix" ? cluster.socketDir : cluster.host,
  port: cluster.port,
  user: "postgres",
  database: "postgres",
  ...(app !== undefined ? { application_name: app } : {})
})

export const postgresjsOptions = (cluster: Cluster, cell: Cell, app: string, max: number) => ({
  host: cell.transport === "unix" ? cluster.socketDir : cluster.host,
  port: cluster.port,
  user: "postgres",
  database: "postgres",
  max,
  ssl: verifyFull(cell)
    ? { ca: Fs.readFileSync(cluster.caCertPath), servername: "localhost", rejectUnauthorized: true }
    : isEncrypted(cell)
    ? "require" as const
    : false,
  ...(cell.transport === "direct" ? { sslnegotiation: "direct" } : {}),
  fetch_types: false,
  prepare: false,
  onnotice: () => {},
  connection: { application_name: app }
})

export const connectPg = (config: pg.ClientConfig) =>
  Effect.acquireRelease(
    Effect.tryPromise({
      try: async () => {
        const client = new pg.Client(config)
        client.on("error", () => {})
        await client.connect()
        return client
      },
      catch: benchError("pg connect")
    }),
    (client) => Effect.promise(() => client.end().catch(() => undefined))
  )

export const connectPostgresjs = (options: ReturnType<typeof postgresjsOptions>) =>
  Effect.acquireRelease(
    Effect.sync(() => postgres(options as postgres.Options<Record<string, postgres.PostgresType>>)),
    (sql) => Effect.promise(() => sql.end({ timeout: 1 }).catch(() => undefined))
  )

/** Everything one cell needs: a session per system, and a `sample` function. */
export interface CellRunner {
  readonly cell: Cell
  readonly sample: (system: SystemId) => Effect.Effect<Sample, BenchError, Transport>
}

export const makeCellRunner = Effect.fnUntraced(function*(
  cluster: Cluster,
  cell: Cell,
  index: number,
  harness: Harness,
  monitor: TestSession.TestSession
): Effect.fn.Return<CellRunner, BenchError, Scope.Scope> {
  const app = (system: string) => `bench_${system.replace("-", "_")}_${index}`
  const encrypted = isEncrypted(cell)
  const supported = (id: SystemId) => systems.find((s) => s.id === id)!.unsupported(cell) === undefined

  // libpq: one harness slot per cell
  const opened = yield* harness.request(
    `open ${index} ${libpqConninfo(cluster, cell, { application_name: app("libpq") })}`
  )
    .pipe(Effect.mapError((e) => failure(`libpq open ${cell.id}: ${e.message}`)))
  const [, , protocol, ssl] = opened.split(" ")
  const expectedProtocol = cell.protocol === "3.2" ? "30002" : "30000"
  const expectedSsl = encrypted ? "1" : "0"
  if (protocol !== expectedProtocol || ssl !== expectedSsl) {
    return yield* failure(`libpq session for ${cell.id} is protocol ${protocol}, ssl ${ssl}`)
  }

  // pqcancel: a TestSession with the cell's protocol and encryption
  const session = yield* TestSession.connectTo(cluster, {
    transport: cell.transport === "unix" ? "unix" : "tcp",
    tls: tlsMode(cell),
    protocol: cell.protocol,
    parameters: { application_name: app("pqcancel") }
  }).pipe(Effect.mapError(benchError(`pqcancel session ${cell.id}`)))
  if (session.backendKey.protocolVersion !== cell.protocol) {
    return yield* failure(`TestSession for ${cell.id} got a ${session.backendKey.protocolVersion} key`)
  }
  // one options object per cell, as an application holds one per pool
  const sessionInfo = pqcancelSession(cluster, cell, session)

  const negotiation = tlsMode(cell)
  const floorSession = yield* TestSession.connectTo(cluster, {
    transport: cell.transport === "unix" ? "unix" : "tcp",
    tls: negotiation,
    protocol: cell.protocol,
    parameters: { application_name: app("floor") }
  }).pipe(Effect.mapError(benchError(`floor session ${cell.id}`)))
  const floorPacket = cancelPacket(floorSession.backendKey)

  const pgClient = supported("pg") ? yield* connectPg(pgConfig(cluster, cell, app("pg"))) : undefined
  const cancelConfig = pgConfig(cluster, cell)
  const sql = supported("postgresjs")
    ? yield* connectPostgresjs(postgresjsOptions(cluster, cell, app("postgresjs"), 1))
    : undefined
  if (sql !== undefined) {
    yield* Effect.tryPromise({ try: () => sql`SELECT 1`, catch: benchError("postgres.js connect") })
  }

  const pqcancelSample = (system: SystemId) =>
    Effect.gen(function*() {
      const pending = yield* session.startQuery(SLEEP).pipe(Effect.mapError(benchError("startQuery")))
      yield* waitSleeping(monitor, app("pqcancel"), 1)
      let tResult = 0
      const fiber = yield* pending.result.pipe(
        Effect.tap(() => Effect.sync(() => (tResult = performance.now()))),
        Effect.forkChild
      )
      const t0 = performance.now()
      if (system === "pqcancel-blocking") {
        yield* CancelConnection.cancel(sessionInfo).pipe(Effect.mapError(benchError("pqcancel blocking")))
      } else {
        yield* startAndPoll(sessionInfo)
      }
      const t1 = performance.now()
      const result = yield* Fiber.join(fiber).pipe(Effect.mapError(benchError("query result")))
      yield* checkCancelled(system, result._tag === "Error" ? result.sqlstate : "00000")
      return { dispatch: t1 - t0, e2e: tResult - t0 }
    })

  const pgSample = Effect.gen(function*() {
    const client = pgClient!
    let tResult = 0
    let code: string | undefined
    const done = client.query(SLEEP).then(
      () => {
        tResult = performance.now()
        code = "00000"
      },
      (error: { code?: string }) => {
        tResult = performance.now()
        code = error.code
      }
    )
    yield* waitSleeping(monitor, app("pg"), 1)
    // timed from the caller's fiber, as pqcancel is: the cancel call until the caller runs again
    const t0 = performance.now()
    yield* Effect.tryPromise({ try: () => pgCancel(client, cancelConfig), catch: benchError("pg") })
    const t1 = performance.now()
    yield* Effect.promise(() => done)
    yield* checkCancelled("pg", code)
    return { dispatch: t1 - t0, e2e: tResult - t0 }
  })

  const postgresjsSample = Effect.gen(function*() {
    let tResult = 0
    let code: string | undefined
    const query = sql!.unsafe(SLEEP) as unknown as PostgresQuery
    const done = query.then(
      () => {
        tResult = performance.now()
        code = "00000"
      },
      (error: { code?: string }) => {
        tResult = performance.now()
        code = error.code
      }
    )
    yield* waitSleeping(monitor, app("postgresjs"), 1)
    // timed from the caller's fiber, as pqcancel is: the cancel call until the caller runs again
    const t0 = performance.now()
    const { closed } = postgresjsCancel(query)
    const t1 = encrypted
      ? Number.NaN
      : yield* Effect.tryPromise({ try: () => closed, catch: benchError("postgres.js") }).pipe(
        Effect.map(() => performance.now())
      )
    yield* Effect.promise(() => done)
    yield* checkCancelled("postgresjs", code)
    return { dispatch: t1 - t0, e2e: tResult - t0 }
  })

  const floorSetup = { tuned: floorTls(cluster, cell, true), naive: floorTls(cluster, cell, false) }
  const floorSample = (system: "node-floor" | "node-naive") =>
    Effect.gen(function*() {
      const pending = yield* floorSession.startQuery(SLEEP).pipe(Effect.mapError(benchError("startQuery")))
      yield* waitSleeping(monitor, app("floor"), 1)
      let tResult = 0
      const fiber = yield* pending.result.pipe(
        Effect.tap(() => Effect.sync(() => (tResult = performance.now()))),
        Effect.forkChild
      )
      const tls = system === "node-floor" ? floorSetup.tuned : floorSetup.naive
      // the hand-written socket code inside one Effect.callback, timed from the caller's fiber as pqcancel is
      const t0 = performance.now()
      yield* Effect.callback<void, BenchError>((resume) => {
        rawCancelWith(floorSession.remote, floorPacket, negotiation, tls, (error) => {
          resume(error === undefined ? Effect.void : Effect.fail(benchError("raw cancel")(error)))
        })
      })
      const t1 = performance.now()
      const result = yield* Fiber.join(fiber).pipe(Effect.mapError(benchError("query result")))
      yield* checkCancelled(system, result._tag === "Error" ? result.sqlstate : "00000")
      return { dispatch: t1 - t0, e2e: tResult - t0 }
    })

  const libpqSample = (mode: string) =>
    harness.request(`sample ${index} ${mode}`).pipe(
      Effect.mapError((e) => failure(`libpq ${mode} ${cell.id}: ${e.message}`)),
      Effect.flatMap((line) => {
        const [, dispatch, e2e, sqlstate] = line.split(" ")
        return checkCancelled(`libpq-${mode}` as SystemId, sqlstate).pipe(
          Effect.as({ dispatch: Number(dispatch) / 1e6, e2e: Number(e2e) / 1e6 })
        )
      })
    )

  const sample = (system: SystemId): Effect.Effect<Sample, BenchError, Transport> => {
    switch (system) {
      case "pqcancel-blocking":
      case "pqcancel-poll":
        return pqcancelSample(system)
      case "pqcancel-all":
        return Effect.fail(benchError("pqcancel cancelAll")(new Error("bursts only")))
      case "libpq-blocking":
        return libpqSample("blocking")
      case "libpq-poll":
        return libpqSample("poll")
      case "libpq-legacy":
        return libpqSample("legacy")
      case "pg":
        return pgSample
      case "postgresjs":
        return postgresjsSample
      case "node-floor":
      case "node-naive":
        return floorSample(system)
    }
  }
  return { cell, sample }
})
