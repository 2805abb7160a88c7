/**
 * Profiling aid (not part of `pnpm bench`): what `CancelMetrics.trackCancel` adds to one cancel — CPU time and
 * bytes allocated of an already-completed effect with and without the metrics hook.
 *
 *   node --expose-gc bench/metrics-cost.ts [--n 200000]
 */
import { CancelKey, CancelMetrics, ConnectionOptions } from "@pqcancel/core"
import * as Effect from "effect/Effect"
import * as V8 from "node:v8"
import { fullGc } from "./stats.ts"

const argv = process.argv.slice(2)
const i = argv.indexOf("--n")
const n = i === -1 ? 200000 : Number(argv[i + 1])

const options = Effect.runSync(ConnectionOptions.fromString("host=127.0.0.1 sslmode=require"))
const session = {
  options,
  host: options.hosts[0]!,
  address: { _tag: "Tcp", address: "127.0.0.1", port: 5432, family: 4 } as const,
  key: CancelKey.unsafeMake({ pid: 42, secret: new Uint8Array(4), protocolVersion: "3.0" })
}
// a fiber runs either way (runSync of a bare Effect.void would skip it)
const bare: Effect.Effect<void, { readonly _tag: "CancelFailed" }> = Effect.map(Effect.void, () => undefined)
const tracked = bare.pipe(CancelMetrics.trackCancel(session))

const measure = (name: string, effect: Effect.Effect<void, { readonly _tag: "CancelFailed" }>) => {
  for (let k = 0; k < 20000; k++) Effect.runSync(effect)
  fullGc()
  const profiler = new V8.GCProfiler()
  profiler.start()
  const before = V8.getHeapStatistics().used_heap_size
  const t0 = performance.now()
  for (let k = 0; k < n; k++) Effect.runSync(effect)
  const t1 = performance.now()
  const after = V8.getHeapStatistics().used_heap_size
  let allocated = 0
  let last = before
  for (const gc of profiler.stop()?.statistics ?? []) {
    allocated += gc.beforeGC.heapStatistics.usedHeapSize - last
    last = gc.afterGC.heapStatistics.usedHeapSize
  }
  allocated += after - last
  const us = (t1 - t0) * 1000 / n
  const bytes = allocated / n
  console.log(`${name.padEnd(40)} ${us.toFixed(3).padStart(8)} µs  ${bytes.toFixed(0).padStart(6)} B`)
  return { us, bytes }
}

const a = measure("a completed cancel", bare)
const b = measure("… with CancelMetrics.trackCancel", tracked)
console.log(`trackCancel adds ${(b.us - a.us).toFixed(3)} µs and ${(b.bytes - a.bytes).toFixed(0)} B per cancel`)
