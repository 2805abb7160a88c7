/**
 * Rendering: markdown tables for stdout (and the README), and a hand-written SVG chart.
 */
import type { AdapterReport } from "./adapters.ts"
import { renderAdapterPanel, renderAdapterTables } from "./adapters.ts"
import type { BurstResult } from "./burst.ts"
import type { SystemId } from "./cells.ts"
import { allCells, systems } from "./cells.ts"
import type { InflightResult } from "./inflight.ts"
import type { RuntimeCell } from "./runtimes.ts"
import type { Summary } from "./stats.ts"
import { summarize } from "./stats.ts"

export interface LatencyResult {
  readonly cell: string
  readonly system: SystemId
  readonly na: string | undefined
  readonly error: string | undefined
  readonly dispatch: Summary | undefined
  readonly e2e: Summary | undefined
}

export interface Report {
  readonly date: string
  readonly mode: "quick" | "full" | "adapters-quick" | "adapters-full"
  readonly environment: Record<string, string | number>
  readonly config: Record<string, unknown>
  readonly latency: ReadonlyArray<LatencyResult>
  readonly ratios: ReadonlyArray<CellRatios>
  readonly bursts: ReadonlyArray<BurstResult>
  readonly inflight: ReadonlyArray<InflightResult>
  /** the runtime cells (bench/runtimes.ts), absent in older results */
  readonly runtimes?: ReadonlyArray<RuntimeCell> | undefined
  /** bench:adapters: each driver bare against its adapter (absent in runs before it existed) */
  readonly adapters?: AdapterReport | undefined
  readonly durationSeconds: number
}

const label = (id: SystemId) => systems.find((s) => s.id === id)?.label ?? id
const ms = (x: number | undefined) => x === undefined || Number.isNaN(x) ? "—" : x < 10 ? x.toFixed(3) : x.toFixed(1)
const ratio = (a: number | undefined, b: number | undefined) =>
  a === undefined || b === undefined || Number.isNaN(a) || Number.isNaN(b) || b === 0 ? undefined : a / b
const fmtRatio = (r: number | undefined, target?: number, strict = false) =>
  r === undefined
    ? "n/a"
    : `${r.toFixed(2)}×${target === undefined ? "" : (strict ? r < target : r <= target) ? " ✓" : " ✗"}`

const table = (header: ReadonlyArray<string>, rows: ReadonlyArray<ReadonlyArray<string>>) =>
  [
    `| ${header.join(" | ")} |`,
    `| ${header.map((_, i) => (i < 2 ? "---" : "---:")).join(" | ")} |`,
    ...rows.map((r) => `| ${r.join(" | ")} |`)
  ].join("\n")

// the issue's libpq target applies to verify-full and direct TLS; elsewhere the ratio is informative
const libpqTargetFor = (cell: string) => cell.startsWith("vfull") || cell.startsWith("direct") ? 1.0 : undefined

/** A ratio of medians for dispatch and for end-to-end (undefined when either side has no figure). */
export interface RatioPair {
  readonly dispatch: number | undefined
  readonly e2e: number | undefined
}

/** Ratios of medians per cell, as the README and the JSON report them. */
export interface CellRatios {
  readonly cell: string
  readonly blockingVsFloor: RatioPair
  readonly blockingVsLibpq: RatioPair
  readonly blockingVsPg: RatioPair
  readonly blockingVsPostgresjs: RatioPair
  readonly pollVsLibpq: RatioPair
  readonly floorVsLibpq: RatioPair
  readonly naiveVsFloor: RatioPair
}

export const computeRatios = (latency: ReadonlyArray<LatencyResult>): Array<CellRatios> => {
  const median = (cell: string, system: SystemId, field: "dispatch" | "e2e") => {
    const r = latency.find((x) => x.cell === cell && x.system === system)
    const m = r?.[field]?.median
    return m !== undefined && Number.isFinite(m) ? m : undefined
  }
  const pairOf = (cell: string, a: SystemId, b: SystemId): RatioPair => ({
    dispatch: ratio(median(cell, a, "dispatch"), median(cell, b, "dispatch")),
    e2e: ratio(median(cell, a, "e2e"), median(cell, b, "e2e"))
  })
  return [...new Set(latency.map((r) => r.cell))].map((cell) => ({
    cell,
    blockingVsFloor: pairOf(cell, "pqcancel-blocking", "node-floor"),
    blockingVsLibpq: pairOf(cell, "pqcancel-blocking", "libpq-blocking"),
    blockingVsPg: pairOf(cell, "pqcancel-blocking", "pg"),
    blockingVsPostgresjs: pairOf(cell, "pqcancel-blocking", "postgresjs"),
    pollVsLibpq: pairOf(cell, "pqcancel-poll", "libpq-poll"),
    floorVsLibpq: pairOf(cell, "node-floor", "libpq-blocking"),
    naiveVsFloor: pairOf(cell, "node-naive", "node-floor")
  }))
}

export const renderTables = (report: Report): string => {
  const out: Array<string> = []
  out.push(`\n## pqcancel benchmark (${report.mode}) — ${report.date}`)
  out.push(
    `Node ${report.environment["node"]} (OpenSSL ${report.environment["openssl"]}), PostgreSQL ${
      report.environment["postgres"]
    }, ${report.environment["cpus"]} × ${report.environment["cpuModel"]}; ${report.durationSeconds.toFixed(0)} s`
  )
  if (report.latency.length > 0) {
    out.push("\n### Latency per cancel (ms): dispatch = cancel call → server closed the cancel connection;")
    out.push("### end-to-end = cancel call → the session received SQLSTATE 57014\n")
    const rows: Array<Array<string>> = []
    for (const r of report.latency) {
      if (r.na !== undefined) {
        rows.push([r.cell, label(r.system), "n/a", "", "", "n/a", "", "", r.na])
        continue
      }
      if (r.dispatch === undefined || r.e2e === undefined) {
        rows.push([r.cell, label(r.system), "error", "", "", "", "", "", r.error ?? ""])
        continue
      }
      rows.push([
        r.cell,
        label(r.system),
        ms(r.dispatch.median),
        ms(r.dispatch.p95),
        ms(r.dispatch.p99),
        ms(r.e2e.median),
        ms(r.e2e.p95),
        ms(r.e2e.p99),
        r.dispatch.n === 0 ? `${r.e2e.n} (dispatch not observable)` : String(r.e2e.n)
      ])
    }
    out.push(table(["cell", "system", "dispatch med", "p95", "p99", "e2e med", "p95", "p99", "n"], rows))

    out.push(
      "\n### Ratios of medians, pqcancel `blocking` against each system (dispatch / end-to-end; ✓/✗ = target met)\n"
    )
    out.push(
      "Targets: ≤ 1.05× the tuned Node floor everywhere; < 1.00× pg and postgres.js wherever they can cancel; " +
        "≤ 1.00× PQcancelBlocking on verify-full and direct TLS.\n"
    )
    const pair = (r: RatioPair, target?: number, strict = false) =>
      `${fmtRatio(r.dispatch, target, strict)} / ${fmtRatio(r.e2e, target, strict)}`
    out.push(table(
      [
        "cell",
        "",
        "vs Node floor",
        "vs PQcancelBlocking",
        "vs pg",
        "vs postgres.js",
        "start+poll vs PQcancelStart+Poll",
        "Node floor vs PQcancelBlocking",
        "naive node:tls vs Node floor"
      ],
      report.ratios.map((r) => [
        r.cell,
        "",
        pair(r.blockingVsFloor, 1.05),
        pair(r.blockingVsLibpq, libpqTargetFor(r.cell)),
        pair(r.blockingVsPg, 1, true),
        pair(r.blockingVsPostgresjs, 1, true),
        pair(r.pollVsLibpq),
        pair(r.floorVsLibpq),
        pair(r.naiveVsFloor)
      ])
    ))
  }
  if (report.bursts.length > 0) {
    out.push(
      "\n### Bursts over TCP (protocol 3.0): N sessions cancelled at once; wall = until all N saw 57014 (median of runs, min–max)\n"
    )
    const rows = report.bursts.map((b) => {
      if (b.runs.length === 0) return [String(b.n), label(b.system), "error", "", "", "", "", b.error ?? ""]
      const wall = summarize(b.runs.map((r) => r.wall))
      const peak = Math.max(...b.runs.map((r) => r.peakRssKb)) / 1024
      const per = summarize(b.runs.map((r) => r.perCancelKb))
      const delays = b.runs.map((r) => r.maxLoopDelay).filter((x): x is number => x !== undefined)
      const failed = b.runs.reduce((a, r) => a + r.failed, 0)
      return [
        String(b.n),
        label(b.system),
        `${ms(wall.median)} (${ms(wall.min)}–${ms(wall.max)})`,
        peak.toFixed(1),
        per.median.toFixed(1),
        delays.length === 0 ? "—" : `${ms(summarize(delays).median)} / ${ms(Math.max(...delays))}`,
        String(b.runs.length),
        failed === 0 ? "" : `${failed} not cancelled`
      ]
    })
    out.push(
      table([
        "N",
        "system",
        "wall ms",
        "peak RSS MiB",
        "ΔRSS KiB/cancel",
        "loop delay ms med / max",
        "runs",
        "notes"
      ], rows)
    )
    const sizes = [...new Set(report.bursts.map((b) => b.n))]
    const burstRows = sizes.map((n) => {
      const wall = (s: SystemId) => {
        const b = report.bursts.find((x) => x.n === n && x.system === s)
        return b === undefined || b.runs.length === 0 ? undefined : summarize(b.runs.map((r) => r.wall)).median
      }
      const peer = [wall("pg"), wall("postgresjs")].filter((x): x is number => x !== undefined)
      const pq = [wall("pqcancel-blocking"), wall("pqcancel-poll")].filter((x): x is number => x !== undefined)
      const libpq = [wall("libpq-blocking"), wall("libpq-poll")].filter((x): x is number => x !== undefined)
      return [
        String(n),
        "",
        fmtRatio(ratio(wall("pqcancel-blocking"), wall("libpq-blocking")), 1),
        fmtRatio(ratio(wall("pqcancel-poll"), wall("libpq-poll")), 1),
        fmtRatio(
          ratio(pq.length ? Math.min(...pq) : undefined, libpq.length ? Math.min(...libpq) : undefined),
          1
        ),
        fmtRatio(ratio(pq.length ? Math.min(...pq) : undefined, peer.length ? Math.min(...peer) : undefined))
      ]
    })
    out.push("\n### Burst wall-time ratios (target ≤ 1.0× libpq)\n")
    out.push(
      table(
        [
          "N",
          "",
          "pqcancel blocking / PQcancelBlocking",
          "start+poll / PQcancelStart+Poll",
          "best / best libpq",
          "best / best peer"
        ],
        burstRows
      )
    )
  }
  if (report.inflight.length > 0) {
    out.push("\n### Client memory per in-flight cancel (black-hole server holds every cancel open; after full GC)\n")
    out.push(
      table(
        [
          "system",
          "transport",
          "N",
          "JS heap+external B/cancel",
          "RSS KiB/cancel",
          "≤ 64 KiB",
          "fire→all sent ms",
          "loop delay max ms"
        ],
        report.inflight.map((r) => [
          label(r.system),
          r.transport,
          String(r.n),
          r.error !== undefined ? "error" : r.jsBytesPerCancel.toFixed(0),
          r.error !== undefined ? "error" : r.rssKbPerCancel.toFixed(1),
          r.error !== undefined
            ? r.error
            : Math.max(r.jsBytesPerCancel / 1024, r.rssKbPerCancel) <= 64
            ? "✓"
            : "✗",
          ms(r.fireToHeld),
          ms(r.maxLoopDelay)
        ])
      )
    )
  }
  if (report.adapters !== undefined) out.push(renderAdapterTables(report.adapters))
  return out.join("\n")
}

// ---------------------------------------------------------------------------------------------------------------------
// SVG
// ---------------------------------------------------------------------------------------------------------------------

const colors: Record<SystemId, string> = {
  "pqcancel-blocking": "#1f77b4",
  "pqcancel-poll": "#6baed6",
  "pqcancel-all": "#17becf",
  "libpq-blocking": "#d62728",
  "libpq-poll": "#ff9896",
  "libpq-legacy": "#8c564b",
  pg: "#2ca02c",
  postgresjs: "#9467bd",
  "node-floor": "#7f7f7f",
  "node-naive": "#c7c7c7"
}

const esc = (s: string) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")

interface Group {
  readonly label: string
  readonly bars: ReadonlyArray<{ readonly system: SystemId; readonly value: number; readonly hi: number }>
}

/** One panel: groups of horizontal bars (median) with a whisker to p95. */
const panel = (title: string, unit: string, groups: ReadonlyArray<Group>, x0: number, y0: number, width: number) => {
  const barH = 9
  const gap = 8
  const labelW = 110
  // the axis follows the medians (a few ms), not the tail: one p95 of 50 ms would squash every bar to a pixel.
  // The largest median spans 60% of the panel; a longer bar or whisker is cut at the panel's edge.
  const medians = groups.flatMap((g) => g.bars.map((b) => b.value)).filter(Number.isFinite).sort((a, b) => a - b)
  const typical = medians.length === 0 ? 1 : medians[Math.floor(0.9 * (medians.length - 1))]!
  const max = Math.max(1e-9, typical / 0.6)
  const scale = (v: number) => (Math.min(v, max) / max) * (width - labelW - 70)
  const parts: Array<string> = [
    `<text x="${x0}" y="${y0}" font-size="14" font-weight="bold">${esc(title)}</text>`
  ]
  let y = y0 + 14
  for (const g of groups) {
    parts.push(`<text x="${x0}" y="${y + 10}" font-size="11">${esc(g.label)}</text>`)
    for (const b of g.bars) {
      const w = Math.max(1, scale(b.value))
      parts.push(
        `<rect x="${x0 + labelW}" y="${y}" width="${w.toFixed(1)}" height="${barH}" fill="${colors[b.system]}"><title>${
          esc(`${label(b.system)}: median ${ms(b.value)} ${unit}, p95 ${ms(b.hi)} ${unit}`)
        }</title></rect>`,
        `<line x1="${(x0 + labelW + w).toFixed(1)}" x2="${(x0 + labelW + scale(b.hi)).toFixed(1)}" y1="${
          y + barH / 2
        }" y2="${y + barH / 2}" stroke="#555" stroke-width="1"/>`,
        `<text x="${(x0 + labelW + scale(b.hi) + 4).toFixed(1)}" y="${y + barH - 1}" font-size="9" fill="#333">${
          ms(b.value)
        }</text>`
      )
      y += barH + 1
    }
    y += gap
  }
  return { svg: parts.join("\n"), height: y - y0 }
}

export const renderSvg = (report: Report): string => {
  const width = 560
  const title = `<text x="10" y="18" font-size="15" font-weight="bold">${
    esc(`pqcancel benchmark (${report.mode}) — ${report.date} — PostgreSQL ${report.environment["postgres"]}`)
  }</text>`
  if (report.latency.length === 0 && report.bursts.length === 0 && report.adapters !== undefined) {
    const only = renderAdapterPanel(report.adapters, 10, 50, 2 * width + 20)
    return [
      `<svg xmlns="http://www.w3.org/2000/svg" width="${2 * width + 40}" height="${only.height + 80}" ` +
      `font-family="sans-serif">`,
      `<rect width="100%" height="100%" fill="white"/>`,
      title,
      only.svg,
      "</svg>",
      ""
    ].join("\n")
  }
  const latencyGroups = (field: "dispatch" | "e2e"): Array<Group> =>
    allCells.filter((c) => report.latency.some((r) => r.cell === c.id)).map((c) => ({
      label: c.id,
      // a figure that could not be observed (postgres.js's dispatch over TLS) has a NaN median: no bar
      bars: report.latency.filter((r) => r.cell === c.id && Number.isFinite(r[field]?.median ?? Number.NaN)).map((
        r
      ) => ({
        system: r.system,
        value: r[field]!.median,
        hi: Number.isFinite(r[field]!.p95) ? r[field]!.p95 : r[field]!.median
      }))
    }))
  const burstGroups: Array<Group> = [...new Set(report.bursts.map((b) => b.n))].map((n) => ({
    label: `N = ${n}`,
    bars: report.bursts.filter((b) => b.n === n && b.runs.length > 0).map((b) => {
      const s = summarize(b.runs.map((r) => r.wall))
      return { system: b.system, value: s.median, hi: s.max }
    })
  }))
  const panels = [
    panel("Dispatch latency, ms (median, whisker to p95)", "ms", latencyGroups("dispatch"), 10, 80, width),
    panel("End-to-end latency to 57014, ms (median, whisker to p95)", "ms", latencyGroups("e2e"), width + 20, 80, width)
  ]
  const top = Math.max(...panels.map((p) => p.height)) + 110
  const burst = panel(
    "Burst wall time until all saw 57014, ms (median, whisker to max)",
    "ms",
    burstGroups,
    10,
    top,
    width
  )
  const legendY = 30
  const legend = systems.map((s, i) =>
    `<rect x="${10 + (i % 4) * 280}" y="${legendY + Math.floor(i / 4) * 14}" width="10" height="10" fill="${
      colors[s.id]
    }"/><text x="${24 + (i % 4) * 280}" y="${legendY + Math.floor(i / 4) * 14 + 9}" font-size="11">${
      esc(s.label)
    }</text>`
  ).join("\n")
  const adapters = report.adapters === undefined
    ? undefined
    : renderAdapterPanel(report.adapters, 10, top + burst.height + 40, 2 * width + 20)
  const height = top + burst.height + 30 + (adapters === undefined ? 0 : adapters.height + 40)
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${2 * width + 40}" height="${height}" font-family="sans-serif">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    title,
    legend,
    ...panels.map((p) => p.svg),
    burst.svg,
    adapters?.svg ?? "",
    "</svg>",
    ""
  ].join("\n")
}
