/**
 * Cancel from another process: the process that runs a query hands its session's cancel target — the server's
 * conninfo, the remote address and the `CancelKey` — to a worker process, Schema-encoded, over the worker's stdin
 * (never its arguments, environment or logs: whoever holds the key can cancel the backend's queries). The worker
 * decodes it and sends the CancelRequest over TLS; the query fails with SQLSTATE 57014 in the first process.
 *
 *   npx -y pnpm@10 exec node examples/cancel-from-another-process.ts
 */
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import { CancelConnection, CancelKey, ConnectionOptions } from "@pqcancel/core"
import { NodeTransport } from "@pqcancel/node"
import * as PgAdapter from "@pqcancel/node/PgAdapter"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import * as Schedule from "effect/Schedule"
import * as Schema from "effect/Schema"
import * as ChildProcess from "node:child_process"
import * as Database from "./Database.ts"

/** What a worker needs to cancel a session's query, as JSON: the key's secret is base64 in it — keep it private. */
const CancelTicket = Schema.fromJsonString(Schema.Struct({
  conninfo: Schema.String, // libpq keywords of the server, e.g. "host=db.internal port=5432 sslmode=verify-full"
  address: Schema.Struct({ address: Schema.String, port: Schema.Int, family: Schema.Literals([4, 6]) }),
  key: CancelKey.schema
}))

/** The worker: reads one ticket from stdin, sends the cancel, prints the outcome (never the ticket). */
const worker = Effect.gen(function*() {
  const json = yield* Effect.promise(() => new Response(ReadableStream.from(process.stdin)).text())
  const ticket = yield* Schema.decodeUnknownEffect(CancelTicket)(json)
  const options = yield* ConnectionOptions.fromString(ticket.conninfo)
  const session: CancelConnection.SessionInfo = {
    options,
    host: options.hosts[0]!,
    address: { _tag: "Tcp", ...ticket.address },
    key: ticket.key
  }
  yield* CancelConnection.cancel(session)
  console.log(`worker ${process.pid}: cancel dispatched to backend ${ticket.key.pid} over sslmode=${options.sslmode}`)
}).pipe(Effect.provide(NodeTransport.layer))

/** Runs this file as a worker and writes the ticket to its stdin; the worker is killed if we are interrupted. */
const runWorker = (ticket: string) =>
  Effect.callback<number>((resume) => {
    const child = ChildProcess.spawn(process.execPath, [import.meta.filename, "--worker"], {
      stdio: ["pipe", "inherit", "inherit"]
    })
    child.on("exit", (code) => resume(Effect.succeed(code ?? 1)))
    child.on("error", (error) => resume(Effect.die(error)))
    child.stdin.end(ticket)
    return Effect.sync(() => child.kill())
  }).pipe(Effect.timeout("30 seconds"))

const main = Effect.gen(function*() {
  const db = yield* Database.Database
  const client = yield* PgAdapter.connect({ connectionString: Redacted.value(db.url) })
  const monitor = yield* PgAdapter.connect({ connectionString: Redacted.value(db.url) })
  const session = yield* PgAdapter.sessionInfo(client, yield* PgAdapter.optionsFromClient(client))
  if (session.address._tag !== "Tcp" || session.key === undefined) return yield* Effect.die("a TCP session")
  const { address, port, family } = session.address
  const ticket = yield* Schema.encodeEffect(CancelTicket)({
    conninfo: db.conninfo,
    address: { address, port, family },
    key: session.key
  })

  const query = yield* Effect.forkChild(Effect.flip(PgAdapter.query(client, undefined, "SELECT pg_sleep(60)")))
  // the cancel must reach the backend once it runs the query (before, PostgreSQL ignores it)
  yield* PgAdapter.query(monitor, undefined, "SELECT wait_event FROM pg_stat_activity WHERE pid = $1", [
    session.key.pid
  ]).pipe(
    Effect.repeat({ schedule: Schedule.spaced("10 millis"), until: (r) => r.rows[0]?.wait_event === "PgSleep" }),
    Effect.timeout("10 seconds")
  )
  console.log(`query running on backend ${session.key.pid}; the key, if it were logged: ${JSON.stringify(session.key)}`)
  const code = yield* runWorker(ticket)
  const error = yield* Fiber.join(query)
  console.log(
    `worker exited with ${code}; the query failed with SQLSTATE ${error._tag === "PgQueryError" ? error.code : "?"}`
  )
  if (code !== 0 || error._tag !== "PgQueryError" || error.code !== "57014") {
    return yield* Effect.die(new Error("the query was not cancelled by the worker"))
  }
}).pipe(Effect.scoped, Effect.provide(Layer.merge(Database.layer, NodeTransport.layer)))
;(process.argv.includes("--worker") ? worker : main).pipe(NodeRuntime.runMain)
