/**
 * The README's tables from a results file: medians per cell and system, ratios against each system (the targets
 * marked), bursts and memory per in-flight cancel.
 *
 *   node bench/summary.ts [bench/results/latest-full.json]
 */
import * as Fs from "node:fs"
import type { SystemId } from "./cells.ts"
import type { CellRatios, Report } from "./report.ts"
import { summarize } from "./stats.ts"

const file = process.argv[2] ?? new URL("results/latest-full.json", import.meta.url).pathname
const report = JSON.parse(Fs.readFileSync(file, "utf8")) as Report

const ms = (x: number | undefined) => x === undefined || !Number.isFinite(x) ? "—" : x.toFixed(2)
const r2 = (x: number | undefined) => x === undefined ? "n/a" : `${x.toFixed(2)}×`
const mark = (x: number | undefined, ok: (x: number) => boolean) =>
  x === undefined ? "n/a" : `${r2(x)} ${ok(x) ? "✓" : "✗"}`

const row = (cells: ReadonlyArray<string>) => `| ${cells.join(" | ")} |`
const table = (header: ReadonlyArray<string>, rows: ReadonlyArray<ReadonlyArray<string>>) =>
  [row(header), row(header.map((_, i) => i === 0 ? "---" : "---:")), ...rows.map(row)].join("\n")

const columns: ReadonlyArray<[SystemId, string]> = [
  ["pqcancel-blocking", "pqcancel blocking"],
  ["pqcancel-poll", "pqcancel start+poll"],
  ["libpq-blocking", "PQcancelBlocking"],
  ["libpq-poll", "PQcancelStart+Poll"],
  ["libpq-legacy", "PQcancel"],
  ["pg", "pg"],
  ["postgresjs", "postgres.js"],
  ["node-floor", "Node floor"],
  ["node-naive", "naive node:tls"]
]
const cells = [...new Set(report.latency.map((r) => r.cell))]
const cellOf = (cell: string, system: SystemId) => {
  const r = report.latency.find((x) => x.cell === cell && x.system === system)
  if (r === undefined || r.na !== undefined) return "n/a"
  if (r.dispatch === undefined || r.e2e === undefined) return "error"
  return `${ms(r.dispatch.median)} / ${ms(r.e2e.median)}`
}
console.log("Dispatch median / end-to-end median in ms:\n")
console.log(table(["cell", ...columns.map(([, l]) => l)], cells.map((c) => [c, ...columns.map(([s]) => cellOf(c, s))])))

const libpqTarget = (cell: string) => cell.startsWith("vfull") || cell.startsWith("direct")
console.log("\nRatios of medians, pqcancel `blocking` against each system, dispatch / end-to-end (✓/✗: target met):\n")
const ratios = report.ratios as ReadonlyArray<CellRatios>
console.log(table(
  ["cell", "vs Node floor (≤ 1.05)", "vs PQcancelBlocking", "vs pg (< 1)", "vs postgres.js (< 1)", "floor vs libpq"],
  ratios.map((r) => [
    r.cell,
    `${mark(r.blockingVsFloor.dispatch, (x) => x <= 1.05)} / ${mark(r.blockingVsFloor.e2e, (x) => x <= 1.05)}`,
    libpqTarget(r.cell)
      ? `${mark(r.blockingVsLibpq.dispatch, (x) => x <= 1)} / ${mark(r.blockingVsLibpq.e2e, (x) => x <= 1)}`
      : `${r2(r.blockingVsLibpq.dispatch)} / ${r2(r.blockingVsLibpq.e2e)}`,
    `${mark(r.blockingVsPg.dispatch, (x) => x < 1)} / ${mark(r.blockingVsPg.e2e, (x) => x < 1)}`,
    `${mark(r.blockingVsPostgresjs.dispatch, (x) => x < 1)} / ${mark(r.blockingVsPostgresjs.e2e, (x) => x < 1)}`,
    `${r2(r.floorVsLibpq.dispatch)} / ${r2(r.floorVsLibpq.e2e)}`
  ])
))

if (report.bursts.length > 0) {
  console.log("\nBursts over TCP, protocol 3.0 (median wall ms of the runs; worst event-loop delay ms):\n")
  const sizes = [...new Set(report.bursts.map((b) => b.n))]
  const systems = [...new Set(report.bursts.map((b) => b.system))]
  const wall = (n: number, s: SystemId) => {
    const b = report.bursts.find((x) => x.n === n && x.system === s)
    return b === undefined || b.runs.length === 0 ? undefined : summarize(b.runs.map((r) => r.wall)).median
  }
  const delay = (n: number, s: SystemId) => {
    const b = report.bursts.find((x) => x.n === n && x.system === s)
    const d = (b?.runs ?? []).map((r) => r.maxLoopDelay).filter((x): x is number => x !== undefined)
    return d.length === 0 ? "—" : ms(Math.max(...d))
  }
  console.log(table(
    ["N", ...systems, "pqcancel blocking / PQcancelBlocking"],
    sizes.map((n) => [
      String(n),
      ...systems.map((s) => `${ms(wall(n, s))} (${delay(n, s)})`),
      mark(
        wall(n, "pqcancel-blocking") !== undefined && wall(n, "libpq-blocking") !== undefined
          ? wall(n, "pqcancel-blocking")! / wall(n, "libpq-blocking")!
          : undefined,
        (x) => x <= 1
      )
    ])
  ))
}
if (report.inflight.length > 0) {
  console.log("\nMemory per in-flight cancel (JS heap + external bytes; RSS KiB):\n")
  console.log(table(
    ["system", "transport", "N", "JS B/cancel", "RSS KiB/cancel"],
    report.inflight.map((r) => [
      r.system,
      r.transport,
      String(r.n),
      r.jsBytesPerCancel.toFixed(0),
      r.rssKbPerCancel.toFixed(1)
    ])
  ))
}
