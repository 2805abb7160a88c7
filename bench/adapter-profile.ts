/**
 * Profiling aid for `pnpm bench:adapters` (not part of `pnpm bench`): one driver, `SELECT 1`, bare against its
 * adapter in alternating rounds, reporting per side the wall throughput and the client CPU time per query
 * (`process.cpuUsage`, steadier than throughput on a shared machine).
 *
 *   node bench/adapter-profile.ts --driver pg [--concurrency 1] [--queries 20000] [--rounds 6] [--cpu-profile]
 *
 * `--cpu-profile` writes bench/results/adapter-profile-<driver>-<side>.cpuprofile for the measured rounds of each
 * side (open it in Chrome DevTools or speedscope).
 */
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import { NodeTransport } from "@pqcancel/node"
import * as EmbeddedPostgres from "@pqcancel/test-utils/EmbeddedPostgres"
import * as Effect from "effect/Effect"
import * as Fs from "node:fs"
import * as Inspector from "node:inspector/promises"
import * as Path from "node:path"
import * as Url from "node:url"
import type { Runner } from "./adapter-calls.ts"
import { drivers, statements } from "./adapter-calls.ts"
import { benchError } from "./node-systems.ts"

const arg = (name: string): string | undefined => {
  const at = process.argv.indexOf(`--${name}`)
  return at === -1 ? undefined : process.argv[at + 1]
}
const driverId = arg("driver") ?? "pg"
const concurrency = Number(arg("concurrency") ?? 1)
const queries = Number(arg("queries") ?? 20000)
const rounds = Number(arg("rounds") ?? 6)
const cpuProfile = process.argv.includes("--cpu-profile")
const resultsDir = Path.join(Path.dirname(Url.fileURLToPath(import.meta.url)), "results")

const select1 = statements.find((s) => s.id === "select1")!

/** `queries` queries over `concurrency` fibers; wall ms and client CPU µs. */
const measure = (run: Runner) =>
  Effect.gen(function*() {
    let left = queries
    const worker = Effect.gen(function*() {
      while (left-- > 0) yield* run(select1)
    })
    const cpu0 = process.cpuUsage()
    const t0 = performance.now()
    yield* Effect.forEach(Array.from({ length: concurrency }, () => worker), (w) => w, {
      concurrency: "unbounded",
      discard: true
    })
    const wall = performance.now() - t0
    const cpu = process.cpuUsage(cpu0)
    return { wall, cpu: cpu.user + cpu.system }
  })

const main = Effect.gen(function*() {
  const driver = drivers.find((d) => d.id === driverId)
  if (driver === undefined) return yield* Effect.die(new Error(`unknown driver ${driverId}`))
  const cluster = yield* EmbeddedPostgres.make({ version: 18, maxConnections: 60 }).pipe(
    Effect.mapError(benchError("embedded postgres"))
  )
  const target = { host: "127.0.0.1", port: cluster.port }
  const sides = { bare: yield* driver.bare(target), adapter: yield* driver.adapter(target) } as const
  const session = cpuProfile ? new Inspector.Session() : undefined
  session?.connect()
  const totals = { bare: { wall: 0, cpu: 0 }, adapter: { wall: 0, cpu: 0 } }
  for (const name of ["bare", "adapter"] as const) yield* measure(sides[name]) // warm-up
  for (const name of ["bare", "adapter"] as const) {
    if (session === undefined) continue
    yield* Effect.promise(() => session.post("Profiler.enable"))
    yield* Effect.promise(() => session.post("Profiler.start"))
    yield* measure(sides[name])
    const { profile } = yield* Effect.promise(() => session.post("Profiler.stop"))
    Fs.mkdirSync(resultsDir, { recursive: true })
    Fs.writeFileSync(
      Path.join(resultsDir, `adapter-profile-${driverId}-${name}.cpuprofile`),
      JSON.stringify(profile)
    )
  }
  for (let round = 0; round < rounds; round++) {
    const order: ReadonlyArray<"bare" | "adapter"> = round % 2 === 0 ? ["bare", "adapter"] : ["adapter", "bare"]
    for (const name of order) {
      const m = yield* measure(sides[name])
      totals[name].wall += m.wall
      totals[name].cpu += m.cpu
    }
  }
  const n = queries * rounds
  const line = (name: "bare" | "adapter") =>
    `${name.padEnd(8)} ${(n / (totals[name].wall / 1000)).toFixed(0).padStart(7)} q/s  ${
      (totals[name].cpu / n).toFixed(2)
    } µs CPU/query`
  yield* Effect.log(
    `${driver.label} (${driverId}) SELECT 1, concurrency ${concurrency}, ${rounds} × ${queries} queries per side\n` +
      `${line("bare")}\n${line("adapter")}\nadapter ÷ bare: throughput ${
        (totals.bare.wall / totals.adapter.wall).toFixed(3)
      }, CPU/query ${(totals.adapter.cpu / totals.bare.cpu).toFixed(3)}`
  )
  session?.disconnect()
}).pipe(Effect.scoped, Effect.provide(NodeTransport.layer))

NodeRuntime.runMain(main)
