/**
 * pqcancel benchmark suite: pqcancel vs libpq 18 (C harness) vs node-postgres vs postgres.js on an embedded
 * PostgreSQL 18 with TLS, over TCP, TLS (SSLRequest), direct TLS and a unix socket, with protocol 3.0 and 3.2 keys.
 *
 *   node bench/run.ts            full run (≥ 50 samples per cell, bursts of 200 and 1000, the adapters)
 *   node bench/run.ts --quick    smoke test (< 1 minute)
 *   node bench/run.ts --adapters-only [--quick]   only the adapters' query-path cost (`pnpm bench:adapters`,
 *                                bench/adapters.ts)
 *
 * Options: --samples N  --warmup N  --bursts 200,1000  --burst-reps N  --inflight N  --cells tcp/3.0,unix/3.2
 *          --systems pqcancel-blocking,libpq-poll  --no-latency  --no-burst  --no-inflight  --no-runtimes
 *          --no-adapters  --adapter-rounds N  --slice-ms N  --drivers pg,postgresjs,postgresjs4,sqlpg,sqlpg-multiplex
 *
 * The runtime cells (bench/runtimes.ts): the one-shot cancel on Node, Bun and Deno against each runtime's own floors.
 *
 * Results: a table on stdout, bench/results/<timestamp>.json and .svg (and latest.json / latest.svg).
 */
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import { NodeTransport } from "@pqcancel/node"
import * as EmbeddedPostgres from "@pqcancel/test-utils/EmbeddedPostgres"
import * as TestSession from "@pqcancel/test-utils/TestSession"
import * as Effect from "effect/Effect"
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import * as Url from "node:url"
import { adapterConfig, runAdapters } from "./adapters.ts"
import type { AdapterReport } from "./adapters.ts"
import { runBursts } from "./burst.ts"
import type { BurstResult } from "./burst.ts"
import type { Cell, SystemId } from "./cells.ts"
import { allCells, systems } from "./cells.ts"
import * as Harness from "./harness.ts"
import { runInflight } from "./inflight.ts"
import type { InflightResult } from "./inflight.ts"
import { benchError, makeCellRunner } from "./node-systems.ts"
import type { Sample } from "./node-systems.ts"
import { computeRatios, renderSvg, renderTables } from "./report.ts"
import type { LatencyResult, Report } from "./report.ts"
import { renderRuntimes, runRuntimes } from "./runtimes.ts"
import type { RuntimeCell } from "./runtimes.ts"
import { summarize } from "./stats.ts"

// --expose-gc is needed for the memory figures: re-exec once with it
if (!process.execArgv.includes("--expose-gc")) {
  const child = ChildProcess.spawnSync(
    process.execPath,
    ["--expose-gc", ...process.execArgv, Url.fileURLToPath(import.meta.url), ...process.argv.slice(2)],
    { stdio: "inherit" }
  )
  process.exit(child.status ?? 1)
}

// pg's cancel reads the deprecated `client.activeQuery` (its own API); keep the output clean
process.noDeprecation = true

const argv = process.argv.slice(2)
const flag = (name: string) => argv.includes(`--${name}`)
const option = (name: string): string | undefined => {
  const i = argv.indexOf(`--${name}`)
  return i === -1 ? undefined : argv[i + 1]
}
const quick = flag("quick")
const adaptersOnly = flag("adapters-only")
const adapterDefaults = adapterConfig(quick)

const config = {
  quick,
  samples: Number(option("samples") ?? (quick ? 8 : 60)),
  warmup: Number(option("warmup") ?? (quick ? 2 : 10)),
  bursts: (option("bursts") ?? (quick ? "50" : "200,1000")).split(",").map(Number).filter((n) => n > 0),
  burstReps: Number(option("burst-reps") ?? (quick ? 1 : 5)),
  inflight: Number(option("inflight") ?? (quick ? 100 : 1000)),
  cells: option("cells")?.split(",") ?? allCells.map((c) => c.id),
  systems: (option("systems")?.split(",") ?? systems.map((s) => s.id)) as Array<SystemId>,
  verbose: flag("verbose"),
  latency: !adaptersOnly && !flag("no-latency"),
  burst: !adaptersOnly && !flag("no-burst"),
  inflightOn: !adaptersOnly && !flag("no-inflight"),
  runtimes: !adaptersOnly && !flag("no-runtimes"),
  adapters: flag("no-adapters") ? undefined : {
    rounds: Number(option("adapter-rounds") ?? adapterDefaults.rounds),
    warmup: adapterDefaults.warmup,
    sliceMs: Number(option("slice-ms") ?? adapterDefaults.sliceMs),
    drivers: option("drivers")?.split(",")
  }
}
const cells: ReadonlyArray<Cell> = allCells.filter((c) => config.cells.includes(c.id))
const activeSystems = systems.filter((s) => config.systems.includes(s.id))

const log = (line: string) => Effect.sync(() => console.log(line))

const rotate = <A>(items: ReadonlyArray<A>, by: number): Array<A> =>
  items.length === 0 ? [] : items.map((_, i) => items[(i + by) % items.length]!)

const runLatency = Effect.fnUntraced(function*(
  cluster: EmbeddedPostgres.Cluster,
  harness: Harness.Harness,
  monitor: TestSession.TestSession
) {
  const runners = yield* Effect.forEach(
    cells,
    (cell) => makeCellRunner(cluster, cell, allCells.indexOf(cell), harness, monitor)
  )
  const samples = new Map<string, Array<Sample>>()
  const errors = new Map<string, string>()
  const key = (cell: Cell, system: SystemId) => `${cell.id}|${system}`
  const rounds = config.warmup + config.samples
  const started = performance.now()
  for (let round = 0; round < rounds; round++) {
    // every system, every cell, once per round, in a rotating order so drift and noise hit all alike
    for (const runner of rotate(runners, round)) {
      for (const system of rotate(activeSystems, round)) {
        if (system.unsupported(runner.cell) !== undefined || errors.has(key(runner.cell, system.id))) continue
        if (config.verbose) yield* log(`  round ${round} ${runner.cell.id} ${system.id}`)
        const result = yield* Effect.result(runner.sample(system.id))
        if (result._tag === "Failure") {
          errors.set(key(runner.cell, system.id), result.failure.message)
          yield* log(`  ! ${system.id} ${runner.cell.id}: ${result.failure.message}`)
          continue
        }
        if (round < config.warmup) continue
        const list = samples.get(key(runner.cell, system.id)) ?? []
        list.push(result.success)
        samples.set(key(runner.cell, system.id), list)
      }
    }
    if ((round + 1) % 10 === 0 || round + 1 === rounds) {
      yield* log(`  latency round ${round + 1}/${rounds} (${((performance.now() - started) / 1000).toFixed(1)} s)`)
    }
  }
  const results: Array<LatencyResult> = []
  for (const cell of cells) {
    for (const system of activeSystems) {
      const na = system.unsupported(cell)
      const list = samples.get(key(cell, system.id)) ?? []
      results.push({
        cell: cell.id,
        system: system.id,
        na,
        error: errors.get(key(cell, system.id)),
        dispatch: na === undefined && list.length > 0 ? summarize(list.map((s) => s.dispatch)) : undefined,
        e2e: na === undefined && list.length > 0 ? summarize(list.map((s) => s.e2e)) : undefined
      })
    }
  }
  return results
})

const fdLimit = (): number => {
  try {
    const match = /^Max open files\s+(\d+)/m.exec(Fs.readFileSync("/proc/self/limits", "utf8"))
    return match === null ? Number.POSITIVE_INFINITY : Number(match[1])
  } catch {
    return Number.POSITIVE_INFINITY
  }
}

const main = Effect.gen(function*() {
  const started = performance.now()
  const maxBurst = config.burst ? Math.max(0, ...config.bursts) : 0
  // burst groups (pg clients, postgres.js, libpq) are open at the same time, plus the cancels in flight
  const limit = fdLimit()
  const feasible = config.bursts.filter((n) => 2 * n + 200 <= limit)
  if (feasible.length < config.bursts.length) {
    yield* log(`! fd limit ${limit}: bursts ${config.bursts.filter((n) => !feasible.includes(n)).join(",")} skipped`)
  }
  // + the adapters' pools: 5 drivers × bare and adapter × 8
  const maxConnections = 3 * Math.max(0, ...feasible, 0) + 150 + (config.adapters === undefined ? 0 : 100)
  yield* log(
    `pqcancel bench (${quick ? "quick" : "full"}): Node ${process.version}, ${Os.cpus().length} × ${
      Os.cpus()[0]?.model ?? "?"
    }, fd limit ${limit}`
  )
  const cluster = yield* EmbeddedPostgres.make({
    version: 18,
    maxConnections,
    settings: {
      superuser_reserved_connections: "3",
      log_min_messages: "log", // hides the thousands of "canceling statement" ERRORs, keeps LOG lines

      log_min_error_statement: "panic",
      autovacuum: "off",
      shared_buffers: "64MB"
    }
  }).pipe(Effect.mapError(benchError("embedded postgres")))
  yield* log(`PostgreSQL ${cluster.version} on port ${cluster.port}, max_connections ${maxConnections}`)
  const cancels = config.latency || config.burst
    ? yield* Effect.gen(function*() {
      const harness = yield* Harness.start.pipe(Effect.mapError(benchError("harness")))
      yield* harness.request(`monitor ${cluster.conninfo("unix", { application_name: "bench_monitor_libpq" })}`).pipe(
        Effect.mapError(benchError("harness monitor"))
      )
      const monitor = yield* TestSession.connectTo(cluster, {
        transport: "unix",
        parameters: { application_name: "bench_monitor" }
      }).pipe(Effect.mapError(benchError("monitor")))
      return { harness, monitor }
    })
    : undefined

  let latency: Array<LatencyResult> = []
  if (config.latency) {
    yield* log(
      `latency: ${cells.length} cells × ${activeSystems.length} systems, ${config.warmup} + ${config.samples} rounds`
    )
    latency = yield* Effect.scoped(runLatency(cluster, cancels!.harness, cancels!.monitor))
  }
  let bursts: Array<BurstResult> = []
  if (config.burst && feasible.length > 0) {
    bursts = yield* runBursts({
      cluster,
      harness: cancels!.harness,
      monitor: cancels!.monitor,
      sizes: feasible,
      reps: config.burstReps,
      systems: activeSystems.filter((s) => s.kind !== "reference").map((s) => s.id),
      log: (line) => log(line)
    })
  }
  let inflight: Array<InflightResult> = []
  if (config.inflightOn && config.inflight > 0) {
    inflight = yield* runInflight({ n: config.inflight, log: (line) => log(line) })
  }
  let adapters: AdapterReport | undefined
  if (config.adapters !== undefined) {
    adapters = yield* Effect.scoped(runAdapters({ cluster, config: config.adapters, log }))
  }

  let runtimes: Array<RuntimeCell> = []
  if (config.runtimes) {
    yield* log("runtime cells (Node, Bun, Deno, workerd; bench/runtimes.ts)")
    runtimes = yield* runRuntimes({ n: quick ? 60 : 400 })
  }

  const report: Report = {
    date: new Date().toISOString(),
    mode: adaptersOnly ? (quick ? "adapters-quick" : "adapters-full") : quick ? "quick" : "full",
    environment: {
      node: process.version,
      postgres: cluster.version,
      cpus: Os.cpus().length,
      cpuModel: Os.cpus()[0]?.model ?? "",
      platform: `${process.platform}-${process.arch}`,
      fdLimit: limit,
      maxConnections,
      openssl: process.versions.openssl ?? ""
    },
    config: { ...config, maxBurst },
    latency,
    ratios: computeRatios(latency),
    bursts,
    inflight,
    runtimes,
    adapters,
    durationSeconds: (performance.now() - started) / 1000
  }
  yield* log(renderTables(report))
  if (runtimes.length > 0) {
    yield* log(`\nOne-shot cancel per runtime, dispatch median (ms):\n\n${renderRuntimes(runtimes)}`)
  }
  const dir = Path.join(Path.dirname(Url.fileURLToPath(import.meta.url)), "results")
  const stamp = report.date.replace(/[:.]/g, "-")
  yield* Effect.sync(() => {
    Fs.mkdirSync(dir, { recursive: true })
    const json = `${JSON.stringify(report, null, 2)}\n`
    const svg = renderSvg(report)
    Fs.writeFileSync(Path.join(dir, `${stamp}-${report.mode}.json`), json)
    Fs.writeFileSync(Path.join(dir, `${stamp}-${report.mode}.svg`), svg)
    Fs.writeFileSync(Path.join(dir, `latest-${report.mode}.json`), json)
    Fs.writeFileSync(Path.join(dir, `latest-${report.mode}.svg`), svg)
  })
  yield* log(`results: bench/results/${stamp}-${report.mode}.{json,svg} (${report.durationSeconds.toFixed(0)} s)`)
}).pipe(Effect.scoped, Effect.provide(NodeTransport.layer))

NodeRuntime.runMain(main)
