/**
 * Interrupt a fiber running an @effect/sql-pg statement ⇒ the statement stops on the server through pqcancel (TCP,
 * TLS verify-full, unix socket), the pooled connection serves the next statement, sql-pg's own cancel never fires,
 * and a connection whose cancel cannot be sent is retired instead of reused.
 *
 * Every client here connects through a recording proxy in front of the cluster, which counts connections: the pool's
 * sessions plus every cancel connection, whoever opens it. A spy Transport counts pqcancel's cancel connections, so
 * "proxy connections = sessions + spy connects" proves sql-pg opened none of its own.
 */
import * as PgClient from "@effect/sql-pg/PgClient"
import * as PgConnection from "@effect/sql-pg/PgConnection"
import { assert, layer } from "@effect/vitest"
import { Transport } from "@pqcancel/core/Transport"
import { NodeTransport } from "@pqcancel/node"
import * as SqlPgAdapter from "@pqcancel/node/SqlPgAdapter"
import { Arbitraries, EmbeddedPostgres, TestSession } from "@pqcancel/test-utils"
import * as Cause from "effect/Cause"
import * as Config from "effect/Config"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Context from "effect/Context"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import * as Result from "effect/Result"
import * as Stream from "effect/Stream"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Os from "node:os"
import * as Path from "node:path"
import { checkInterleaving } from "./interleavings.ts"

interface Proxy {
  /** where clients connect: a TCP port on 127.0.0.1, or a socket directory holding `.s.PGSQL.<port>` */
  readonly port: number
  readonly socketDir: string | undefined
  /** connections accepted so far */
  readonly connections: () => number
  /** stop accepting (connections already open keep working): a cancel sent now is refused */
  readonly refuseNew: Effect.Effect<void>
}

/** A TCP or unix-socket proxy in front of the cluster that counts the connections it accepts */
const recordingProxy = (cluster: EmbeddedPostgres.Cluster, kind: "tcp" | "unix") =>
  Effect.gen(function*() {
    let accepted = 0
    const sockets = new Set<Net.Socket>()
    const server = Net.createServer((client) => {
      accepted++
      const upstream = kind === "tcp"
        ? Net.connect({ host: cluster.host, port: cluster.port })
        : Net.connect({ path: cluster.socketPath })
      for (const s of [client, upstream]) {
        sockets.add(s)
        s.on("error", () => undefined)
        s.on("close", () => {
          sockets.delete(s)
          client.destroy()
          upstream.destroy()
        })
      }
      client.pipe(upstream)
      upstream.pipe(client)
    })
    const socketDir = kind === "unix" ? Fs.mkdtempSync(Path.join(Os.tmpdir(), "pqcancel-sqlpg-")) : undefined
    const port = yield* Effect.acquireRelease(
      Effect.callback<number>((resume) => {
        const ready = () => resume(Effect.succeed(kind === "tcp" ? (server.address() as Net.AddressInfo).port : 5432))
        if (socketDir !== undefined) server.listen(Path.join(socketDir, ".s.PGSQL.5432"), ready)
        else server.listen(0, "127.0.0.1", ready)
      }),
      () =>
        Effect.callback<void>((resume) => {
          for (const s of sockets) s.destroy()
          server.close(() => resume(Effect.void))
        }).pipe(
          Effect.timeoutOption("5 seconds"),
          Effect.andThen(Effect.sync(() => {
            if (socketDir !== undefined) Fs.rmSync(socketDir, { recursive: true, force: true })
          }))
        )
    )
    return {
      port,
      socketDir,
      connections: () => accepted,
      refuseNew: Effect.sync(() => {
        server.close()
      })
    } satisfies Proxy
  })

/** NodeTransport, counting the cancel connections pqcancel opens */
const spyTransport = Effect.gen(function*() {
  let connects = 0
  const built = yield* Layer.build(NodeTransport.layer)
  const inner = Context.get(built, Transport)
  const service = Transport.of({
    ...inner,
    connect: (request, sink) => {
      connects++
      return inner.connect(request, sink)
    }
  })
  return { service, connects: () => connects }
})

/**
 * A dispatched cancel whose statement has not ended yet is sent again after `recancelInterval` (500 ms by default):
 * on a busy machine that could add a second cancel connection to the counts these tests assert exactly. 4 s keeps
 * that second chance within the 5 s drain bound without it firing when the first cancel worked.
 */
const exactCounts: SqlPgAdapter.Options = { recancelInterval: "4 seconds" }

/** A PgClient from the adapter's layer, built in the test's scope */
const makeClient = (config: PgClient.PgPoolConfig, options?: SqlPgAdapter.Options) =>
  Effect.gen(function*() {
    const spy = yield* spyTransport
    const context = yield* Layer.build(
      SqlPgAdapter.layer(config, { ...exactCounts, ...options }).pipe(
        Layer.provide(Layer.succeed(Transport, spy.service))
      )
    )
    return { sql: Context.get(context, PgClient.PgClient), cancels: spy.connects }
  })

const monitorOf = (cluster: EmbeddedPostgres.Cluster) => TestSession.connectTo(cluster, { transport: "unix" })

const backendPid = (sql: PgClient.PgClient) =>
  Effect.map(sql<{ pid: number }>`SELECT pg_backend_pid() AS pid`, (rows) => rows[0]!.pid)

const queryValue = (monitor: TestSession.TestSession, text: string) =>
  Effect.map(monitor.query(text), (result) => result._tag === "Ok" ? result.rows[0]?.[0] : `error ${result.sqlstate}`)

type Variant = {
  readonly name: string
  readonly proxy: "tcp" | "unix"
  readonly config: (cluster: EmbeddedPostgres.Cluster, proxy: Proxy) => PgClient.PgPoolConfig
  readonly options?: (cluster: EmbeddedPostgres.Cluster) => SqlPgAdapter.Options
}

const variants: ReadonlyArray<Variant> = [
  {
    name: "TCP",
    proxy: "tcp",
    config: (_, proxy) => ({ host: "127.0.0.1", port: proxy.port, username: "postgres", maxConnections: 1 })
  },
  {
    name: "TLS verify-full",
    proxy: "tcp",
    config: (cluster, proxy) => ({
      host: "localhost",
      port: proxy.port,
      username: "postgres",
      ssl: { ca: Fs.readFileSync(cluster.caCertPath, "utf8") },
      maxConnections: 1
    })
  },
  {
    name: "unix socket",
    proxy: "unix",
    config: (_, proxy) => ({ host: proxy.socketDir, port: proxy.port, username: "postgres", maxConnections: 1 })
  }
]

/** One multiplexed connection on the cluster's unix socket, a monitor, and the connection's backend pid */
const multiplexed = Effect.gen(function*() {
  const cluster = yield* EmbeddedPostgres.EmbeddedPostgres
  const client = yield* makeClient({
    host: cluster.socketDir,
    port: cluster.port,
    username: "postgres",
    multiplex: true,
    maxConnections: 1
  })
  return { ...client, monitor: yield* monitorOf(cluster), pid: yield* backendPid(client.sql) }
})

const setup = (variant: Variant) =>
  Effect.gen(function*() {
    const cluster = yield* EmbeddedPostgres.EmbeddedPostgres
    const proxy = yield* recordingProxy(cluster, variant.proxy)
    const client = yield* makeClient(variant.config(cluster, proxy), variant.options?.(cluster))
    const monitor = yield* monitorOf(cluster)
    return { cluster, proxy, monitor, ...client }
  })

layer(EmbeddedPostgres.layer18, { excludeTestServices: true, timeout: "120 seconds" })("SqlPgAdapter", (it) => {
  for (const variant of variants) {
    it.effect(`Effect.timeout on pg_sleep(60) stops the backend; the same pooled connection runs the next statement (${variant.name})`, () =>
      Effect.gen(function*() {
        const { cancels, monitor, proxy, sql } = yield* setup(variant)
        const pid = yield* backendPid(sql)
        if (variant.name === "TLS verify-full") {
          assert.strictEqual(yield* queryValue(monitor, `SELECT ssl FROM pg_stat_ssl WHERE pid = ${pid}`), "t")
        }
        const exit = yield* sql`SELECT pg_sleep(60)`.pipe(Effect.timeout("2 seconds"), Effect.exit)
        // the caller sees the timeout, never the server's 57014
        assert.isTrue(Exit.isFailure(exit))
        if (Exit.isFailure(exit)) assert.strictEqual(Cause.squash(exit.cause)?.constructor.name, "TimeoutError")
        // the interruption completed once the server had stopped the statement: the backend is idle now
        assert.strictEqual(yield* queryValue(monitor, `SELECT state FROM pg_stat_activity WHERE pid = ${pid}`), "idle")
        assert.strictEqual(yield* backendPid(sql), pid)
        // one cancel connection, pqcancel's: the proxy saw the session and exactly that one
        assert.strictEqual(cancels(), 1)
        assert.strictEqual(proxy.connections(), 2)
      }))
  }

  it.effect("a transaction interrupted mid-statement is rolled back and its connection is clean", () =>
    Effect.gen(function*() {
      const { cancels, monitor, proxy, sql } = yield* setup(variants[1]!)
      yield* sql`CREATE TABLE IF NOT EXISTS sqlpg_tx (n int)`
      yield* sql`TRUNCATE sqlpg_tx`
      const pid = yield* backendPid(sql)
      const fiber = yield* sql.withTransaction(Effect.gen(function*() {
        yield* sql`INSERT INTO sqlpg_tx VALUES (1)`
        yield* sql`SELECT pg_sleep(60)`
      })).pipe(Effect.forkChild)
      yield* TestSession.waitUntilSleeping(monitor, pid)
      const exit = yield* Fiber.interrupt(fiber).pipe(Effect.andThen(Fiber.await(fiber)))
      assert.isTrue(Exit.isFailure(exit) && Cause.hasInterruptsOnly(exit.cause))
      // rolled back (not "idle in transaction"), the insert gone, and the connection serves the next statement
      assert.strictEqual(yield* queryValue(monitor, `SELECT state FROM pg_stat_activity WHERE pid = ${pid}`), "idle")
      assert.strictEqual(yield* queryValue(monitor, "SELECT count(*) FROM sqlpg_tx"), "0")
      const rows = yield* sql<
        { pid: number; tx: boolean }
      >`SELECT pg_backend_pid() AS pid, now() = statement_timestamp() AS tx`
      assert.strictEqual(rows[0]!.pid, pid)
      assert.strictEqual(cancels(), 1)
      assert.strictEqual(proxy.connections(), 2)
    }))

  it.effect("a statement on a reserved connection is cancelled; the connection stays usable", () =>
    Effect.gen(function*() {
      const { cancels, monitor, proxy, sql } = yield* setup(variants[2]!)
      const pid = yield* backendPid(sql)
      const reserved = yield* sql.reserve
      const fiber = yield* reserved.executeRaw("SELECT pg_sleep(60)", []).pipe(Effect.forkChild)
      yield* TestSession.waitUntilSleeping(monitor, pid)
      const exit = yield* Fiber.interrupt(fiber).pipe(Effect.andThen(Fiber.await(fiber)))
      assert.isTrue(Exit.isFailure(exit) && Cause.hasInterruptsOnly(exit.cause))
      assert.strictEqual(yield* queryValue(monitor, `SELECT state FROM pg_stat_activity WHERE pid = ${pid}`), "idle")
      const rows = yield* reserved.execute("SELECT pg_backend_pid() AS pid", [], undefined)
      assert.strictEqual(rows[0].pid, pid)
      assert.strictEqual(cancels(), 1)
      assert.strictEqual(proxy.connections(), 2)
    }))

  it.effect("on a reserved connection, interrupting a statement queued behind another one cancels nothing", () =>
    Effect.gen(function*() {
      const { cancels, monitor, sql } = yield* setup(variants[0]!)
      const pid = yield* backendPid(sql)
      const reserved = yield* sql.reserve
      const running = yield* reserved.executeRaw("SELECT pg_sleep(60)", []).pipe(Effect.forkChild)
      yield* TestSession.waitUntilSleeping(monitor, pid)
      // queued behind the running statement on the same connection: interrupting it must not cancel the other
      const queued = yield* reserved.executeRaw("SELECT 2", []).pipe(Effect.forkChild({ startImmediately: true }))
      yield* Fiber.interrupt(queued)
      assert.strictEqual(cancels(), 0)
      assert.strictEqual(
        yield* queryValue(monitor, `SELECT wait_event FROM pg_stat_activity WHERE pid = ${pid}`),
        "PgSleep"
      )
      // interrupting the running one cancels it: one cancel, and the connection is reusable
      yield* Fiber.interrupt(running)
      assert.strictEqual(cancels(), 1)
      assert.strictEqual(yield* queryValue(monitor, `SELECT state FROM pg_stat_activity WHERE pid = ${pid}`), "idle")
      const rows = yield* reserved.execute("SELECT pg_backend_pid() AS pid", [], undefined)
      assert.strictEqual(rows[0].pid, pid)
    }))

  it.effect("a stream interrupted mid-read is cancelled and drained; the connection is reused", () =>
    Effect.gen(function*() {
      const { cancels, monitor, proxy, sql } = yield* setup(variants[0]!)
      const pid = yield* backendPid(sql)
      const firstRows = yield* Deferred.make<void>()
      let received = 0
      // 5000 rows at once, then the backend sleeps inside the statement: the stream is mid-read
      const fiber = yield* sql`SELECT g, CASE WHEN g > 5000 THEN pg_sleep(60) END AS s FROM generate_series(1, 10000) g`
        .stream.pipe(
          Stream.runForEach(() =>
            Effect.andThen(Effect.sync(() => received++), Deferred.succeed(firstRows, undefined))
          ),
          Effect.forkChild
        )
      yield* Deferred.await(firstRows)
      yield* TestSession.waitUntilSleeping(monitor, pid)
      const exit = yield* Fiber.interrupt(fiber).pipe(Effect.andThen(Fiber.await(fiber)))
      assert.isTrue(Exit.isFailure(exit) && Cause.hasInterruptsOnly(exit.cause))
      assert.isAbove(received, 0)
      assert.isAtMost(received, 5000)
      assert.strictEqual(yield* queryValue(monitor, `SELECT state FROM pg_stat_activity WHERE pid = ${pid}`), "idle")
      assert.strictEqual(yield* backendPid(sql), pid)
      assert.strictEqual(cancels(), 1)
      assert.strictEqual(proxy.connections(), 2)
    }))

  it.effect("a stream the consumer stops early (Stream.take) cancels the rest of its statement", () =>
    Effect.gen(function*() {
      const { cancels, monitor, proxy, sql } = yield* setup(variants[1]!)
      const pid = yield* backendPid(sql)
      const rows = yield* sql<{ g: number }>`SELECT g, CASE WHEN g > 5000 THEN pg_sleep(60) END AS s
        FROM generate_series(1, 10000) g`.stream.pipe(Stream.take(10), Stream.runCollect)
      assert.deepStrictEqual(rows.map((row) => row.g), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
      // the rest of the statement was cancelled before the stream completed: the backend is idle, not sleeping
      assert.strictEqual(yield* queryValue(monitor, `SELECT state FROM pg_stat_activity WHERE pid = ${pid}`), "idle")
      assert.strictEqual(yield* backendPid(sql), pid)
      assert.strictEqual(cancels(), 1)
      assert.strictEqual(proxy.connections(), 2)
    }))

  it.effect("multiplex: a shared pipelined statement is cancelled, and so is a transaction's", () =>
    Effect.gen(function*() {
      const { cancels, monitor, pid, sql } = yield* multiplexed
      // a shared (pipelined) statement, alone on the wire: cancelled through pqcancel
      const shared = yield* sql`SELECT pg_sleep(60)`.pipe(Effect.forkChild)
      yield* TestSession.waitUntilSleeping(monitor, pid)
      yield* Fiber.interrupt(shared)
      assert.strictEqual(cancels(), 1)
      assert.strictEqual(yield* queryValue(monitor, `SELECT state FROM pg_stat_activity WHERE pid = ${pid}`), "idle")
      // inside a transaction (a reserved connection) the statement is ours alone: cancelled through pqcancel
      const fiber = yield* sql.withTransaction(sql`SELECT pg_sleep(60)`).pipe(Effect.forkChild)
      yield* TestSession.waitUntilSleeping(monitor, pid)
      yield* Fiber.interrupt(fiber)
      assert.strictEqual(cancels(), 2)
      assert.strictEqual(yield* queryValue(monitor, `SELECT state FROM pg_stat_activity WHERE pid = ${pid}`), "idle")
      // shared statements pipeline as with sql-pg's own client
      const pids = yield* Effect.all(Array.from({ length: 8 }, () => backendPid(sql)), { concurrency: "unbounded" })
      assert.deepStrictEqual(new Set(pids), new Set([pid]))
      assert.strictEqual(cancels(), 2)
    }))

  it.effect("multiplex: a statement written behind another waits for its turn, then only it is cancelled", () =>
    Effect.gen(function*() {
      const { cancels, monitor, pid, sql } = yield* multiplexed
      const first = yield* sql<{ n: number }>`SELECT 7 AS n FROM pg_sleep(0.5)`.pipe(Effect.forkChild)
      const second = yield* sql`SELECT pg_sleep(60)`.pipe(Effect.forkChild)
      yield* TestSession.waitUntilSleeping(monitor, pid)
      const interrupter = yield* Fiber.interrupt(second).pipe(Effect.forkChild)
      // the first one is never cancelled: it completes, then the second runs and is cancelled
      const rows = yield* Fiber.join(first)
      assert.strictEqual(rows[0]?.n, 7)
      yield* Fiber.join(interrupter)
      // a cancel reaching the backend in the instant between the two statements finds it reading the next one and
      // is dropped by PostgreSQL: it is then sent again (recancelInterval), so at least one
      assert.isAtLeast(cancels(), 1)
      assert.strictEqual(yield* queryValue(monitor, `SELECT state FROM pg_stat_activity WHERE pid = ${pid}`), "idle")
      assert.strictEqual(yield* backendPid(sql), pid)
    }))

  for (const multiplex of [false, true]) {
    let run = 0
    it.effect.prop(
      `random interleavings${
        multiplex ? " (multiplex)" : ""
      }: only interrupted statements are cancelled, none takes effect after its interruption`,
      { scenario: Arbitraries.interruptScenario() },
      ({ scenario }) =>
        Effect.gen(function*() {
          const cluster = yield* EmbeddedPostgres.EmbeddedPostgres
          const { sql } = yield* makeClient({
            host: cluster.socketDir,
            port: cluster.port,
            username: "postgres",
            multiplex,
            maxConnections: 2
          }, { onNotCanceled: () => Effect.void, recancelInterval: "100 millis" })
          const monitor = yield* makeClient({ host: cluster.socketDir, port: cluster.port, username: "postgres" })
          yield* monitor.sql`CREATE TABLE IF NOT EXISTS sqlpg_rows (tag text, id int)`
          const tag = `prop-${multiplex}-${run++}`
          yield* checkInterleaving(
            scenario,
            (step, id) => sql`INSERT INTO sqlpg_rows SELECT ${tag}, ${id} FROM pg_sleep(${step.sleepMs / 1000})`,
            (id) =>
              Effect.map(
                monitor.sql`SELECT 1 FROM sqlpg_rows WHERE tag = ${tag} AND id = ${id}`,
                (rows) => rows.length > 0
              ),
            Effect.map(
              monitor.sql<{ id: number }>`SELECT id FROM sqlpg_rows WHERE tag = ${tag}`,
              (rows) => new Set(rows.map((r) => r.id))
            )
          )
        }),
      { timeout: 90_000, arbitrary: { runs: 12, maxShrinks: 3 } }
    )
  }

  it.effect("a stream that finishes is not cancelled", () =>
    Effect.gen(function*() {
      const { cancels, proxy, sql } = yield* setup(variants[2]!)
      const rows = yield* sql<{ g: number }>`SELECT g FROM generate_series(1, 2000) g`.stream.pipe(Stream.runCollect)
      assert.strictEqual(rows.length, 2000)
      const error = yield* Effect.flip(sql`SELECT 1/0`)
      assert.strictEqual(error._tag, "SqlError")
      assert.strictEqual(cancels(), 0)
      assert.strictEqual(proxy.connections(), 1)
    }))

  it.effect("a cancel that cannot be sent retires the connection: it is never reused", () =>
    Effect.gen(function*() {
      const cluster = yield* EmbeddedPostgres.EmbeddedPostgres
      const proxy = yield* recordingProxy(cluster, "tcp")
      const { cancels, sql } = yield* makeClient(
        { host: "127.0.0.1", port: proxy.port, username: "postgres", maxConnections: 1 },
        { cancelTimeout: "1 second", drainTimeout: "2 seconds" }
      )
      const monitor = yield* monitorOf(cluster)
      const pid = yield* backendPid(sql)
      // the cancel goes to the session's address, the proxy, which now refuses new connections
      yield* proxy.refuseNew
      const fiber = yield* sql`SELECT pg_sleep(60)`.pipe(Effect.forkChild)
      yield* TestSession.waitUntilSleeping(monitor, pid)
      const exit = yield* Fiber.interrupt(fiber).pipe(Effect.andThen(Fiber.await(fiber)))
      assert.isTrue(Exit.isFailure(exit) && Cause.hasInterruptsOnly(exit.cause))
      // refused: sent again (a transient failure) within the bound, then given up
      assert.isAtLeast(cancels(), 1)
      assert.strictEqual(proxy.connections(), 1)
      // the pool cannot reach the server any more through the closed proxy: the next checkout must open a new
      // connection (and fails), it does not get the retired one
      const next = yield* Effect.exit(backendPid(sql))
      assert.isTrue(Exit.isFailure(next))
      // the retired backend was still sleeping; end it so the cluster stays clean
      yield* monitor.query(`SELECT pg_terminate_backend(${pid})`)
      yield* TestSession.waitUntilGone(monitor, pid)
    }))

  it.effect("the cancel verifies the server as the session did: a server it cannot verify gets no key", () =>
    Effect.gen(function*() {
      const cluster = yield* EmbeddedPostgres.EmbeddedPostgres
      const proxy = yield* recordingProxy(cluster, "tcp")
      // the session trusts the cluster's CA; the cancel is told to trust another CA only
      const { cancels, sql } = yield* makeClient(
        {
          host: "localhost",
          port: proxy.port,
          username: "postgres",
          ssl: { ca: Fs.readFileSync(cluster.caCertPath, "utf8") },
          maxConnections: 1
        },
        { cancelParams: { sslrootcert: cluster.wrongCaCertPath } }
      )
      const monitor = yield* monitorOf(cluster)
      const pid = yield* backendPid(sql)
      const fiber = yield* sql`SELECT pg_sleep(60)`.pipe(Effect.forkChild)
      yield* TestSession.waitUntilSleeping(monitor, pid)
      yield* Fiber.interrupt(fiber)
      assert.strictEqual(cancels(), 1)
      // the handshake failed before the key was sent: the statement still runs, so the connection was retired
      assert.strictEqual(
        yield* queryValue(monitor, `SELECT wait_event FROM pg_stat_activity WHERE pid = ${pid}`),
        "PgSleep"
      )
      const next = yield* backendPid(sql)
      assert.notStrictEqual(next, pid)
      yield* monitor.query(`SELECT pg_terminate_backend(${pid})`)
      yield* TestSession.waitUntilGone(monitor, pid)
    }))

  it.effect("50 fibers on one pool interrupted at once: every backend idle, the pool whole", () =>
    Effect.gen(function*() {
      const cluster = yield* EmbeddedPostgres.EmbeddedPostgres
      const proxy = yield* recordingProxy(cluster, "tcp")
      const { cancels, sql } = yield* makeClient({
        host: "127.0.0.1",
        port: proxy.port,
        username: "postgres",
        applicationName: "sqlpg-burst",
        maxConnections: 10
      })
      const monitor = yield* monitorOf(cluster)
      const fibers = yield* Effect.forEach(
        Array.from({ length: 50 }, (_, i) => i),
        (i) => Effect.forkChild(sql`SELECT pg_sleep(60), ${i}::int`)
      )
      const sleeping = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'sqlpg-burst' " +
        "AND wait_event = 'PgSleep'"
      yield* TestSession.waitUntil(monitor, sleeping, (n) => n === "10", { timeout: "30 seconds" })
      const pids = yield* monitor.query(
        "SELECT string_agg(pid::text, ',' ORDER BY pid) FROM pg_stat_activity WHERE application_name = 'sqlpg-burst'"
      )
      yield* Fiber.interruptAll(fibers)
      for (const fiber of fibers) {
        const exit = yield* Fiber.await(fiber)
        assert.isTrue(Exit.isFailure(exit) && Cause.hasInterruptsOnly(exit.cause))
      }
      // the ten running statements were cancelled, the forty waiting for a connection were not (nothing to cancel)
      assert.strictEqual(cancels(), 10)
      assert.strictEqual(proxy.connections(), 20)
      const after = yield* monitor.query(
        "SELECT string_agg(pid::text, ',' ORDER BY pid), bool_and(state = 'idle') FROM pg_stat_activity " +
          "WHERE application_name = 'sqlpg-burst'"
      )
      assert.deepStrictEqual(after._tag === "Ok" ? after.rows[0] : after, [
        pids._tag === "Ok" ? pids.rows[0]![0]! : "",
        "t"
      ])
      // the same ten connections serve fifty more statements
      const served = yield* Effect.forEach(
        Array.from({ length: 50 }, () => backendPid(sql)),
        (pid) => pid,
        { concurrency: "unbounded" }
      )
      const known = new Set((pids._tag === "Ok" ? pids.rows[0]![0]! : "").split(",").map(Number))
      assert.isTrue(served.every((pid) => known.has(pid)))
      assert.strictEqual(proxy.connections(), 20)
    }))

  it.effect("layerConfig: the PgClient config from Config; an interrupted statement is cancelled", () =>
    Effect.gen(function*() {
      const cluster = yield* EmbeddedPostgres.EmbeddedPostgres
      const spy = yield* spyTransport
      const context = yield* Layer.build(
        SqlPgAdapter.layerConfig({
          url: Config.Redacted("DATABASE_URL"),
          maxConnections: Config.Int("POOL_SIZE")
        }, exactCounts).pipe(
          Layer.provide(Layer.succeed(Transport, spy.service)),
          Layer.provide(ConfigProvider.layer(ConfigProvider.fromEnvRecord({
            DATABASE_URL: `postgres://postgres@localhost:${cluster.port}/postgres?sslmode=disable`,
            POOL_SIZE: "1"
          })))
        )
      )
      const sql = Context.get(context, PgClient.PgClient)
      const monitor = yield* monitorOf(cluster)
      const pid = yield* backendPid(sql)
      const fiber = yield* sql`SELECT pg_sleep(60)`.pipe(Effect.forkChild)
      yield* TestSession.waitUntilSleeping(monitor, pid)
      yield* Fiber.interrupt(fiber)
      assert.strictEqual(spy.connects(), 1)
      assert.strictEqual(yield* queryValue(monitor, `SELECT state FROM pg_stat_activity WHERE pid = ${pid}`), "idle")
      assert.strictEqual(yield* backendPid(sql), pid)
    }))

  it.effect("the private read fails with a typed error, never a wrong key or address, when internals change", () =>
    Effect.gen(function*() {
      const cluster = yield* EmbeddedPostgres.EmbeddedPostgres
      const connection = yield* PgConnection.make({ host: cluster.socketDir, port: cluster.port, username: "postgres" })
      const read = SqlPgAdapter.readSession(connection)
      assert.isTrue(Result.isSuccess(read))
      if (Result.isSuccess(read)) {
        assert.strictEqual(read.success.pid, connection.processId)
        assert.isFalse(read.success.encrypted)
      }
      const key = "~@effect/sql-pg/PgConnection/internals"
      const real = (connection as unknown as Record<string, { base: { session: Record<string, unknown> } }>)[key]!
      const session = real.base.session
      const broken: ReadonlyArray<readonly [string, unknown]> = [
        ["no internals", { processId: connection.processId }],
        ["no session", { processId: connection.processId, [key]: { base: {} } }],
        ["secret renamed", {
          processId: connection.processId,
          [key]: { base: { session: { ...session, secretKey: undefined, secret: session.secretKey } } }
        }],
        ["a 3.2 key", {
          processId: connection.processId,
          [key]: { base: { session: { ...session, secretKey: new Uint8Array(32) } } }
        }],
        ["another backend's pid", { processId: connection.processId + 1, [key]: real }],
        ["encrypted flag contradicts the socket", {
          processId: connection.processId,
          [key]: { base: { session: { ...session, encrypted: true } } }
        }],
        ["not a socket", {
          processId: connection.processId,
          [key]: { base: { session: { ...session, socket: {} } } }
        }]
      ]
      const options = Result.getOrThrow(SqlPgAdapter.cancelOptions({ host: cluster.socketDir, port: cluster.port }))
      for (const [name, fake] of broken) {
        const error = yield* Effect.flip(SqlPgAdapter.sessionInfo(fake as PgConnection.PgConnection, options))
        assert.strictEqual(error._tag, "SqlPgInternalsChanged", name)
        assert.include(error.message, `@effect/sql-pg ${SqlPgAdapter.installedVersion}: internals changed`, name)
        assert.match(SqlPgAdapter.installedVersion, /^4\.\d+\.\d+/)
      }
    }))
})

layer(Layer.empty)("SqlPgAdapter.cancelOptions", (it) => {
  const ok = (config: PgConnection.Config, params?: SqlPgAdapter.CancelParams) =>
    Result.getOrThrow(SqlPgAdapter.cancelOptions(config, params))
  const fails = (config: PgConnection.Config, params?: SqlPgAdapter.CancelParams) => {
    const result = SqlPgAdapter.cancelOptions(config, params)
    assert.isTrue(Result.isFailure(result))
    return Result.isFailure(result) ? result.failure.message : ""
  }

  it("maps sql-pg's ssl settings to a cancel never weaker than the session", () => {
    const plain = ok({ host: "db", port: 5433 })
    assert.strictEqual(plain.plaintext?.sslmode, "disable")
    assert.strictEqual(plain.plaintext?.gssencmode, "disable")
    assert.isUndefined(plain.tls)
    assert.deepStrictEqual(plain.host, { _tag: "Tcp", host: "db", hostaddr: undefined, port: 5433 })

    // sql-pg's require verifies like verify-full, against the system roots
    const url = ok({ url: Redacted.make("postgres://u@db:6000/app?sslmode=require") })
    assert.isUndefined(url.plaintext)
    assert.strictEqual(url.tls?.sslmode, "verify-full")
    assert.strictEqual(url.tls?.sslrootcert, "system")
    assert.strictEqual(url.tls?.sslnegotiation, "postgres")

    const prefer = ok({ url: Redacted.make("postgres://db/app?sslmode=prefer") })
    assert.strictEqual(prefer.tls?.sslmode, "verify-full")
    assert.strictEqual(prefer.plaintext?.sslmode, "prefer")

    const unverified = ok({ host: "db", ssl: { rejectUnauthorized: false } })
    assert.strictEqual(unverified.tls?.sslmode, "require")

    // in-memory material travels as sslMaterial; the host name verified is servername, as Node's TLS does
    const memory = ok({ host: "10.0.0.5", ssl: { ca: "CA PEM", cert: "CERT", key: "KEY", servername: "db.internal" } })
    assert.strictEqual(memory.tls?.sslmode, "verify-full")
    assert.isUndefined(memory.tls?.sslrootcert)
    assert.deepStrictEqual(memory.tls?.sslMaterial?.ca, ["CA PEM"])
    assert.deepStrictEqual(memory.tls?.sslMaterial?.cert, ["CERT"])
    assert.strictEqual(Redacted.value(memory.tls!.sslMaterial!.key!), "KEY")
    assert.deepStrictEqual(memory.host, { _tag: "Tcp", host: "db.internal", hostaddr: undefined, port: 5432 })
    // a file given for the cancel replaces the in-memory CA
    const files = ok({ host: "db", ssl: { ca: "PEM" } }, { sslrootcert: "/ca.pem" })
    assert.strictEqual(files.tls?.sslrootcert, "/ca.pem")
    // nothing in memory; no libpq default file read for what the session did not have
    assert.deepStrictEqual(files.tls?.sslMaterial, { onlyGiven: true })

    const unix = ok({ host: "/run/pg", port: 5444 })
    assert.strictEqual(unix.path, "/run/pg/.s.PGSQL.5444")
    assert.deepStrictEqual(unix.host, { _tag: "Unix", directory: "/run/pg", port: 5444 })
  })

  it("refuses what it cannot honour", () => {
    assert.include(fails({ host: "db", ssl: { pfx: "P12" } }), "pfx")
    assert.include(fails({ host: "db", ssl: { cert: "PEM", key: ["K1", "K2"] } }), "ssl.key")
    assert.include(fails({ host: "db", ssl: true }, { sslmode: "disable" }), "weaker")
    assert.include(fails({ host: "db", ssl: true }, { sslmode: "require" }), "weaker")
    assert.include(fails({ stream: () => new Net.Socket() }), "stream")
  })
})
