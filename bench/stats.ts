/**
 * Small statistics and process-measurement helpers for the benchmark (no dependencies).
 */
import * as Fs from "node:fs"
import * as V8 from "node:v8"

/** Summary of a sample set, in the unit of the samples. */
export interface Summary {
  readonly n: number
  readonly median: number
  readonly p95: number
  readonly p99: number
  readonly min: number
  readonly max: number
  readonly mean: number
}

/** Nearest-rank percentile of an ascending array (p in 0..100). */
export const percentile = (sorted: ReadonlyArray<number>, p: number): number => {
  if (sorted.length === 0) return Number.NaN
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))
  return sorted[rank]!
}

/** Summary of the finite samples (NaN marks "not measurable"). */
export const summarize = (samples: ReadonlyArray<number>): Summary => {
  const sorted = samples.filter((x) => Number.isFinite(x)).sort((a, b) => a - b)
  const mean = sorted.reduce((a, b) => a + b, 0) / Math.max(1, sorted.length)
  return {
    n: sorted.length,
    median: percentile(sorted, 50),
    p95: percentile(sorted, 95),
    p99: percentile(sorted, 99),
    min: sorted[0] ?? Number.NaN,
    max: sorted[sorted.length - 1] ?? Number.NaN,
    mean
  }
}

/** A field of /proc/self/status in KiB (VmRSS, VmHWM), or -1. */
export const procStatusKb = (field: "VmRSS" | "VmHWM"): number => {
  try {
    const text = Fs.readFileSync("/proc/self/status", "utf8")
    const match = new RegExp(`^${field}:\\s+(\\d+)\\s+kB`, "m").exec(text)
    return match === null ? -1 : Number(match[1])
  } catch {
    return -1
  }
}

/** Resets the kernel's peak-RSS counter (VmHWM) of this process to its current RSS (Linux ≥ 4.0). */
export const resetPeakRss = (): boolean => {
  try {
    Fs.writeFileSync("/proc/self/clear_refs", "5")
    return true
  } catch {
    return false
  }
}

/** Runs a full GC when the process was started with --expose-gc. */
export const fullGc = (): void => {
  const gc = (globalThis as { gc?: () => void }).gc
  if (gc !== undefined) {
    gc()
    gc()
  }
}

/**
 * CPU time (µs) and bytes allocated per call of `run`, over `n` calls after `warmup` calls and a full GC (run with
 * `node --expose-gc`): bytes are counted across the garbage collections that happen meanwhile.
 */
export const perCall = (
  n: number,
  warmup: number,
  run: () => void
): { readonly us: number; readonly bytes: number } => {
  for (let k = 0; k < warmup; k++) run()
  fullGc()
  const profiler = new V8.GCProfiler()
  profiler.start()
  const before = V8.getHeapStatistics().used_heap_size
  const t0 = performance.now()
  for (let k = 0; k < n; k++) run()
  const t1 = performance.now()
  const after = V8.getHeapStatistics().used_heap_size
  let allocated = 0
  let last = before
  for (const gc of profiler.stop()?.statistics ?? []) {
    allocated += gc.beforeGC.heapStatistics.usedHeapSize - last
    last = gc.afterGC.heapStatistics.usedHeapSize
  }
  allocated += after - last
  return { us: (t1 - t0) * 1000 / n, bytes: allocated / n }
}

/** JS-visible memory: V8 heap in use + external (ArrayBuffers, Buffers) in bytes. */
export const jsMemory = (): number => {
  const m = process.memoryUsage()
  return m.heapUsed + m.external
}
