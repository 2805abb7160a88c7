/**
 * Metrics and tracing through OpenTelemetry: `@effect/opentelemetry`'s `NodeSdk` layer makes Effect's tracer and
 * metrics OpenTelemetry's, so every cancel is a `pqcancel.cancel` span (server address and port, backend pid,
 * sslmode — never the key) and the `pqcancel.*` metrics are exported with the application's. Here both go to the
 * console exporters; in production, to an OTLP exporter.
 *
 *   npx -y pnpm@10 exec node examples/opentelemetry.ts
 */
import * as NodeSdk from "@effect/opentelemetry/NodeSdk"
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import { ConsoleMetricExporter, PeriodicExportingMetricReader } from "@opentelemetry/sdk-metrics"
import { ConsoleSpanExporter, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base"
import { NodeTransport } from "@pqcancel/node"
import * as PgAdapter from "@pqcancel/node/PgAdapter"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import * as Database from "./Database.ts"

// exported every minute, and by `forceFlush` below (this program ends sooner)
const metricReader = new PeriodicExportingMetricReader({
  exporter: new ConsoleMetricExporter(),
  exportIntervalMillis: 60_000
})

const Observability = NodeSdk.layer(() => ({
  resource: { serviceName: "pqcancel-example" },
  spanProcessor: new SimpleSpanProcessor(new ConsoleSpanExporter()),
  metricReader
}))

const program = Effect.gen(function*() {
  const db = yield* Database.Database
  const client = yield* PgAdapter.connect({ connectionString: Redacted.value(db.url) })
  yield* PgAdapter.query(client, undefined, "SELECT pg_sleep(30)").pipe(Effect.timeoutOption("1 second"))
}).pipe(Effect.withSpan("report"), Effect.andThen(Effect.promise(() => metricReader.forceFlush())))

program.pipe(
  Effect.scoped,
  Effect.provide(Layer.mergeAll(Database.layer, NodeTransport.layer, Observability)),
  NodeRuntime.runMain
)
