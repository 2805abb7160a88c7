/**
 * Watching a node-postgres session's backend from a monitor connection (pg_stat_activity), waiting on the state
 * instead of sleeping; every wait is bounded.
 */
import * as Effect from "effect/Effect"
import * as Schedule from "effect/Schedule"
import type pg from "pg"

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
