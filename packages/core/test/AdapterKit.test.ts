/**
 * The adapter kit against an in-memory driver and a scripted Transport: the cancel target is read once per
 * connection; a statement that is never interrupted sends nothing; an interrupted one is located (withdrawn, running,
 * behind another, elsewhere) and cancelled only when a cancel can reach nothing else; the session's 57014 confirms
 * the cancel without waiting for the cancel connection's close, and the session is kept.
 */
import { assert, describe, it } from "@effect/vitest"
import { AdapterKit, CancelKey, ConnectionOptions } from "@pqcancel/core"
import type { CancelConnection, CancelOnInterrupt } from "@pqcancel/core"
import * as CancelOnInterruptModule from "@pqcancel/core/CancelOnInterrupt"
import { Transport } from "@pqcancel/core/Transport"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Result from "effect/Result"
import * as Schedule from "effect/Schedule"
import * as Schema from "effect/Schema"
import { TestClock } from "effect/testing"
import { type Attempt, driveUntilDone, fakeTransport } from "./fakeTransport.ts"

class Canceled extends Schema.TaggedError<Canceled>("test/Canceled")("Canceled", { code: Schema.String }) {}
class NotConnected extends Schema.TaggedError<NotConnected>("test/NotConnected")("NotConnected", {}) {}

/** A statement of the fake driver: it ends when the test finishes it or when a cancel reaches it */
interface FakeStatement {
  readonly sql: string
  done?: (exit: Exit.Exit<string, Canceled>) => void
}

/** A fake connection: `queue[0]` runs, the rest is written behind it; `pending` is not written yet */
interface FakeConn {
  readonly session: CancelConnection.SessionInfo | undefined
  readonly queue: Array<FakeStatement>
  readonly pending: Array<FakeStatement>
  targetReads: number
  retired: Array<string>
}

const sessionInfo = Effect.map(
  ConnectionOptions.fromString("host=localhost sslmode=disable"),
  (options): CancelConnection.SessionInfo => ({
    options,
    host: options.hosts[0]!,
    address: { _tag: "Tcp", address: "127.0.0.1", port: 5432, family: 4 },
    key: CancelKey.unsafeMake({ pid: 4242, secret: new Uint8Array([1, 2, 3, 4]), protocolVersion: "3.0" })
  })
)

const makeConn = (session: CancelConnection.SessionInfo | undefined): FakeConn => ({
  session,
  queue: [],
  pending: [],
  targetReads: 0,
  retired: []
})

const finish = (conn: FakeConn, exit: Exit.Exit<string, Canceled>) => {
  const head = conn.queue.shift()
  head?.done?.(exit)
}

const turns = new WeakMap<FakeConn, Deferred.Deferred<void>>()

const kit = AdapterKit.make<FakeConn, FakeStatement, NotConnected>({
  driver: "fake 1.0",
  target: (conn) => {
    conn.targetReads++
    return conn.session === undefined ? Result.fail(new NotConnected()) : Result.succeed(conn.session)
  },
  locate: (conn, statement) => {
    const at = conn.pending.indexOf(statement)
    if (at !== -1) {
      conn.pending.splice(at, 1)
      return "withdrawn"
    }
    const index = conn.queue.indexOf(statement)
    if (index > 0) return "behind"
    if (index === 0) return conn.queue.length === 1 ? "running" : "elsewhere"
    return "elsewhere"
  },
  awaitTurn: (conn) => Deferred.await(turns.get(conn)!),
  retire: (conn, reason) => Effect.sync(() => conn.retired.push(reason._tag)),
  isRetired: (conn) => conn.retired.length > 0,
  isCanceled: (exit) =>
    Exit.isFailure(exit) && exit.cause.reasons.some((r) => r._tag === "Fail" && Schema.is(Canceled)(r.error))
})

const run = (conn: FakeConn, sql: string, policy?: CancelOnInterrupt.Policy, written = true) =>
  kit.statement<string, Canceled>(conn, policy, (done) => {
    const statement: FakeStatement = { sql, done }
    ;(written ? conn.queue : conn.pending).push(statement)
    return statement
  })

// the fake server: a delivered CancelRequest cancels whatever the connection runs
const serverOf = (conn: FakeConn, script: ReadonlyArray<Attempt>) =>
  fakeTransport(script, () => queueMicrotask(() => finish(conn, Exit.fail(new Canceled({ code: "57014" })))))

const interruptAndDrive = <A, E>(fiber: Fiber.Fiber<A, E>) =>
  Effect.gen(function*() {
    const interrupter = yield* Fiber.interrupt(fiber).pipe(Effect.forkChild)
    yield* driveUntilDone(interrupter)
    return yield* Fiber.await(fiber)
  })

describe("AdapterKit", () => {
  it.effect("the cancel target is read once per connection, and once per options object given", () =>
    Effect.gen(function*() {
      const conn = makeConn(yield* sessionInfo)
      const server = serverOf(conn, ["ok"])
      for (let i = 0; i < 3; i++) {
        const fiber = yield* run(conn, `SELECT ${i}`).pipe(Effect.forkChild)
        yield* Effect.yieldNow
        finish(conn, Exit.succeed(`row ${i}`))
        assert.strictEqual(yield* Fiber.join(fiber), `row ${i}`)
      }
      assert.strictEqual(conn.targetReads, 1)
      assert.deepStrictEqual(server.attempts, [], "a statement that is never interrupted sends nothing")
      const options = yield* ConnectionOptions.fromString("host=localhost sslmode=disable connect_timeout=3")
      const a = kit.target(conn, options)
      const b = kit.target(conn, options)
      assert.isTrue(Result.isSuccess(a) && Result.isSuccess(b) && a.success === b.success)
      assert.strictEqual(Result.getOrThrow(a).options, options)
      assert.strictEqual(conn.targetReads, 1)
    }).pipe(Effect.provideService(Transport, fakeTransport(["ok"]).service)))

  it.effect("a connection whose target cannot be read fails the statement before it starts", () =>
    Effect.gen(function*() {
      const conn = makeConn(undefined)
      const error = yield* Effect.flip(run(conn, "SELECT 1"))
      assert.strictEqual(error._tag, "NotConnected")
      assert.deepStrictEqual(conn.queue, [])
    }).pipe(Effect.provideService(Transport, fakeTransport(["ok"]).service)))

  it.effect("a running statement is cancelled and the connection kept", () =>
    Effect.gen(function*() {
      const conn = makeConn(yield* sessionInfo)
      const server = serverOf(conn, ["ok"])
      const fiber = yield* run(conn, "SELECT pg_sleep(60)").pipe(
        Effect.provideService(Transport, server.service),
        Effect.forkChild
      )
      yield* Effect.yieldNow
      const exit = yield* interruptAndDrive(fiber)
      assert.isTrue(Exit.hasInterrupts(exit))
      assert.deepStrictEqual(server.attempts, ["ok"])
      assert.deepStrictEqual(conn.retired, [])
      assert.deepStrictEqual(conn.queue, [])
    }))

  it.effect("an unwritten statement is withdrawn: no cancel", () =>
    Effect.gen(function*() {
      const conn = makeConn(yield* sessionInfo)
      const server = serverOf(conn, ["ok"])
      const fiber = yield* run(conn, "SELECT 1", undefined, false).pipe(
        Effect.provideService(Transport, server.service),
        Effect.forkChild
      )
      yield* Effect.yieldNow
      yield* interruptAndDrive(fiber)
      assert.deepStrictEqual(server.attempts, [])
      assert.deepStrictEqual(conn.pending, [])
      assert.deepStrictEqual(conn.retired, [])
    }))

  it.effect("a statement written behind another waits for its turn, then is cancelled; the other is not", () =>
    Effect.gen(function*() {
      const conn = makeConn(yield* sessionInfo)
      const turn = yield* Deferred.make<void>()
      turns.set(conn, turn)
      const server = serverOf(conn, ["ok"])
      const first = yield* run(conn, "SELECT 'first'").pipe(
        Effect.provideService(Transport, server.service),
        Effect.forkChild
      )
      const second = yield* run(conn, "SELECT pg_sleep(60)").pipe(
        Effect.provideService(Transport, server.service),
        Effect.forkChild
      )
      yield* Effect.yieldNow
      const interrupter = yield* Fiber.interrupt(second).pipe(Effect.forkChild)
      for (let i = 0; i < 10; i++) yield* TestClock.adjust("10 millis")
      assert.deepStrictEqual(server.attempts, [], "no cancel while another statement runs")
      finish(conn, Exit.succeed("first done"))
      yield* Deferred.succeed(turn, undefined)
      yield* driveUntilDone(interrupter)
      assert.strictEqual(yield* Fiber.join(first), "first done")
      assert.deepStrictEqual(server.attempts, ["ok"])
      assert.deepStrictEqual(conn.retired, [])
    }))

  it.effect("a statement with another written behind it is not cancelled: waited for, retired if it never ends", () =>
    Effect.gen(function*() {
      const conn = makeConn(yield* sessionInfo)
      const server = serverOf(conn, ["ok"])
      const first = yield* run(conn, "SELECT pg_sleep(60)", { drainTimeout: "1 second" }).pipe(
        Effect.provideService(Transport, server.service),
        Effect.forkChild
      )
      yield* run(conn, "SELECT 'next'").pipe(Effect.provideService(Transport, server.service), Effect.forkChild)
      yield* Effect.yieldNow
      yield* interruptAndDrive(first)
      assert.deepStrictEqual(server.attempts, [], "a cancel could have reached the statement behind it")
      assert.deepStrictEqual(conn.retired, ["QueryDidNotEnd"])
    }))

  it.effect("the session's 57014 confirms the cancel: the held cancel connection is finished, the session kept", () =>
    Effect.gen(function*() {
      const conn = makeConn(yield* sessionInfo)
      // the request is delivered (the statement ends 57014) but the server's close never comes
      const server = serverOf(conn, ["held"])
      const fiber = yield* run(conn, "SELECT pg_sleep(60)", { cancelTimeout: "5 seconds" }).pipe(
        Effect.provideService(Transport, server.service),
        Effect.forkChild
      )
      yield* Effect.yieldNow
      yield* interruptAndDrive(fiber)
      assert.deepStrictEqual(server.attempts, ["held"], "no second cancel")
      assert.deepStrictEqual(conn.retired, [])
    }))

  // the cancel's own deadline is a real timer: this one runs on the live clock
  it.live("without the session's 57014 a held cancel connection is not trusted", () =>
    Effect.gen(function*() {
      const conn = makeConn(yield* sessionInfo)
      // delivered, never closed, and the statement completes instead (a late cancel may still be travelling)
      const server = fakeTransport(["held"], () => queueMicrotask(() => finish(conn, Exit.succeed("completed"))))
      const fiber = yield* run(conn, "SELECT 1", {
        cancelTimeout: "100 millis",
        retry: Schedule.recurs(0),
        onNotCanceled: () => Effect.void
      }).pipe(Effect.provideService(Transport, server.service), Effect.forkChild)
      yield* Effect.yieldNow
      yield* Fiber.interrupt(fiber)
      assert.deepStrictEqual(server.attempts, ["held"])
      assert.deepStrictEqual(conn.retired, ["CancelNotConfirmed"])
    }))

  it.effect("cancelOnInterrupt: the session's 57014 confirms the cancel too", () =>
    Effect.gen(function*() {
      const session = yield* sessionInfo
      const canceled = yield* Deferred.make<void>()
      const server = fakeTransport(["held"], () => Deferred.doneUnsafe(canceled, Effect.void))
      const reasons: Array<string> = []
      const query = Effect.andThen(Deferred.await(canceled), Effect.fail(new Canceled({ code: "57014" })))
      const fiber = yield* CancelOnInterruptModule.cancelOnInterrupt(query, {
        session,
        isCanceled: kit.port.isCanceled,
        onUnsafe: (reason) => Effect.sync(() => reasons.push(reason._tag))
      }).pipe(Effect.provideService(Transport, server.service), Effect.forkChild)
      yield* Effect.yieldNow
      yield* interruptAndDrive(fiber)
      assert.deepStrictEqual(server.attempts, ["held"])
      assert.deepStrictEqual(reasons, [])
    }))

  it.effect("pooled: the connection is asked for only after an interruption, its target read then", () =>
    Effect.gen(function*() {
      const conn = makeConn(yield* sessionInfo)
      const server = serverOf(conn, ["ok"])
      let asked = 0
      // a pool that picked the connection after the statement started: the statement is written on it
      const pooled = (sql: string) =>
        kit.pooled<string, Canceled>(undefined, (done) => {
          const statement: FakeStatement = { sql, done }
          conn.queue.push(statement)
          return statement
        }, () => {
          asked++
          return conn
        })
      const quick = yield* pooled("SELECT 1").pipe(Effect.provideService(Transport, server.service), Effect.forkChild)
      yield* Effect.yieldNow
      finish(conn, Exit.succeed("row"))
      assert.strictEqual(yield* Fiber.join(quick), "row")
      assert.deepStrictEqual([asked, conn.targetReads], [0, 0], "nothing is read for a statement never interrupted")
      const fiber = yield* pooled("SELECT pg_sleep(60)").pipe(
        Effect.provideService(Transport, server.service),
        Effect.forkChild
      )
      yield* Effect.yieldNow
      const exit = yield* interruptAndDrive(fiber)
      assert.isTrue(Exit.hasInterrupts(exit))
      assert.deepStrictEqual(server.attempts, ["ok"])
      assert.isAbove(asked, 0)
      assert.strictEqual(conn.targetReads, 1)
      assert.deepStrictEqual(conn.retired, [])
    }))

  it.effect("effect: a driver's Effect runs in a child fiber that locate knows it by", () =>
    Effect.gen(function*() {
      const conn = makeConn(yield* sessionInfo)
      const server = serverOf(conn, ["ok"])
      const statement: FakeStatement = { sql: "SELECT pg_sleep(60)" }
      const query = Effect.callback<string, Canceled>((resume) => {
        statement.done = resume
        conn.queue.push(statement)
      })
      const seen: Array<unknown> = []
      const fiber = yield* kit.effect(conn, undefined, (child) => {
        seen.push(child)
        return statement
      }, query).pipe(Effect.provideService(Transport, server.service), Effect.forkChild)
      yield* Effect.yieldNow
      yield* interruptAndDrive(fiber)
      assert.strictEqual(seen.length, 1)
      assert.deepStrictEqual(server.attempts, ["ok"])
      assert.deepStrictEqual(conn.retired, [])
    }))
})
