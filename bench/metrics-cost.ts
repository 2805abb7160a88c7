/**
 * Profiling aid (not part of `pnpm bench`): what `CancelMetrics.trackCancel` adds to one cancel — CPU time and
 * bytes allocated of an already-completed effect with and without the metrics hook.
 *
 *   node --expose-gc bench/metrics-cost.ts [--n 200000]
 */
import { CancelKey, CancelMetrics, ConnectionOptions } from "@pqcancel/core"
import * as Effect from "effect/Effect"
import { perCall } from "./stats.ts"

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
  const { bytes, us } = perCall(n, 20000, () => Effect.runSync(effect))
  console.log(`${name.padEnd(40)} ${us.toFixed(3).padStart(8)} µs  ${bytes.toFixed(0).padStart(6)} B`)
  return { us, bytes }
}

const a = measure("a completed cancel", bare)
const b = measure("… with CancelMetrics.trackCancel", tracked)
console.log(`trackCancel adds ${(b.us - a.us).toFixed(3)} µs and ${(b.bytes - a.bytes).toFixed(0)} B per cancel`)
