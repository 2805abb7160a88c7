/**
 * The driver of CancelConnection against a scripted fake Transport (no network): a transport may report events
 * synchronously from inside `connect` or `write` (re-entrant), the one-shot `cancel` closes its socket on success,
 * failure, timeout and interruption, and `start` + `poll` apply one event per poll.
 */
import { assert, describe, it } from "@effect/vitest"
import { CancelConnection, CancelError, CancelKey, ConnectionOptions, LegacyCancel } from "@pqcancel/core"
import { Transport } from "@pqcancel/core/Transport"
import type * as TransportNs from "@pqcancel/core/Transport"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Result from "effect/Result"

interface Script {
  /** what the fake reports on connect; undefined: nothing (a server that never answers) */
  readonly onConnect?: TransportNs.TransportEvent | undefined
  /** what the fake reports when the CancelRequest is written */
  readonly onWrite?: TransportNs.TransportEvent | undefined
  /** report synchronously, from inside connect / write (true), or on a later macrotask (false) */
  readonly sync: boolean
  /** a broken transport: this method throws instead of reporting an event */
  readonly throws?: "connect" | "write" | undefined
}

const fake = (script: Script) => {
  const log = { opened: 0, closed: 0, written: 0 }
  const service = Transport.of({
    connect: (_request, sink) => {
      log.opened++
      if (script.throws === "connect") throw new Error("boom")
      let closed = false
      const report = (event: TransportNs.TransportEvent | undefined) => {
        if (event === undefined) return
        if (script.sync) sink(event)
        else setTimeout(() => closed || sink(event), 0)
      }
      const connection: TransportNs.Connection = {
        fd: () => closed ? -1 : 42,
        write: () => {
          if (script.throws === "write") throw new Error("boom")
          log.written++
          report(script.onWrite)
        },
        startTls: () => sink({ _tag: "TlsFailed", message: "no TLS here" }),
        startGss: () => sink({ _tag: "GssFailed", message: "no GSS here" }),
        close: () => {
          if (!closed) log.closed++
          closed = true
        }
      }
      report(script.onConnect)
      return connection
    },
    gssCredentialsAvailable: () => Effect.succeed(false)
  })
  return { service, log }
}

const options = Result.getOrThrow(ConnectionOptions.fromStringResult("host=127.0.0.1 port=5432 sslmode=disable", {}))
const session: CancelConnection.SessionInfo = {
  options,
  host: options.hosts[0]!,
  address: { _tag: "Tcp", address: "127.0.0.1", port: 5432, family: 4 },
  key: CancelKey.unsafeMake({ pid: 7, secret: new Uint8Array([1, 2, 3, 4]), protocolVersion: "3.0" })
}

const connected: TransportNs.TransportEvent = { _tag: "Connected" }
const eof: TransportNs.TransportEvent = { _tag: "Eof" }

describe("CancelConnection with a fake transport", () => {
  for (const sync of [true, false]) {
    const how = sync ? "synchronously" : "asynchronously"
    it.live(`cancel: a transport that reports ${how} — OK, one socket, closed`, () =>
      Effect.gen(function*() {
        const { log, service } = fake({ onConnect: connected, onWrite: eof, sync })
        yield* CancelConnection.cancel(session).pipe(Effect.provideService(Transport, service))
        assert.deepStrictEqual(log, { opened: 1, closed: 1, written: 1 })
      }))

    it.live(`start + poll: a transport that reports ${how} — one event per poll, then OK`, () =>
      Effect.gen(function*() {
        const { log, service } = fake({ onConnect: connected, onWrite: eof, sync })
        const polled = yield* Effect.scoped(Effect.gen(function*() {
          const connection = yield* CancelConnection.make(session)
          yield* connection.start
          const seen: Array<string> = []
          let status = yield* connection.poll
          seen.push(status)
          while (status === "READING" || status === "WRITING") {
            status = yield* connection.poll
            seen.push(status)
          }
          return seen
        })).pipe(Effect.provideService(Transport, service))
        // Connected ⇒ MADE (WRITING), the next poll sends ⇒ AWAITING_RESPONSE (READING), Eof ⇒ OK
        assert.deepStrictEqual(polled, ["WRITING", "READING", "OK"])
        assert.deepStrictEqual(log, { opened: 1, closed: 1, written: 1 })
      }))
  }

  it.live("cancel: a refused connection fails with libpq's text and closes the socket", () =>
    Effect.gen(function*() {
      const { log, service } = fake({
        onConnect: { _tag: "ConnectFailed", message: "Connection refused", errno: 111 },
        sync: true
      })
      const error = yield* Effect.flip(CancelConnection.cancel(session).pipe(Effect.provideService(Transport, service)))
      assert.strictEqual(error._tag, "CancelFailed")
      assert.include(error.message, "Connection refused")
      assert.deepStrictEqual(log, { opened: 1, closed: 1, written: 0 })
    }))

  for (const throws of ["connect", "write"] as const) {
    for (const sync of [true, false]) {
      it.live(`cancel: a transport whose ${throws} throws (${sync ? "sync" : "async"}) fails at once, never hangs`, () =>
        Effect.gen(function*() {
          const { log, service } = fake({ onConnect: connected, sync, throws })
          // no timeout: a cancel that waited for an event that never comes would hang the test
          const error = yield* Effect.flip(
            CancelConnection.cancel(session).pipe(Effect.provideService(Transport, service))
          )
          assert.strictEqual(error._tag, "CancelFailed")
          assert.strictEqual(error.message, "could not send cancel packet: boom")
          assert.isFalse(CancelError.isTransient(error))
          assert.strictEqual(log.written, 0)
          assert.strictEqual(log.closed, throws === "write" ? 1 : 0) // a connect that threw opened no socket
        }))
    }
  }

  it.live("start + poll: a transport that throws makes the connection BAD with the error's text", () =>
    Effect.gen(function*() {
      const { service } = fake({ onConnect: connected, sync: false, throws: "write" })
      yield* Effect.scoped(Effect.gen(function*() {
        const connection = yield* CancelConnection.make(session)
        yield* connection.start
        let polling = yield* connection.poll
        for (let i = 0; i < 10 && (polling === "READING" || polling === "WRITING"); i++) {
          polling = yield* connection.poll
        }
        assert.strictEqual(polling, "FAILED")
        assert.strictEqual(yield* connection.status, "BAD")
        assert.strictEqual(yield* connection.errorMessage, "could not send cancel packet: boom\n")
      })).pipe(Effect.provideService(Transport, service))
    }))

  it.live("legacy PQcancel: a CancelRequest that could not be written is not reported as sent", () =>
    Effect.gen(function*() {
      const { service } = fake({ onConnect: connected, sync: true, throws: "write" })
      const result = yield* LegacyCancel.cancel(LegacyCancel.getCancel(session)).pipe(
        Effect.provideService(Transport, service)
      )
      assert.isFalse(result.ok)
    }))

  it.live("cancel: a server that never closes ends with timeout expired; the socket is closed", () =>
    Effect.gen(function*() {
      const { log, service } = fake({ onConnect: connected, sync: false })
      const error = yield* Effect.flip(
        CancelConnection.cancel(session, { timeout: "20 millis" }).pipe(Effect.provideService(Transport, service))
      )
      assert.strictEqual(error._tag, "CancelTimeout")
      assert.isTrue(error.message.endsWith("timeout expired"), error.message)
      assert.deepStrictEqual(log, { opened: 1, closed: 1, written: 1 })
    }))

  it.live("cancel: interrupted while waiting for the server, the socket is closed", () =>
    Effect.gen(function*() {
      const { log, service } = fake({ onConnect: connected, sync: true })
      const fiber = yield* CancelConnection.cancel(session).pipe(
        Effect.provideService(Transport, service),
        Effect.forkChild
      )
      // the CancelRequest is written synchronously once connected: wait for it, bounded
      for (let i = 0; i < 1000 && log.written === 0; i++) yield* Effect.yieldNow
      assert.strictEqual(log.written, 1)
      yield* Fiber.interrupt(fiber)
      assert.deepStrictEqual(log, { opened: 1, closed: 1, written: 1 })
    }))

  it.live("blocking on a connection: interrupted, the socket stays with the connection until reset", () =>
    Effect.gen(function*() {
      const { log, service } = fake({ onConnect: connected, sync: true })
      yield* Effect.scoped(Effect.gen(function*() {
        const connection = yield* CancelConnection.make(session)
        const fiber = yield* connection.blocking().pipe(Effect.forkChild)
        for (let i = 0; i < 1000 && log.written === 0; i++) yield* Effect.yieldNow
        yield* Fiber.interrupt(fiber)
        assert.strictEqual(yield* connection.status, "AWAITING_RESPONSE")
        assert.strictEqual(log.closed, 0)
        yield* connection.reset
        assert.strictEqual(yield* connection.status, "ALLOCATED")
        assert.strictEqual(log.closed, 1)
      })).pipe(Effect.provideService(Transport, service))
    }))
})
