/**
 * Profiling aid (not part of `pnpm bench`): where does a pqcancel cancel spend its time and memory, compared with
 * the floor of a raw `node:net` / `node:tls` cancel written by hand?
 *
 *   node --expose-gc bench/profile.ts [--n 300] [--transport unix|tcp|tls] [--only blocking] [--cpu-profile]
 *
 * `--cpu-profile` writes bench/results/profile-<system>-<transport>.cpuprofile covering only the measured loop
 * (open it in Chrome DevTools or speedscope).
 *
 * Cancels are sent to an idle backend (the request is dispatched and the server closes; there is nothing to cancel),
 * sequentially. For each system it prints: median wall time per cancel, the time from "socket connected" and from
 * "server closed (socket 'end')" to the cancel call returning (via diagnostics_channel on net.client.socket), client
 * CPU time per cancel (process.cpuUsage) and bytes allocated per cancel (V8 heap growth summed across GCs, from
 * v8.GCProfiler).
 */
import { CancelConnection } from "@pqcancel/core"
import { Transport } from "@pqcancel/core/Transport"
import { NodeTransport } from "@pqcancel/node"
import * as EmbeddedPostgres from "@pqcancel/test-utils/EmbeddedPostgres"
import * as TestSession from "@pqcancel/test-utils/TestSession"
import * as Effect from "effect/Effect"
import * as DiagnosticsChannel from "node:diagnostics_channel"
import * as Fs from "node:fs"
import * as Inspector from "node:inspector/promises"
import type * as Net from "node:net"
import * as V8 from "node:v8"
import type { Cell } from "./cells.ts"
import { pqcancelSession } from "./cells.ts"
import { cancelPacket, floorTls, rawCancel, startAndPoll } from "./node-systems.ts"
import { fullGc, summarize } from "./stats.ts"

const argv = process.argv.slice(2)
const option = (name: string) => {
  const i = argv.indexOf(`--${name}`)
  return i === -1 ? undefined : argv[i + 1]
}
const n = Number(option("n") ?? 300)
const transport = (option("transport") ?? "unix") as "unix" | "tcp" | "tls"
const only = option("only")
const cpuProfile = argv.includes("--cpu-profile")
const inspector = new Inspector.Session()
inspector.connect()

interface Marks {
  connect: number
  end: number
}
let marks: Marks = { connect: Number.NaN, end: Number.NaN }
DiagnosticsChannel.subscribe("net.client.socket", (message) => {
  const socket = (message as { socket: Net.Socket }).socket
  socket.once("connect", () => (marks.connect = performance.now()))
  socket.once("end", () => (marks.end = performance.now()))
})

const program = Effect.gen(function*() {
  const cluster = yield* EmbeddedPostgres.make({ version: 18, settings: { log_min_messages: "log" } })
  const cell: Cell = { id: `${transport}/3.2`, transport, protocol: "3.2" }
  const session = yield* TestSession.connectTo(cluster, {
    transport: transport === "unix" ? "unix" : "tcp",
    tls: transport === "tls" ? "sslrequest" : "disable",
    protocol: "3.2"
  })
  const info = pqcancelSession(cluster, cell, session)
  const packet = cancelPacket(session.backendKey)
  const floorSetup = floorTls(cluster, cell, true)

  const systems: ReadonlyArray<[string, Effect.Effect<void>]> = [
    [
      "raw node:net floor",
      Effect.promise(() =>
        rawCancel(session.remote, packet, transport === "tls" ? "sslrequest" : "disable", floorSetup)
      )
    ],
    [
      "pqcancel blocking",
      CancelConnection.cancel(info).pipe(Effect.provideService(Transport, NodeTransport.make), Effect.orDie)
    ],
    ["pqcancel start+poll", startAndPoll(info).pipe(Effect.provideService(Transport, NodeTransport.make), Effect.orDie)]
  ]
  for (let round = 0; round < 2; round++) {
    for (const [name, run] of systems) {
      if (only !== undefined && !name.includes(only)) continue
      const wall: Array<number> = []
      const afterConnect: Array<number> = []
      const afterEnd: Array<number> = []
      fullGc()
      const profiling = cpuProfile && round === 1
      if (profiling) {
        yield* Effect.promise(async () => {
          await inspector.post("Profiler.enable")
          await inspector.post("Profiler.setSamplingInterval", { interval: 50 })
          await inspector.post("Profiler.start")
        })
      }
      // bytes allocated = heap growth between GCs, summed over the GCs V8 reports
      const gcProfiler = new V8.GCProfiler()
      gcProfiler.start()
      const heapBefore = V8.getHeapStatistics().used_heap_size
      const cpuBefore = process.cpuUsage()
      for (let i = 0; i < n; i++) {
        marks = { connect: Number.NaN, end: Number.NaN }
        const t0 = performance.now()
        yield* run
        const t1 = performance.now()
        wall.push(t1 - t0)
        afterConnect.push(marks.connect - t0)
        afterEnd.push(t1 - marks.end)
      }
      const cpu = process.cpuUsage(cpuBefore)
      const heapAfter = V8.getHeapStatistics().used_heap_size
      const gcs = gcProfiler.stop()?.statistics ?? []
      let allocated = 0
      let last = heapBefore
      for (const gc of gcs) {
        allocated += gc.beforeGC.heapStatistics.usedHeapSize - last
        last = gc.afterGC.heapStatistics.usedHeapSize
      }
      allocated += heapAfter - last
      if (profiling) {
        const { profile } = yield* Effect.promise(() => inspector.post("Profiler.stop"))
        const file = new URL(
          `results/profile-${name.replace(/[^a-z]+/g, "-")}-${transport}.cpuprofile`,
          import.meta.url
        )
        Fs.mkdirSync(new URL("results/", import.meta.url), { recursive: true })
        Fs.writeFileSync(file, JSON.stringify(profile))
      }
      if (round === 0) continue // warm-up
      const w = summarize(wall)
      console.log(
        `${name.padEnd(22)} wall med ${w.median.toFixed(3)} ms p95 ${w.p95.toFixed(3)} | t0→connect ${
          summarize(afterConnect).median.toFixed(3)
        } ms | server close→return ${summarize(afterEnd).median.toFixed(3)} ms | CPU ${
          ((cpu.user + cpu.system) / n).toFixed(0)
        } µs/cancel (user ${(cpu.user / n).toFixed(0)}) | allocated ${
          (allocated / n / 1024).toFixed(1)
        } KiB/cancel (${gcs.length} GCs)`
      )
    }
  }
}).pipe(Effect.scoped, Effect.orDie)

Effect.runPromise(program).catch((error: unknown) => {
  console.error(error)
  process.exitCode = 1
})
