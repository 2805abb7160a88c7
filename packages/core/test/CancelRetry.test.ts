/**
 * The retry `Schedule` of `CancelConnection.cancel` / `blocking` / `cancelOnInterrupt`: transient failures (refused,
 * reset) are retried when and while the schedule says, never a TLS verification failure; the default is libpq's single
 * attempt. And `cancelOnInterrupt` retries before it retires, retires on `retireUnlessCanceled`, reports a query that
 * completed anyway. A scripted in-memory Transport plays the server; the TestClock plays time.
 */
import { assert, describe, it } from "@effect/vitest"
import { CancelConnection, CancelError, CancelKey, CancelOnInterrupt, ConnectionOptions } from "@pqcancel/core"
import { Transport } from "@pqcancel/core/Transport"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Schedule from "effect/Schedule"
import { TestClock } from "effect/testing"
import { driveUntilDone, fakeTransport } from "./fakeTransport.ts"

const sessionWith = (conninfo: string) =>
  Effect.map(ConnectionOptions.fromString(conninfo), (options): CancelConnection.SessionInfo => ({
    options,
    host: options.hosts[0]!,
    address: { _tag: "Tcp", address: "127.0.0.1", port: 5432, family: 4 },
    key: CancelKey.unsafeMake({ pid: 4242, secret: new Uint8Array([1, 2, 3, 4]), protocolVersion: "3.0" })
  }))

const plain = sessionWith("host=localhost sslmode=disable")
const tls = sessionWith("host=localhost sslmode=require")

describe("CancelConnection retry", () => {
  it.effect("default: libpq's single attempt; a refused connection is a transient failure", () =>
    Effect.gen(function*() {
      const session = yield* plain
      const fake = fakeTransport(["refused", "ok"])
      const error = yield* Effect.flip(
        CancelConnection.cancel(session).pipe(Effect.provideService(Transport, fake.service))
      )
      assert.strictEqual(error._tag, "CancelFailed")
      assert.isTrue(CancelError.isTransient(error))
      assert.deepStrictEqual(fake.attempts, ["refused"])
    }))

  it.effect("the schedule decides when to send again", () =>
    Effect.gen(function*() {
      const session = yield* plain
      const fake = fakeTransport(["refused", "reset", "ok"])
      const fiber = yield* CancelConnection.cancel(session, { retry: Schedule.spaced("1 second") }).pipe(
        Effect.provideService(Transport, fake.service),
        Effect.forkChild
      )
      yield* Effect.yieldNow
      for (let i = 0; i < 5; i++) yield* Effect.yieldNow
      assert.deepStrictEqual(fake.attempts, ["refused"])
      yield* TestClock.adjust("999 millis")
      assert.deepStrictEqual(fake.attempts, ["refused"], "not before the schedule's delay")
      yield* TestClock.adjust("1 millis")
      for (let i = 0; i < 5; i++) yield* Effect.yieldNow
      assert.deepStrictEqual(fake.attempts, ["refused", "reset"])
      yield* TestClock.adjust("1 second")
      const exit = yield* Fiber.await(fiber)
      assert.isTrue(Exit.isSuccess(exit))
      assert.deepStrictEqual(fake.attempts, ["refused", "reset", "ok"])
    }))

  it.effect("a TLS verification failure is never retried", () =>
    Effect.gen(function*() {
      const session = yield* tls
      const fake = fakeTransport(["tls-verify-fails", "ok"])
      const fiber = yield* CancelConnection.cancel(session, { retry: Schedule.spaced("1 second") }).pipe(
        Effect.provideService(Transport, fake.service),
        Effect.flip,
        Effect.forkChild
      )
      const error = yield* driveUntilDone(fiber, "1 second", 10).pipe(Effect.flatten)
      assert.strictEqual(error._tag, "CancelFailed")
      assert.isFalse(CancelError.isTransient(error))
      assert.include(error.message, "certificate verify failed")
      assert.deepStrictEqual(fake.attempts, ["tls-verify-fails"])
    }))

  for (const attempt of ["tls-reset", "tls-closed"] as const) {
    it.effect(`a ${attempt === "tls-reset" ? "reset" : "close"} in the middle of the TLS handshake is transient`, () =>
      Effect.gen(function*() {
        const session = yield* tls
        const single = yield* Effect.flip(
          CancelConnection.cancel(session).pipe(Effect.provideService(Transport, fakeTransport([attempt]).service))
        )
        assert.strictEqual(single._tag, "CancelFailed")
        assert.isTrue(CancelError.isTransient(single))
        assert.include(single.message, "SSL SYSCALL error")
        const fake = fakeTransport([attempt, "ok"])
        const fiber = yield* CancelConnection.cancel(session, { retry: Schedule.spaced("1 second") }).pipe(
          Effect.provideService(Transport, fake.service),
          Effect.forkChild
        )
        const exit = yield* driveUntilDone(fiber, "1 second", 10)
        assert.isTrue(Exit.isSuccess(exit))
        assert.deepStrictEqual(fake.attempts, [attempt, "ok"])
      }))
  }

  it.effect("a protocol violation is never retried", () =>
    Effect.gen(function*() {
      const session = yield* plain
      const fake = fakeTransport(["garbage", "ok"])
      const error = yield* Effect.flip(
        CancelConnection.cancel(session, { retry: Schedule.spaced("1 second") }).pipe(
          Effect.provideService(Transport, fake.service)
        )
      )
      assert.isFalse(CancelError.isTransient(error))
      assert.deepStrictEqual(fake.attempts, ["garbage"])
    }))

  it.effect("the schedule's end gives the last failure", () =>
    Effect.gen(function*() {
      const session = yield* plain
      const fake = fakeTransport(["refused"])
      const fiber = yield* CancelConnection.cancel(session, { retry: Schedule.recurs(2) }).pipe(
        Effect.provideService(Transport, fake.service),
        Effect.flip,
        Effect.forkChild
      )
      const error = yield* driveUntilDone(fiber).pipe(Effect.flatten)
      assert.strictEqual(error._tag, "CancelFailed")
      assert.deepStrictEqual(fake.attempts, ["refused", "refused", "refused"])
    }))

  it.effect("cancelAll passes the schedule to every cancel", () =>
    Effect.gen(function*() {
      const session = yield* plain
      const fake = fakeTransport(["refused", "refused", "ok"])
      const fiber = yield* CancelConnection.cancelAll([session, session], {
        retry: Schedule.spaced("1 second"),
        concurrency: 1
      }).pipe(Effect.provideService(Transport, fake.service), Effect.forkChild)
      const results = yield* driveUntilDone(fiber, "1 second", 10).pipe(Effect.flatten)
      assert.deepStrictEqual(results.map((r) => r._tag), ["Success", "Success"])
      assert.deepStrictEqual(fake.attempts, ["refused", "refused", "ok", "ok"])
    }))

  it.effect("blocking on a cancel connection resets between attempts and ends OK", () =>
    Effect.gen(function*() {
      const session = yield* plain
      const fake = fakeTransport(["reset", "ok"])
      const status = yield* Effect.scoped(
        Effect.gen(function*() {
          const connection = yield* CancelConnection.make(session)
          yield* connection.blocking({ retry: Schedule.recurs(3) })
          return yield* connection.status
        })
      ).pipe(Effect.provideService(Transport, fake.service))
      assert.strictEqual(status, "OK")
      assert.deepStrictEqual(fake.attempts, ["reset", "ok"])
    }))
})

describe("cancelOnInterrupt", () => {
  class Canceled extends Error {
    readonly code = "57014"
  }
  const isCanceled = (exit: Exit.Exit<unknown, unknown>) =>
    Exit.isFailure(exit) && exit.cause.reasons.some((r) => r._tag === "Fail" && r.error instanceof Canceled)

  // a query that runs until a cancel reaches it (then fails with 57014), or until `finish` completes it
  const makeQuery = Effect.gen(function*() {
    const canceled = yield* Deferred.make<void>()
    const finish = yield* Deferred.make<string>()
    const query = Effect.raceFirst(
      Deferred.await(finish),
      Effect.andThen(Deferred.await(canceled), Effect.fail(new Canceled("canceling statement due to user request")))
    )
    return { canceled, finish, query }
  })

  it.effect("transient failures are retried within the bound before the session is retired", () =>
    Effect.gen(function*() {
      const session = yield* plain
      const q = yield* makeQuery
      const fake = fakeTransport(
        ["refused", "refused", "reset", "ok"],
        () => Deferred.doneUnsafe(q.canceled, Effect.void)
      )
      const reasons: Array<string> = []
      const fiber = yield* CancelOnInterrupt.cancelOnInterrupt(q.query, {
        session,
        isCanceled,
        onUnsafe: (reason) => Effect.sync(() => reasons.push(reason._tag))
      }).pipe(Effect.provideService(Transport, fake.service), Effect.forkChild)
      yield* Effect.yieldNow
      const interrupter = yield* Fiber.interrupt(fiber).pipe(Effect.forkChild)
      yield* driveUntilDone(interrupter)
      assert.deepStrictEqual(fake.attempts, ["refused", "refused", "reset", "ok"])
      assert.deepStrictEqual(reasons, [], "the cancel got through: the session is safe")
    }))

  it.effect("a cancel that never gets through is re-sent until the bound, then the session is retired", () =>
    Effect.gen(function*() {
      const session = yield* plain
      const q = yield* makeQuery
      const fake = fakeTransport(["refused"])
      const reasons: Array<string> = []
      const fiber = yield* CancelOnInterrupt.cancelOnInterrupt(q.query, {
        session,
        isCanceled,
        cancelTimeout: "1 second",
        drainTimeout: "3 seconds",
        onUnsafe: (reason) => Effect.sync(() => reasons.push(reason._tag))
      }).pipe(Effect.provideService(Transport, fake.service), Effect.forkChild)
      yield* Effect.yieldNow
      const interrupter = yield* Fiber.interrupt(fiber).pipe(Effect.forkChild)
      yield* driveUntilDone(interrupter)
      assert.isAbove(fake.attempts.length, 3, "retried before retiring")
      assert.deepStrictEqual(reasons, ["CancelNotConfirmed"])
    }))

  it.effect("a permanent failure retires the session at once, without retries", () =>
    Effect.gen(function*() {
      const session = yield* tls
      const q = yield* makeQuery
      const fake = fakeTransport(["tls-verify-fails"])
      const reasons: Array<string> = []
      const fiber = yield* CancelOnInterrupt.cancelOnInterrupt(q.query, {
        session,
        isCanceled,
        onUnsafe: (reason) =>
          Effect.andThen(
            Effect.sync(() => reasons.push(reason._tag)),
            // retiring the session ends the query here (a real backend would keep running it)
            Deferred.succeed(q.finish, "ended by the retirement")
          )
      }).pipe(Effect.provideService(Transport, fake.service), Effect.forkChild)
      yield* Effect.yieldNow
      const interrupter = yield* Fiber.interrupt(fiber).pipe(Effect.forkChild)
      yield* driveUntilDone(interrupter)
      assert.deepStrictEqual(fake.attempts, ["tls-verify-fails"])
      assert.deepStrictEqual(reasons, ["CancelNotConfirmed"])
    }))

  for (const retireUnlessCanceled of [false, true]) {
    it.effect(`a query that completes before the cancel reaches it (retireUnlessCanceled: ${retireUnlessCanceled})`, () =>
      Effect.gen(function*() {
        const session = yield* plain
        const q = yield* makeQuery
        // the cancel is dispatched, but the query completes instead of being cancelled (a pooler forwards it late)
        const fake = fakeTransport(["ok"], () => Deferred.doneUnsafe(q.finish, Effect.succeed("completed")))
        const reasons: Array<string> = []
        const notCanceled: Array<boolean> = []
        const fiber = yield* CancelOnInterrupt.cancelOnInterrupt(q.query, {
          session,
          isCanceled,
          retireUnlessCanceled,
          onUnsafe: (reason) => Effect.sync(() => reasons.push(reason._tag)),
          onNotCanceled: (exit) => Effect.sync(() => notCanceled.push(Exit.isSuccess(exit)))
        }).pipe(Effect.provideService(Transport, fake.service), Effect.forkChild)
        yield* Effect.yieldNow
        const interrupter = yield* Fiber.interrupt(fiber).pipe(Effect.forkChild)
        yield* driveUntilDone(interrupter)
        assert.deepStrictEqual(reasons, retireUnlessCanceled ? ["NotCanceled"] : [])
        assert.deepStrictEqual(notCanceled, retireUnlessCanceled ? [] : [true])
      }))
  }

  it.effect("a query that ends cancelled keeps the session, also with retireUnlessCanceled", () =>
    Effect.gen(function*() {
      const session = yield* plain
      const q = yield* makeQuery
      const fake = fakeTransport(["ok"], () => Deferred.doneUnsafe(q.canceled, Effect.void))
      const reasons: Array<string> = []
      const fiber = yield* CancelOnInterrupt.cancelOnInterrupt(q.query, {
        session,
        isCanceled,
        retireUnlessCanceled: true,
        onUnsafe: (reason) => Effect.sync(() => reasons.push(reason._tag))
      }).pipe(Effect.provideService(Transport, fake.service), Effect.forkChild)
      yield* Effect.yieldNow
      const interrupter = yield* Fiber.interrupt(fiber).pipe(Effect.forkChild)
      yield* driveUntilDone(interrupter)
      assert.deepStrictEqual(reasons, [])
      assert.deepStrictEqual(fake.attempts, ["ok"])
    }))

  it.effect("a withdrawn query sends no cancel", () =>
    Effect.gen(function*() {
      const session = yield* plain
      const q = yield* makeQuery
      const fake = fakeTransport(["ok"])
      const fiber = yield* CancelOnInterrupt.cancelOnInterrupt(q.query, { session, locate: () => "withdrawn" }).pipe(
        Effect.provideService(Transport, fake.service),
        Effect.forkChild
      )
      yield* Effect.yieldNow
      yield* Fiber.interrupt(fiber)
      assert.deepStrictEqual(fake.attempts, [])
    }))
})
