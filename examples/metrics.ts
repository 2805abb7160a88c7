/**
 * Metrics printed to the console: three queries on a node-postgres client run out of time and are cancelled on the
 * server; every cancel is counted by outcome and timed (`CancelMetrics`, Effect `Metric`s). Here they are read with
 * `Metric.snapshot`; in production an OpenTelemetry or Prometheus layer exports the same series
 * (docs/metrics-and-tracing.md).
 *
 *   npx -y pnpm@10 exec node examples/metrics.ts
 */
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import { CancelMetrics } from "@pqcancel/core"
import { NodeTransport } from "@pqcancel/node"
import * as PgAdapter from "@pqcancel/node/PgAdapter"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as Redacted from "effect/Redacted"
import * as Database from "./Database.ts"

const program = Effect.gen(function*() {
  const db = yield* Database.Database
  const client = yield* PgAdapter.connect({ connectionString: Redacted.value(db.url) })
  for (let i = 0; i < 3; i++) {
    // a query interrupted before the client sent it is withdrawn, not cancelled: on a busy machine some may be
    yield* PgAdapter.query(client, undefined, "SELECT pg_sleep(30)").pipe(Effect.timeoutOption("1 second"))
  }

  const ours: ReadonlyArray<string> = Object.values(CancelMetrics.names)
  for (const metric of yield* Metric.snapshot) {
    if (!ours.includes(metric.id)) continue
    const attributes = Object.entries(metric.attributes ?? {}).map(([k, v]) => `${k}=${v}`).join(" ")
    const state = metric.type === "Counter"
      ? `count ${metric.state.count}`
      : metric.type === "Histogram"
      ? `count ${metric.state.count}, mean ${(metric.state.sum / metric.state.count * 1000).toFixed(2)} ms, max ${
        (metric.state.max * 1000).toFixed(2)
      } ms`
      : JSON.stringify(metric.state)
    console.log(`${metric.id} {${attributes}}: ${state}`)
  }
  const dispatched = yield* Metric.value(CancelMetrics.cancels("tcp", "verify-full", "dispatched"))
  if (dispatched.count < 1) return yield* Effect.die(new Error("no cancel was counted"))
})

program.pipe(Effect.scoped, Effect.provide(Layer.merge(Database.layer, NodeTransport.layer)), NodeRuntime.runMain)
