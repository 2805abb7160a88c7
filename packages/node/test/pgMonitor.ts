/**
 * Watching a node-postgres session's backend from a monitor connection (pg_stat_activity), waiting on the state
 * instead of sleeping; every wait is bounded.
 */
import * as PgAdapter from "@pqcancel/node/PgAdapter"
import { EmbeddedPostgres } from "@pqcancel/test-utils"
import * as Effect from "effect/Effect"
import * as Schedule from "effect/Schedule"
import * as Fs from "node:fs"
import type pg from "pg"

/**
 * A node-postgres monitor on the cluster's unix socket (ended with the scope), once `ddl` ran. The tests of a file run
 * concurrently: `ddl` (e.g. `CREATE TABLE IF NOT EXISTS`) runs under the transaction advisory lock `lock`, one per file.
 */
export const connectMonitor = (lock: number, ddl: string) =>
  Effect.gen(function*() {
    const cluster = yield* EmbeddedPostgres.EmbeddedPostgres
    const monitor = yield* PgAdapter.connect({ host: cluster.socketDir, port: cluster.port, user: "postgres" })
    yield* Effect.promise(() => monitor.query(`BEGIN; SELECT pg_advisory_xact_lock(${lock}); ${ddl}; COMMIT`))
    return { cluster, monitor }
  })

/** How a node-postgres session reaches the cluster, with the libpq conninfo of the same route for the cancel */
export interface PgRoute {
  readonly session: (c: EmbeddedPostgres.Cluster) => pg.ClientConfig
  readonly conninfo: (c: EmbeddedPostgres.Cluster) => string
}

/** Plaintext TCP on loopback */
export const tcpRoute: PgRoute = {
  session: (c) => ({ host: "127.0.0.1", port: c.port, user: "postgres" }),
  conninfo: (c) => `host=127.0.0.1 port=${c.port} sslmode=disable`
}

/** TLS verified like verify-full (the cluster's CA in memory, host name localhost) */
export const tlsRoute: PgRoute = {
  session: (c) => ({
    host: "localhost",
    port: c.port,
    user: "postgres",
    ssl: { ca: Fs.readFileSync(c.caCertPath, "utf8"), servername: "localhost" }
  }),
  conninfo: (c) => `host=localhost port=${c.port} sslmode=verify-full sslrootcert=${c.caCertPath}`
}

/** The cluster's unix socket */
export const unixRoute: PgRoute = {
  session: (c) => ({ host: c.socketDir, port: c.port, user: "postgres" }),
  conninfo: (c) => `host=${c.socketDir} port=${c.port}`
}

/** Repeats `probe` until it says true; dies naming `what` after 10 seconds */
export const waitUntil = (what: string, probe: Effect.Effect<boolean>) =>
  probe.pipe(
    Effect.repeat({ schedule: Schedule.spaced("5 millis"), until: (ok) => ok }),
    Effect.timeoutOrElse({
      duration: "10 seconds",
      orElse: () => Effect.die(new Error(`timed out waiting for ${what}`))
    })
  )

const waitForRow = (
  monitor: pg.Client,
  sql: string,
  pid: number,
  done: (row: pg.QueryResultRow | undefined) => boolean
) =>
  Effect.promise(() => monitor.query(sql, [pid])).pipe(
    Effect.repeat({ schedule: Schedule.spaced("5 millis"), until: (r) => done(r.rows[0]) }),
    Effect.timeout("10 seconds")
  )

/** Waits until the backend `pid` is inside pg_sleep */
export const waitSleeping = (monitor: pg.Client, pid: number) =>
  waitForRow(
    monitor,
    "SELECT 1 AS sleeping FROM pg_stat_activity WHERE pid = $1 AND wait_event = 'PgSleep'",
    pid,
    (row) => row !== undefined
  )

/**
 * Waits until the backend `pid` reports `idle`. node-postgres rejects a query on its ErrorResponse, and the backend
 * reports idle a moment later (before its ReadyForQuery), so "the query ended" does not mean "idle" yet. A query that
 * was not cancelled stays active and the wait fails.
 */
export const waitIdle = (monitor: pg.Client, pid: number) =>
  waitForRow(monitor, "SELECT state FROM pg_stat_activity WHERE pid = $1", pid, (row) => row?.["state"] === "idle")
