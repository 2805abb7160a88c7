/**
 * `pnpm bench:adapters` (also part of `pnpm bench`): what cancel-on-interrupt costs a query that is never
 * interrupted. Each driver bare (its defaults, each query wrapped in Effect as an Effect user calls it) against the
 * same driver through its pqcancel adapter (bench/adapter-calls.ts), with a pool of 8 each, on plain TCP to a local
 * PostgreSQL: throughput and p50 / p99 latency of `SELECT 1` and of `SELECT pg_sleep(0.001)` at concurrency 1, 16
 * and 64. Every system runs a slice of every cell each round, in a rotating order, so machine noise hits all alike;
 * throughput = the queries completed over the slices' total time, its ratio the median of the rounds' ratios (a
 * driver's bare and adapter slices run next to each other), latencies over all queries of all rounds.
 */
import type { Transport } from "@pqcancel/core/Transport"
import type * as EmbeddedPostgres from "@pqcancel/test-utils/EmbeddedPostgres"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import type * as Scope from "effect/Scope"
import type { Runner, Statement } from "./adapter-calls.ts"
import { drivers, packageVersion, poolSize, statements } from "./adapter-calls.ts"
import { percentile } from "./stats.ts"

export const concurrencies = [1, 16, 64] as const

export interface AdapterConfig {
  /** interleaved rounds (after `warmup` rounds that are not counted) */
  readonly rounds: number
  readonly warmup: number
  /** length of one system's slice of one cell, ms */
  readonly sliceMs: number
  /** driver ids to run (default: all) */
  readonly drivers?: ReadonlyArray<string> | undefined
}

export const adapterConfig = (quick: boolean): AdapterConfig =>
  quick ? { rounds: 2, warmup: 1, sliceMs: 100 } : { rounds: 8, warmup: 1, sliceMs: 400 }

/** One side (bare or adapter) of one driver in one cell. */
export interface AdapterSide {
  readonly queries: number
  readonly errors: number
  /** queries per second, over all rounds */
  readonly throughput: number
  /** queries per second in each round */
  readonly perRound: ReadonlyArray<number>
  readonly p50: number
  readonly p99: number
}

export interface AdapterCell {
  readonly driver: string
  readonly label: string
  readonly statement: Statement["id"]
  readonly concurrency: number
  readonly bare: AdapterSide | undefined
  readonly adapter: AdapterSide | undefined
  /**
   * adapter ÷ bare throughput (target ≥ 0.97): the median of the rounds' ratios (the two sides of a round ran next
   * to each other, so a noisy moment of the machine hits both)
   */
  readonly throughputRatio: number | undefined
  /** adapter ÷ bare p99 latency (target ≤ 1.05) */
  readonly p99Ratio: number | undefined
  readonly error: string | undefined
}

export interface AdapterReport {
  readonly config: AdapterConfig & { readonly poolSize: number }
  /** driver id → the installed version */
  readonly versions: Record<string, string>
  readonly cells: ReadonlyArray<AdapterCell>
}

interface Tally {
  queries: number
  errors: number
  ms: number
  readonly perRound: Array<number>
  readonly latencies: Array<number>
  firstError: string | undefined
}

/** `concurrency` fibers run `statement` back to back for `ms`; the latencies of the queries that succeeded. */
const slice = (run: Runner, statement: Statement, concurrency: number, ms: number, tally: Tally | undefined) =>
  Effect.gen(function*() {
    const started = performance.now()
    const deadline = started + ms
    const queriesBefore = tally?.queries ?? 0
    const worker = Effect.gen(function*() {
      while (performance.now() < deadline) {
        const t0 = performance.now()
        const exit = yield* Effect.exit(run(statement))
        const t1 = performance.now()
        if (tally === undefined) continue
        if (Exit.isSuccess(exit)) {
          tally.queries++
          tally.latencies.push(t1 - t0)
        } else {
          tally.errors++
          tally.firstError ??= String(exit.cause)
        }
      }
    })
    yield* Effect.forEach(Array.from({ length: concurrency }, () => worker), (w) => w, {
      concurrency: "unbounded",
      discard: true
    })
    if (tally !== undefined) {
      const elapsed = performance.now() - started
      tally.perRound.push((tally.queries - queriesBefore) / (elapsed / 1000))
      tally.ms += elapsed
    }
  })

const side = (tally: Tally | undefined): AdapterSide | undefined => {
  if (tally === undefined || tally.queries === 0) return undefined
  const sorted = tally.latencies.sort((a, b) => a - b)
  return {
    queries: tally.queries,
    errors: tally.errors,
    throughput: tally.queries / (tally.ms / 1000),
    perRound: tally.perRound,
    p50: percentile(sorted, 50),
    p99: percentile(sorted, 99)
  }
}

const rotate = <A>(items: ReadonlyArray<A>, by: number): Array<A> =>
  items.length === 0 ? [] : items.map((_, i) => items[(i + by) % items.length]!)

export const runAdapters = Effect.fnUntraced(function*(options: {
  readonly cluster: EmbeddedPostgres.Cluster
  readonly config: AdapterConfig
  readonly log: (line: string) => Effect.Effect<void>
}): Effect.fn.Return<AdapterReport, never, Scope.Scope | Transport> {
  const { cluster, config, log } = options
  const target = { host: "127.0.0.1", port: cluster.port }
  const active = drivers.filter((d) => config.drivers === undefined || config.drivers.includes(d.id))
  const versions: Record<string, string> = {}
  const errors = new Map<string, string>()
  const systems: Array<{ readonly key: string; readonly run: Runner }> = []
  for (const driver of active) {
    versions[driver.id] = packageVersion(driver.package)
    for (const kind of ["bare", "adapter"] as const) {
      const made = yield* Effect.exit(driver[kind](target))
      if (Exit.isFailure(made)) {
        errors.set(driver.id, `${kind}: ${String(made.cause)}`)
        yield* log(`  ! ${driver.id} ${kind}: ${String(made.cause)}`)
        continue
      }
      systems.push({ key: `${driver.id}|${kind}`, run: made.value })
    }
  }
  const cells = statements.flatMap((statement) => concurrencies.map((concurrency) => ({ statement, concurrency })))
  const tallies = new Map<string, Tally>()
  const tallyOf = (key: string) => {
    let tally = tallies.get(key)
    if (tally === undefined) {
      tally = { queries: 0, errors: 0, ms: 0, perRound: [], latencies: [], firstError: undefined }
      tallies.set(key, tally)
    }
    return tally
  }
  const total = config.warmup + config.rounds
  const started = performance.now()
  yield* log(
    `adapters: ${active.length} drivers × bare/adapter × ${cells.length} cells, pool ${poolSize}, ${config.warmup} + ` +
      `${config.rounds} rounds of ${config.sliceMs} ms slices`
  )
  for (let round = 0; round < total; round++) {
    for (const cell of rotate(cells, round)) {
      for (const system of rotate(systems, round)) {
        const key = `${system.key}|${cell.statement.id}|${cell.concurrency}`
        yield* slice(
          system.run,
          cell.statement,
          cell.concurrency,
          config.sliceMs,
          round < config.warmup ? undefined : tallyOf(key)
        )
      }
    }
    yield* log(`  adapters round ${round + 1}/${total} (${((performance.now() - started) / 1000).toFixed(1)} s)`)
  }
  const results: Array<AdapterCell> = []
  for (const driver of active) {
    for (const { concurrency, statement } of cells) {
      const bareTally = tallies.get(`${driver.id}|bare|${statement.id}|${concurrency}`)
      const adapterTally = tallies.get(`${driver.id}|adapter|${statement.id}|${concurrency}`)
      const bare = side(bareTally)
      const adapter = side(adapterTally)
      const failures = [bareTally, adapterTally].flatMap((t, i) =>
        t?.firstError === undefined ? [] : [`${i === 0 ? "bare" : "adapter"}: ${t.errors} failed (${t.firstError})`]
      )
      results.push({
        driver: driver.id,
        label: `${driver.label} ${versions[driver.id]}`,
        statement: statement.id,
        concurrency,
        bare,
        adapter,
        throughputRatio: bare && adapter && bare.perRound.length === adapter.perRound.length
          ? percentile(adapter.perRound.map((q, i) => q / bare.perRound[i]!).sort((a, b) => a - b), 50)
          : undefined,
        p99Ratio: bare && adapter ? adapter.p99 / bare.p99 : undefined,
        error: [errors.get(driver.id), ...failures].filter((e) => e !== undefined).join("; ") || undefined
      })
    }
  }
  return { config: { ...config, poolSize }, versions, cells: results }
})

const fmt = (x: number | undefined, digits = 2) => x === undefined ? "—" : x.toFixed(digits)
const ratioMark = (r: number | undefined, ok: (r: number) => boolean) =>
  r === undefined ? "n/a" : `${r.toFixed(2)}× ${ok(r) ? "✓" : "✗"}`

/** The markdown tables of one run (stdout, bench/README.md). */
export const renderAdapterTables = (report: AdapterReport): string => {
  const out: Array<string> = []
  out.push(
    `\n### Adapters: bare driver ÷ its adapter, pool of ${report.config.poolSize} ` +
      `(${report.config.rounds} rounds × ${report.config.sliceMs} ms slices)\n`
  )
  out.push(
    "Targets: adapter ≥ 0.97× the bare throughput and ≤ 1.05× its p99 latency, in every cell. q/s over all rounds; " +
      "throughput = adapter ÷ bare, the median of the rounds' ratios; p50 / p99 over all queries.\n"
  )
  const header = ["driver", "statement", "conc.", "bare q/s", "adapter q/s", "throughput", "p50 ms bare / adapter"]
  out.push(`| ${[...header, "p99 ms bare / adapter", "p99", "notes"].join(" | ")} |`)
  out.push(`| --- | --- | ${Array.from({ length: 8 }, () => "---:").join(" | ")} |`)
  for (const c of report.cells) {
    out.push(
      `| ${
        [
          c.label,
          statements.find((s) => s.id === c.statement)?.label ?? c.statement,
          String(c.concurrency),
          fmt(c.bare?.throughput, 0),
          fmt(c.adapter?.throughput, 0),
          ratioMark(c.throughputRatio, (r) => r >= 0.97),
          `${fmt(c.bare?.p50, 3)} / ${fmt(c.adapter?.p50, 3)}`,
          `${fmt(c.bare?.p99, 3)} / ${fmt(c.adapter?.p99, 3)}`,
          ratioMark(c.p99Ratio, (r) => r <= 1.05),
          c.error ?? ""
        ].join(" | ")
      } |`
    )
  }
  return out.join("\n")
}

const esc = (s: string) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")

/**
 * The chart's adapter panel: per driver and cell, a bar of adapter ÷ bare throughput (blue) and of adapter ÷ bare
 * p99 (orange), against lines at 1.0 and the targets (0.97 and 1.05).
 */
export const renderAdapterPanel = (report: AdapterReport, x0: number, y0: number, width: number) => {
  const labelW = 230
  const barH = 6
  const max = 2
  const scale = (v: number) => (Math.min(v, max) / max) * (width - labelW - 50)
  const parts: Array<string> = [
    `<text x="${x0}" y="${y0}" font-size="14" font-weight="bold">${
      esc("Adapter ÷ bare driver: throughput (blue, target ≥ 0.97) and p99 latency (orange, target ≤ 1.05)")
    }</text>`
  ]
  let y = y0 + 14
  const top = y
  for (const c of report.cells) {
    const statement = statements.find((s) => s.id === c.statement)?.label ?? c.statement
    parts.push(
      `<text x="${x0}" y="${y + 10}" font-size="10">${esc(`${c.label} · ${statement} · ×${c.concurrency}`)}</text>`
    )
    for (const [value, color] of [[c.throughputRatio, "#1f77b4"], [c.p99Ratio, "#ff7f0e"]] as const) {
      if (value !== undefined) {
        parts.push(
          `<rect x="${x0 + labelW}" y="${y}" width="${scale(value).toFixed(1)}" height="${barH}" fill="${color}"/>`,
          `<text x="${(x0 + labelW + scale(value) + 4).toFixed(1)}" y="${y + barH}" font-size="8">${
            value.toFixed(2)
          }</text>`
        )
      }
      y += barH + 1
    }
    y += 4
  }
  for (const [at, dash] of [[1, "none"], [0.97, "3,2"], [1.05, "3,2"]] as const) {
    const x = (x0 + labelW + scale(at)).toFixed(1)
    parts.push(
      `<line x1="${x}" x2="${x}" y1="${top}" y2="${y}" stroke="#333" stroke-width="0.6" stroke-dasharray="${dash}"/>`
    )
  }
  return { svg: parts.join("\n"), height: y - y0 }
}
