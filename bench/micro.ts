/**
 * Profiling aid (not part of `pnpm bench`): CPU time and bytes allocated by the pieces of one pqcancel cancel that
 * involve no I/O — and of one statement through an adapter that is never interrupted — the Effect primitives `CancelConnection.make` creates, the whole `make` + scope close, and the
 * pure state machine — so the per-cancel overhead seen in bench/profile.ts can be attributed.
 *
 *   node --expose-gc bench/micro.ts [--n 20000]
 */
import { AdapterKit, CancelConnection, CancelKey, CancelMachine, CancelOnInterrupt } from "@pqcancel/core"
import { Transport } from "@pqcancel/core/Transport"
import * as PgAdapter from "@pqcancel/node/PgAdapter"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Queue from "effect/Queue"
import * as Result from "effect/Result"
import * as Scope from "effect/Scope"
import * as Semaphore from "effect/Semaphore"
import * as SubscriptionRef from "effect/SubscriptionRef"
import * as Net from "node:net"
import pg from "pg"
import type { Cell } from "./cells.ts"
import { pqcancelOptions } from "./cells.ts"
import { perCall } from "./stats.ts"

const argv = process.argv.slice(2)
const i = argv.indexOf("--n")
const n = i === -1 ? 20000 : Number(argv[i + 1])

const cell: Cell = { id: "tcp/3.2", transport: "tcp", protocol: "3.2" }
const fakeCluster = {
  socketDir: "/tmp",
  port: 5432,
  host: "127.0.0.1",
  conninfo: (_transport: string, extra: Record<string, string> = {}) =>
    Object.entries({ host: "127.0.0.1", port: "5432", ...extra }).map(([k, v]) => `${k}=${v}`).join(" ")
} as unknown as Parameters<typeof pqcancelOptions>[0]
const options = pqcancelOptions(fakeCluster, cell)
const key = CancelKey.unsafeMake({ pid: 42, secret: new Uint8Array(32), protocolVersion: "3.2" })
const session: CancelConnection.SessionInfo = {
  options,
  host: options.hosts[0]!,
  address: { _tag: "Tcp", address: "127.0.0.1", port: 5432, family: 4 },
  key
}

const measure = (name: string, run: () => void) => {
  const { bytes, us } = perCall(n, Math.min(n, 2000), run)
  console.log(`${name.padEnd(58)} ${us.toFixed(2).padStart(7)} µs  ${bytes.toFixed(0).padStart(7)} B`)
}

const runSync = <A, E>(effect: Effect.Effect<A, E>) => () => {
  Effect.runSync(effect)
}

// the one-shot cancel with a transport that answers at once (Connected on connect, EOF on write): everything
// pqcancel does per cancel except the socket itself
const instantTransport = Transport.of({
  connect: (_request, sink) => {
    sink({ _tag: "Connected" })
    return {
      fd: () => -1,
      write: () => sink({ _tag: "Eof" }),
      startTls: () => {},
      startGss: () => {},
      close: () => {}
    }
  },
  gssCredentialsAvailable: () => Effect.succeed(false)
})
console.log(`${"operation (no I/O)".padEnd(58)} ${"time".padStart(10)}  ${"alloc".padStart(9)}`)
measure("Effect.runSync(Effect.succeed(1)) (baseline per run)", runSync(Effect.succeed(1)))
measure("Semaphore.make(1)", runSync(Semaphore.make(1)))
measure("Queue.unbounded()", runSync(Queue.unbounded<number>()))
measure(
  "SubscriptionRef.make(transition)",
  runSync(SubscriptionRef.make({ status: "ALLOCATED", polling: "WRITING", at: 0 }))
)
measure(
  "Scope.make + fork + close (per-socket child scope)",
  runSync(Effect.gen(function*() {
    const scope = yield* Scope.make()
    const child = yield* Scope.fork(scope)
    yield* Scope.close(child, Exit.void)
    yield* Scope.close(scope, Exit.void)
  }))
)
measure(
  "Effect.scoped(CancelConnection.make(session))",
  runSync(Effect.scoped(CancelConnection.make(session)).pipe(Effect.provideService(Transport, instantTransport)))
)
const config = CancelMachine.makeConfig({
  host: session.host,
  address: session.address,
  sslmode: "disable",
  sslnegotiation: "postgres",
  gssencmode: "prefer",
  sslsni: true,
  gssAvailable: false,
  key
})
measure("CancelMachine.makeConfig (incl. encodeCancelRequest)", () => {
  CancelMachine.makeConfig({
    host: session.host,
    address: session.address,
    sslmode: "disable",
    sslnegotiation: "postgres",
    gssencmode: "prefer",
    sslsni: true,
    gssAvailable: false,
    key
  })
})
measure("CancelMachine: start → connected → eof (3 pure steps)", () => {
  const a = CancelMachine.step(config, CancelMachine.initial, CancelMachine.Events.start)
  const b = CancelMachine.step(config, a.state, CancelMachine.Events.connected)
  CancelMachine.step(config, b.state, CancelMachine.Events.eof)
})

measure(
  "CancelConnection.cancel (fake transport answering at once)",
  runSync(CancelConnection.cancel(session).pipe(Effect.provideService(Transport, instantTransport), Effect.orDie))
)
measure(
  "CancelConnection.make + blocking (same fake transport)",
  runSync(
    Effect.scoped(Effect.flatMap(CancelConnection.make(session), (c) => c.blocking())).pipe(
      Effect.provideService(Transport, instantTransport),
      Effect.orDie
    )
  )
)
measure("Effect.withSpan around Effect.void (no tracer installed)", runSync(Effect.withSpan(Effect.void, "x")))
measure("CancelConnection.validateSession", () => {
  CancelConnection.validateSession(session)
})

// ---------------------------------------------------------------------------------------------------------------------
// One statement through an adapter, never interrupted (the hot path), against the same driver call wrapped in Effect
// the way an Effect user would: a fake connected pg.Client (on a unix socket, so no address is read) that answers
// every query at once. What is left is what the adapter adds per statement.
// ---------------------------------------------------------------------------------------------------------------------

const fakePgClient = () => {
  const result = { rows: [], rowCount: 0 }
  return {
    host: "/tmp",
    port: 5432,
    ssl: false,
    processID: 4242,
    secretKey: 1234,
    connection: { stream: new Net.Socket() },
    _activeQuery: null,
    _queryQueue: [],
    _sentQueryQueue: [],
    query(submitted: { callback: (error: Error | null, result: unknown) => void }) {
      submitted.callback(null, result)
    }
  } as unknown as pg.Client
}
const bareClient = fakePgClient()
const adapterClient = fakePgClient()
const bareQuery = (text: string) =>
  Effect.callback<unknown, Error>((resume) => {
    bareClient.query(
      new pg.Query(text, undefined, (error, result) => resume(error ? Effect.fail(error) : Effect.succeed(result)))
    )
  })
const runProvided = <A, E>(effect: Effect.Effect<A, E, Transport>) =>
  runSync(Effect.provideService(effect, Transport, instantTransport).pipe(Effect.orDie))
console.log(
  `\n${"one statement, never interrupted (no I/O)".padEnd(58)} ${"time".padStart(10)}  ${"alloc".padStart(9)}`
)
measure("pg: Effect.callback around client.query (bare)", runSync(bareQuery("SELECT 1")))
measure("pg: PgAdapter.query(client, undefined, …)", runProvided(PgAdapter.query(adapterClient, undefined, "SELECT 1")))
const kit = AdapterKit.make<object, unknown, never>({
  driver: "bench",
  target: () => Result.succeed(session),
  locate: () => "running",
  retire: () => Effect.void,
  isRetired: () => false,
  isCanceled: () => false
})
const connection = {}
const statement = Effect.succeed(1)
measure("an Effect statement (bare, with the same Transport provided)", runProvided(statement))
measure(
  "AdapterKit.effect (sql-pg's path: one child fiber)",
  runProvided(kit.effect(connection, undefined, (f) => f, statement))
)
measure(
  "AdapterKit.reclaimed (sql-pg multiplex: no fiber)",
  runProvided(kit.reclaimed(connection, undefined, statement, () => undefined))
)
measure(
  "CancelOnInterrupt.cancelOnInterrupt (the 0.1 path, for comparison)",
  runProvided(CancelOnInterrupt.cancelOnInterrupt(statement, { session }))
)
