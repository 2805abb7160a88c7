/**
 * A scripted in-memory Transport playing the server of cancel connections, for the core tests.
 */
import { Transport } from "@pqcancel/core/Transport"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import { TestClock } from "effect/testing"

/** What the fake server does with one cancel connection; `held`: the request is delivered, the close never comes */
export type Attempt =
  | "ok"
  | "refused"
  | "reset"
  | "tls-verify-fails"
  | "tls-reset"
  | "tls-closed"
  | "garbage"
  | "held"

/** A scripted in-memory Transport: each cancel connection takes the next attempt of `script` (then the last) */
export const fakeTransport = (script: ReadonlyArray<Attempt>, onDispatched?: () => void) => {
  const attempts: Array<Attempt> = []
  const service = Transport.of({
    gssCredentialsAvailable: () => Effect.succeed(false),
    connect: (_request, sink) => {
      const attempt = script[Math.min(attempts.length, script.length - 1)]!
      attempts.push(attempt)
      let closed = false
      const emit = (event: Parameters<typeof sink>[0]) => {
        if (!closed) queueMicrotask(() => !closed && sink(event))
      }
      if (attempt === "refused") {
        emit({ _tag: "ConnectFailed", message: "Connection refused", errno: 111, code: "ECONNREFUSED" })
      } else {
        emit({ _tag: "Connected" })
      }
      return {
        fd: () => -1,
        write: (bytes) => {
          // an SSLRequest is 8 bytes with code 80877103; a CancelRequest is 16 bytes (3.0 key)
          if (bytes.length === 8) {
            return emit({ _tag: "Data", bytes: Uint8Array.of(0x53) })
          }
          if (attempt === "reset") return emit({ _tag: "IoError", code: "ECONNRESET", message: "read ECONNRESET" })
          if (attempt === "garbage") return emit({ _tag: "Data", bytes: Uint8Array.of(0x58) })
          onDispatched?.()
          if (attempt !== "held") emit({ _tag: "Eof" })
        },
        startTls: () =>
          emit(
            attempt === "tls-reset"
              ? { _tag: "TlsFailed", message: "SSL SYSCALL error: Connection reset by peer", code: "ECONNRESET" }
              : attempt === "tls-closed"
              ? { _tag: "TlsFailed", message: "SSL SYSCALL error: EOF detected", code: "EOF" }
              : attempt === "ok"
              ? { _tag: "TlsEstablished", alpn: "postgresql" }
              : { _tag: "TlsFailed", message: "SSL error: certificate verify failed", code: "ERR_SSL_X" }
          ),
        startGss: () => emit({ _tag: "GssFailed", message: "no GSS" }),
        close: () => {
          closed = true
        }
      }
    }
  })
  return { service, attempts }
}

/** Advances the TestClock in small steps until `fiber` is done (bounded), then its exit */
export const driveUntilDone = <A, E>(fiber: Fiber.Fiber<A, E>, step: Duration.Input = "10 millis", max = 2000) =>
  Effect.gen(function*() {
    for (let i = 0; i < max && fiber.pollUnsafe() === undefined; i++) {
      yield* TestClock.adjust(step)
      yield* Effect.yieldNow
    }
    return yield* Fiber.await(fiber)
  })
