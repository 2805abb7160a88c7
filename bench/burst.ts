/**
 * Bursts: N sessions run `SELECT pg_sleep(60)`; once all N sleep (untimed), all N cancels are fired at once and the
 * wall time runs until every session has seen SQLSTATE 57014.
 *
 * Session groups (opened ahead, untimed): N node-postgres clients (cancelled by pqcancel through `PgAdapter` and by
 * pg's own cancel), a postgres.js pool of N connections, and N libpq sessions in the C harness. Client memory:
 * VmHWM after the burst minus VmRSS before it (the kernel's peak counter is reset first), divided by N. Event-loop
 * delay: `monitorEventLoopDelay({ resolution: 1 })` enabled for the burst only.
 */
import { CancelConnection } from "@pqcancel/core"
import type { Transport } from "@pqcancel/core/Transport"
import * as PgAdapter from "@pqcancel/node/PgAdapter"
import type { Cluster } from "@pqcancel/test-utils/EmbeddedPostgres"
import type * as TestSession from "@pqcancel/test-utils/TestSession"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as PerfHooks from "node:perf_hooks"
import type pg from "pg"
import type { Cell, SystemId } from "./cells.ts"
import { libpqConninfo, pqcancelOptions } from "./cells.ts"
import type { Harness } from "./harness.ts"
import type { BenchError } from "./node-systems.ts"
import {
  benchError,
  connectPg,
  connectPostgresjs,
  failure,
  pgCancel,
  pgConfig,
  postgresjsCancel,
  postgresjsOptions,
  SLEEP,
  startAndPoll,
  waitSleeping
} from "./node-systems.ts"
import { fullGc, procStatusKb, resetPeakRss } from "./stats.ts"

export interface BurstRun {
  /** ms until every session saw 57014 */
  readonly wall: number
  readonly rssBeforeKb: number
  readonly peakRssKb: number
  /** (peak − before) / N */
  readonly perCancelKb: number
  /** worst event-loop delay (ms), Node systems only */
  readonly maxLoopDelay: number | undefined
  readonly cancelled: number
  readonly failed: number
}

export interface BurstResult {
  readonly n: number
  readonly system: SystemId
  readonly transport: string
  readonly runs: ReadonlyArray<BurstRun>
  readonly error: string | undefined
}

const cell: Cell = { id: "tcp/3.0", transport: "tcp", protocol: "3.0" }

const APP_PG = "bench_burst_pg"
const APP_PJS = "bench_burst_postgresjs"
const APP_LIBPQ = "bench_burst_libpq"

interface Tracker {
  readonly all: Promise<void>
  readonly codes: Map<string, number>
  lastAt: number
}

/** Observes N query promises: resolves when all settled, remembering when the last one did. */
const track = (promises: ReadonlyArray<Promise<unknown>>): Tracker => {
  const tracker: Tracker = { all: Promise.resolve(), codes: new Map(), lastAt: 0 }
  const settle = (code: string) => {
    tracker.lastAt = performance.now()
    tracker.codes.set(code, (tracker.codes.get(code) ?? 0) + 1)
  }
  ;(tracker as { all: Promise<void> }).all = Promise.all(
    promises.map((p) => p.then(() => settle("00000"), (error: { code?: string }) => settle(error.code ?? "?")))
  ).then(() => undefined)
  return tracker
}

/** Runs `fire` between the untimed setup and the wait for all results, measuring time, memory and loop delay. */
const measure = <R>(
  n: number,
  tracker: Tracker,
  fire: Effect.Effect<void, BenchError, R>
): Effect.Effect<BurstRun, BenchError, R> =>
  Effect.gen(function*() {
    fullGc()
    resetPeakRss()
    const rssBefore = procStatusKb("VmRSS")
    const histogram = PerfHooks.monitorEventLoopDelay({ resolution: 1 })
    histogram.enable()
    const t0 = performance.now()
    const fiber = yield* Effect.forkChild(fire)
    yield* Effect.promise(() => tracker.all)
    const wall = tracker.lastAt - t0
    const peak = procStatusKb("VmHWM")
    histogram.disable()
    yield* Fiber.join(fiber)
    const cancelled = tracker.codes.get("57014") ?? 0
    return {
      wall,
      rssBeforeKb: rssBefore,
      peakRssKb: peak,
      perCancelKb: (peak - rssBefore) / n,
      maxLoopDelay: histogram.max / 1e6,
      cancelled,
      failed: n - cancelled
    }
  })

const openPgGroup = (cluster: Cluster, n: number) =>
  Effect.forEach(Array.from({ length: n }), () => connectPg(pgConfig(cluster, cell, APP_PG)), { concurrency: 32 })

export const runBursts = Effect.fnUntraced(function*(options: {
  readonly cluster: Cluster
  readonly harness: Harness
  readonly monitor: TestSession.TestSession
  readonly sizes: ReadonlyArray<number>
  readonly reps: number
  readonly systems: ReadonlyArray<SystemId>
  readonly log: (line: string) => Effect.Effect<void>
}): Effect.fn.Return<Array<BurstResult>, BenchError, Transport> {
  const { cluster, harness, monitor } = options
  const results: Array<BurstResult> = []
  for (const n of options.sizes) {
    yield* Effect.scoped(Effect.gen(function*() {
      const setup = performance.now()
      const clients: Array<pg.Client> = yield* openPgGroup(cluster, n)
      const sql = yield* connectPostgresjs(postgresjsOptions(cluster, cell, APP_PJS, n))
      // N concurrent queries make postgres.js open N connections
      yield* Effect.tryPromise({
        try: () => Promise.all(Array.from({ length: n }, () => sql.unsafe("SELECT pg_sleep(0.5)"))),
        catch: benchError("postgres.js warm-up")
      })
      yield* Effect.acquireRelease(
        harness.request(`openmany ${n} ${APP_LIBPQ} ${libpqConninfo(cluster, cell)}`).pipe(
          Effect.mapError(benchError("libpq openmany"))
        ),
        () => Effect.ignore(harness.request("closemany"))
      )
      const options_ = pqcancelOptions(cluster, cell)
      const infos = yield* Effect.forEach(clients, (client) => PgAdapter.sessionInfo(client, options_)).pipe(
        Effect.mapError(benchError("PgAdapter.sessionInfo"))
      )
      const cancelConfig = pgConfig(cluster, cell)
      yield* options.log(`burst ${n}: ${3 * n} sessions open in ${((performance.now() - setup) / 1000).toFixed(1)} s`)

      const byPg = (fire: Effect.Effect<void, BenchError, Transport>) =>
        Effect.gen(function*() {
          const tracker = track(clients.map((client) => client.query(SLEEP)))
          yield* waitSleeping(monitor, APP_PG, n)
          return yield* measure(n, tracker, fire)
        })

      const runOne = (system: SystemId): Effect.Effect<BurstRun, BenchError, Transport> => {
        switch (system) {
          case "pqcancel-blocking":
            return byPg(
              Effect.forEach(infos, (info) => CancelConnection.cancel(info), {
                concurrency: "unbounded",
                discard: true
              })
                .pipe(Effect.mapError(benchError("pqcancel")))
            )
          case "pqcancel-poll":
            return byPg(Effect.forEach(infos, startAndPoll, { concurrency: "unbounded", discard: true }))
          case "pqcancel-all":
            return byPg(
              CancelConnection.cancelAll(infos, { concurrency: 32 }).pipe(
                Effect.flatMap((results) =>
                  results.every((r) => r._tag === "Success")
                    ? Effect.void
                    : Effect.fail(failure("pqcancel cancelAll: a cancel failed"))
                )
              )
            )
          case "pg":
            return byPg(Effect.tryPromise({
              try: () => Promise.all(clients.map((client) => pgCancel(client, cancelConfig))),
              catch: benchError("pg cancel")
            }))
          case "postgresjs":
            return Effect.gen(function*() {
              const queries = Array.from({ length: n }, () => sql.unsafe(SLEEP))
              const tracker = track(queries.map((q) => q.then((rows) => rows)))
              yield* waitSleeping(monitor, APP_PJS, n)
              return yield* measure(
                n,
                tracker,
                Effect.tryPromise({
                  try: () =>
                    Promise.all(
                      queries.map((q) =>
                        postgresjsCancel(q as unknown as Parameters<typeof postgresjsCancel>[0]).closed
                      )
                    ),
                  catch: benchError("postgres.js cancel")
                })
              )
            })
          case "node-floor":
          case "node-naive":
            return Effect.fail(failure("no burst for the reference"))
          case "libpq-blocking":
          case "libpq-poll":
          case "libpq-legacy":
            return harness.request(`burst ${system.slice("libpq-".length)}`).pipe(
              Effect.mapError(benchError(system)),
              Effect.map((line) => {
                const [, wall, before, peak, ok, failed] = line.split(" ").map(Number)
                return {
                  wall: wall! / 1e6,
                  rssBeforeKb: before!,
                  peakRssKb: peak!,
                  perCancelKb: (peak! - before!) / n,
                  maxLoopDelay: undefined,
                  cancelled: ok!,
                  failed: failed!
                }
              })
            )
        }
      }

      const runs = new Map<SystemId, Array<BurstRun>>()
      const errors = new Map<SystemId, string>()
      for (let rep = 0; rep < options.reps; rep++) {
        for (let i = 0; i < options.systems.length; i++) {
          const system = options.systems[(i + rep) % options.systems.length]!
          if (errors.has(system)) continue
          const result = yield* Effect.result(runOne(system))
          if (result._tag === "Failure") {
            errors.set(system, result.failure.message)
            yield* options.log(`  ! burst ${n} ${system}: ${result.failure.message}`)
            continue
          }
          const list = runs.get(system) ?? []
          list.push(result.success)
          runs.set(system, list)
          if (result.success.failed > 0) {
            yield* options.log(`  ! burst ${n} ${system}: ${result.success.failed} sessions did not see 57014`)
          }
        }
        yield* options.log(`  burst ${n} rep ${rep + 1}/${options.reps} done`)
      }
      for (const system of options.systems) {
        results.push({ n, system, transport: cell.id, runs: runs.get(system) ?? [], error: errors.get(system) })
      }
    }))
  }
  return results
})
