/**
 * pg.Pool helpers (poolQuery, withPoolClient: cancel on interrupt, release, destroy when unsafe) and the cancel's
 * options derived from a pg.Client (node-postgres' sslmode meanings mapped to libpq's, in-memory TLS material).
 */
import { assert, describe, it, layer } from "@effect/vitest"
import { NodeTransport } from "@pqcancel/node"
import * as PgAdapter from "@pqcancel/node/PgAdapter"
import { EmbeddedPostgres, FaultProxy } from "@pqcancel/test-utils"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Redacted from "effect/Redacted"
import * as Fs from "node:fs"
import pg from "pg"
import pgPackage from "pg/package.json" with { type: "json" }
import { interruptedOnly } from "./fixtures.ts"
import { connectMonitor, waitUntil } from "./pgMonitor.ts"

// the backends sleeping in a query tagged `-- <tag>` (tests of this file run concurrently: one tag each)
const sleepingBackends = (monitor: pg.Client, tag: string) =>
  Effect.promise(() =>
    monitor.query<{ pid: number }>(
      "SELECT pid FROM pg_stat_activity WHERE wait_event = 'PgSleep' AND query LIKE $1",
      [`%-- ${tag}`]
    )
  ).pipe(Effect.map((r) => r.rows.map((row) => row.pid)))

// pg-pool emits "error" for an idle client whose connection broke (e.g. a backend terminated while the pool ends);
// without a listener Node throws it as an unhandled error and fails the run although every test passed
const scopedPool = (config: pg.PoolConfig) =>
  Effect.acquireRelease(
    Effect.sync(() => new pg.Pool(config).on("error", () => undefined)),
    (pool) => Effect.promise(() => pool.end())
  )

layer(EmbeddedPostgres.layer18, { excludeTestServices: true, timeout: "60 seconds" })(
  "PgAdapter with pg.Pool",
  (it) => {
    const setup = connectMonitor(12, "CREATE TABLE IF NOT EXISTS pool_rows (tag text)")

    it.effect("poolQuery: interrupting cancels on the server and the client goes back to the pool idle", () =>
      Effect.gen(function*() {
        const { cluster, monitor } = yield* setup
        const ca = Fs.readFileSync(cluster.caCertPath, "utf8")
        // in-memory CA: the cancel verifies the server with the same material (verify-full)
        const pool = yield* scopedPool({
          host: "localhost",
          port: cluster.port,
          user: "postgres",
          max: 1,
          ssl: { ca }
        })
        const fiber = yield* PgAdapter.poolQuery(pool, undefined, "SELECT pg_sleep(60) -- pool-test A").pipe(
          Effect.forkChild
        )
        yield* waitUntil(
          "the query to sleep",
          Effect.map(sleepingBackends(monitor, "pool-test A"), (pids) => pids.length === 1)
        )
        const [pid] = yield* sleepingBackends(monitor, "pool-test A")
        assert.isTrue(interruptedOnly(yield* Fiber.interrupt(fiber).pipe(Effect.andThen(Fiber.await(fiber)))))
        assert.strictEqual(pool.totalCount, 1, "the client was kept")
        assert.strictEqual(pool.idleCount, 1, "and released")
        const next = yield* PgAdapter.poolQuery<{ pid: number }>(pool, undefined, "SELECT pg_backend_pid() AS pid")
        assert.strictEqual(next.rows[0]?.pid, pid, "the same session, reused")
      }).pipe(Effect.provide(NodeTransport.layer)))

    it.effect("withPoolClient: a client interrupted inside a transaction is destroyed, and nothing commits", () =>
      Effect.gen(function*() {
        const { cluster, monitor } = yield* setup
        const pool = yield* scopedPool({ host: cluster.socketDir, port: cluster.port, user: "postgres", max: 1 })
        const fiber = yield* PgAdapter.withPoolClient(pool, (client) =>
          Effect.gen(function*() {
            yield* PgAdapter.query(client, undefined, "BEGIN")
            yield* PgAdapter.query(client, undefined, "INSERT INTO pool_rows VALUES ('tx')")
            yield* PgAdapter.query(client, undefined, "SELECT pg_sleep(60) -- pool-test B")
            yield* PgAdapter.query(client, undefined, "COMMIT")
          })).pipe(Effect.forkChild)
        yield* waitUntil(
          "the query to sleep",
          Effect.map(sleepingBackends(monitor, "pool-test B"), (pids) => pids.length === 1)
        )
        assert.isTrue(interruptedOnly(yield* Fiber.interrupt(fiber).pipe(Effect.andThen(Fiber.await(fiber)))))
        assert.strictEqual(pool.totalCount, 0, "destroyed: release(true)")
        const rows = yield* Effect.promise(() =>
          monitor.query("SELECT count(*)::int AS n FROM pool_rows WHERE tag = 'tx'")
        )
        assert.strictEqual(rows.rows[0]?.n, 0)
        // the pool still works
        const one = yield* PgAdapter.poolQuery(pool, undefined, "SELECT 1 AS one")
        assert.strictEqual(one.rows[0]?.one, 1)
      }).pipe(Effect.provide(NodeTransport.layer)))

    it.effect("poolQuery: an interrupted query's client reaches a waiting query only once the interruption is over", () =>
      Effect.gen(function*() {
        const { cluster, monitor } = yield* setup
        // the session through a proxy that blackholes cancels: unconfirmed until cancelTimeout; the query ends by
        // itself meanwhile, and the kit then retires its client (the cancel could still land)
        const proxy = yield* FaultProxy.make({ upstream: { port: cluster.port } })
        proxy.setRule((c) => c.first === "CancelRequest" ? { blackhole: true } : undefined)
        const pool = yield* scopedPool({ host: "127.0.0.1", port: proxy.port, user: "postgres", max: 1 })
        const first = yield* PgAdapter.poolQuery(pool, undefined, "SELECT pg_sleep(1) -- pool-test D", undefined, {
          cancelTimeout: "1500 millis"
        }).pipe(Effect.forkChild)
        yield* waitUntil(
          "the query to sleep",
          Effect.map(sleepingBackends(monitor, "pool-test D"), (pids) => pids.length === 1)
        )
        const [pid] = yield* sleepingBackends(monitor, "pool-test D")
        // queued in the pool behind it: written the moment the pool hands a client over
        const waiting = yield* PgAdapter.poolQuery<{ pid: number }>(
          pool,
          undefined,
          "SELECT pg_backend_pid() AS pid -- pool-test E"
        ).pipe(Effect.forkChild)
        yield* waitUntil("the second query to wait for a client", Effect.sync(() => pool.waitingCount === 1))
        assert.isTrue(interruptedOnly(yield* Fiber.interrupt(first).pipe(Effect.andThen(Fiber.await(first)))))
        // had the first client gone back when its query ended, the waiting query would have run on the session the
        // unconfirmed cancel may still reach
        const next = yield* Fiber.join(waiting)
        assert.notStrictEqual(next.rows[0]?.pid, pid, "the waiting query ran on a session of its own")
      }).pipe(Effect.provide(NodeTransport.layer)))
    it.effect("a fiber interrupted while it waits for a client leaks nothing", () =>
      Effect.gen(function*() {
        const { cluster, monitor } = yield* setup
        const pool = yield* scopedPool({ host: cluster.socketDir, port: cluster.port, user: "postgres", max: 1 })
        const busy = yield* PgAdapter.poolQuery(pool, undefined, "SELECT pg_sleep(0.3) -- pool-test C").pipe(
          Effect.forkChild
        )
        yield* waitUntil("the pool to be busy", Effect.sync(() => pool.totalCount === 1 && pool.idleCount === 0))
        const waiting = yield* PgAdapter.poolQuery(pool, undefined, "INSERT INTO pool_rows VALUES ('waiter')").pipe(
          Effect.forkChild
        )
        yield* waitUntil("the second query to wait for a client", Effect.sync(() => pool.waitingCount === 1))
        assert.isTrue(interruptedOnly(yield* Fiber.interrupt(waiting).pipe(Effect.andThen(Fiber.await(waiting)))))
        assert.isTrue(Exit.isSuccess(yield* Fiber.await(busy)))
        // the client handed to the abandoned waiter went back to the pool
        yield* waitUntil("the client to be idle", Effect.sync(() => pool.idleCount === 1 && pool.waitingCount === 0))
        const rows = yield* Effect.promise(() =>
          monitor.query("SELECT count(*)::int AS n FROM pool_rows WHERE tag = 'waiter'")
        )
        assert.strictEqual(rows.rows[0]?.n, 0)
      }).pipe(Effect.provide(NodeTransport.layer)))

    const derivedCases: ReadonlyArray<
      { readonly name: string; readonly config: (c: EmbeddedPostgres.Cluster) => pg.ClientConfig }
    > = [
      {
        name: "ssl: { ca } in memory (verify-full)",
        config: (c) => ({
          host: "localhost",
          port: c.port,
          user: "postgres",
          ssl: { ca: Fs.readFileSync(c.caCertPath) }
        })
      },
      {
        name: "sslmode=no-verify (require)",
        config: (c) => ({ connectionString: `postgres://postgres@localhost:${c.port}/postgres?sslmode=no-verify` })
      },
      {
        name: "direct TLS",
        config: (c) => ({
          host: "localhost",
          port: c.port,
          user: "postgres",
          ssl: { ca: Fs.readFileSync(c.caCertPath, "utf8") },
          sslnegotiation: "direct"
        })
      },
      { name: "unix socket", config: (c) => ({ host: c.socketDir, port: c.port, user: "postgres" }) }
    ]
    for (const testCase of derivedCases) {
      it.effect(`options derived from the client cancel over the session's encryption (${testCase.name})`, () =>
        Effect.gen(function*() {
          const { cluster, monitor } = yield* setup
          const client = yield* PgAdapter.connect(testCase.config(cluster))
          const fiber = yield* PgAdapter.query(client, undefined, `SELECT pg_sleep(60) -- derived ${testCase.name}`)
            .pipe(Effect.forkChild)
          yield* waitUntil(
            "the query to sleep",
            Effect.map(sleepingBackends(monitor, `derived ${testCase.name}`), (pids) => pids.length === 1)
          )
          assert.isTrue(interruptedOnly(yield* Fiber.interrupt(fiber).pipe(Effect.andThen(Fiber.await(fiber)))))
          assert.isFalse(PgAdapter.isRetired(client), "the cancel was confirmed and the query ended")
          assert.strictEqual((yield* PgAdapter.query(client, undefined, "SELECT 7 AS n")).rows[0]?.n, 7)
        }).pipe(Effect.provide(NodeTransport.layer)))
    }
  }
)

describe("PgAdapter.optionsFromClient: node-postgres' ssl settings in libpq's terms", () => {
  const derive = (config: pg.ClientConfig, params?: Record<string, string>) =>
    PgAdapter.optionsFromClient(new pg.Client(config), params)
  const pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
  const caFile = `${import.meta.dirname}/../../test-utils/fixtures/ca.crt`

  it.effect("no ssl: disable", () =>
    Effect.gen(function*() {
      const options = yield* derive({ host: "db.internal", port: 5433 })
      assert.strictEqual(options.sslmode, "disable")
      assert.strictEqual(options.gssencmode, "disable")
      assert.deepStrictEqual(options.hosts[0], { _tag: "Tcp", host: "db.internal", hostaddr: undefined, port: 5433 })
    }))

  for (const sslmode of ["prefer", "require", "verify-ca", "verify-full"]) {
    it.effect(`connectionString sslmode=${sslmode} (node-postgres verifies it fully): verify-full`, () =>
      Effect.gen(function*() {
        const options = yield* derive({ connectionString: `postgres://u@db.internal/app?sslmode=${sslmode}` })
        assert.strictEqual(options.sslmode, "verify-full")
        assert.strictEqual(options.sslrootcert, "system")
      }))
  }

  it.effect("sslmode=no-verify and rejectUnauthorized: false: require", () =>
    Effect.gen(function*() {
      assert.strictEqual(
        (yield* derive({ connectionString: "postgres://u@db/app?sslmode=no-verify" })).sslmode,
        "require"
      )
      assert.strictEqual((yield* derive({ host: "db", ssl: { rejectUnauthorized: false } })).sslmode, "require")
      assert.strictEqual(
        (yield* derive({ connectionString: "postgres://u@db/app?uselibpqcompat=true&sslmode=require" })).sslmode,
        "require"
      )
    }))

  it.effect("uselibpqcompat verify-ca (a custom checkServerIdentity): verify-ca, as in every adapter", () =>
    Effect.gen(function*() {
      const config = {
        connectionString: `postgres://u@db/app?uselibpqcompat=true&sslmode=verify-ca&sslrootcert=${caFile}`
      }
      const options = yield* derive(config)
      assert.strictEqual(options.sslmode, "verify-ca")
      assert.isDefined(options.sslMaterial?.ca, "the CA read by pg-connection-string goes to the cancel")
      assert.strictEqual((yield* derive(config, { sslmode: "verify-full" })).sslmode, "verify-full")
      assert.isTrue(Exit.isFailure(yield* Effect.exit(derive(config, { sslmode: "require" }))), "never weaker")
    }))

  it.effect("TLS versions are carried over; no client certificate means none, never libpq's default files", () =>
    Effect.gen(function*() {
      const options = yield* derive({ host: "db", ssl: { ca: pem, minVersion: "TLSv1.3", maxVersion: "TLSv1.3" } })
      assert.strictEqual(options.sslMinProtocolVersion, "TLSv1.3")
      assert.strictEqual(options.sslMaxProtocolVersion, "TLSv1.3")
      assert.strictEqual(options.sslMaterial?.cert, undefined)
      assert.isTrue(options.sslMaterial?.onlyGiven)
      assert.isTrue((yield* derive({ host: "db", ssl: true })).sslMaterial?.onlyGiven)
    }))

  it.effect("in-memory ca, cert, key and passphrase become the cancel's sslMaterial", () =>
    Effect.gen(function*() {
      const options = yield* derive({
        host: "db",
        ssl: { ca: pem, cert: Buffer.from(pem), key: "KEY", passphrase: "secret" }
      })
      assert.strictEqual(options.sslmode, "verify-full")
      assert.strictEqual(options.sslrootcert, undefined)
      assert.deepStrictEqual(options.sslMaterial?.ca, [pem])
      assert.strictEqual(Redacted.value(options.sslMaterial!.key!), "KEY")
      assert.strictEqual(Redacted.value(options.sslMaterial!.passphrase!), "secret")
    }))

  it.effect("sslnegotiation direct (what the session did: pg < 8.22 ignores it), and an IP host with servername", () =>
    Effect.gen(function*() {
      const options = yield* derive({ host: "10.0.0.5", ssl: { servername: "db.internal" }, sslnegotiation: "direct" })
      const [major, minor] = pgPackage.version.split(".").map(Number) as [number, number]
      assert.strictEqual(options.sslnegotiation, major > 8 || minor >= 22 ? "direct" : "postgres", pgPackage.version)
      assert.deepStrictEqual(options.hosts[0], { _tag: "Tcp", host: "db.internal", hostaddr: "10.0.0.5", port: 5432 })
    }))

  it.effect("a weaker sslmode than the session's is refused; bad material is a typed error", () =>
    Effect.gen(function*() {
      const weaker = yield* Effect.flip(derive({ host: "db", ssl: true }, { sslmode: "require" }))
      assert.strictEqual(weaker._tag, "InvalidOption")
      assert.include(weaker.message, "weaker")
      const pfx = yield* Effect.flip(derive({ host: "db", ssl: { pfx: Buffer.from("x") } }))
      assert.include(pfx.message, "pfx")
    }))
})
