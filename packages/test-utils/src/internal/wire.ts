/**
 * Byte-level helpers shared by `TestSession` (client side) and `FakePostmaster` (server side): a pull-based reader
 * over a Node stream, and encoders/decoders for the PostgreSQL frontend/backend messages the test utilities use.
 *
 * @since 0.1.0
 */
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"
import type * as Stream from "node:stream"

/** @internal */
export const CANCEL_REQUEST_CODE = 80877102
/** @internal */
export const SSL_REQUEST_CODE = 80877103
/** @internal */
export const GSSENC_REQUEST_CODE = 80877104
/** @internal */
export const PROTOCOL_3_0 = 196608
/** @internal */
export const PROTOCOL_3_2 = 196610
/** @internal */
export const MAX_STARTUP_PACKET_LENGTH = 10000

/**
 * The stream ended (EOF, close or error) before the requested bytes arrived.
 *
 * @internal
 */
export class WireClosed extends Data.TaggedError("WireClosed")<{
  readonly message: string
  readonly buffered: number
}> {}

/**
 * Accumulates the bytes of a stream and hands them out on demand (`read(n)`), so protocol code can be written as a
 * straight sequence of reads. The reader can be detached (before a TLS upgrade) and re-attached to another stream.
 *
 * @internal
 */
export class StreamReader {
  private buffer: Buffer = Buffer.alloc(0)
  private ended: string | undefined = undefined
  private waiter: (() => boolean) | undefined = undefined
  private stream: Stream.Duplex | undefined = undefined
  /** Every byte ever received through this reader, per attached stream: used by recorders. */
  readonly onBytes: Array<(bytes: Buffer) => void> = []

  private readonly onData = (chunk: Buffer | string) => {
    const bytes = typeof chunk === "string" ? Buffer.from(chunk) : chunk
    for (const f of this.onBytes) f(bytes)
    this.buffer = this.buffer.length === 0 ? bytes : Buffer.concat([this.buffer, bytes])
    this.wake()
  }
  private readonly onEnd = () => {
    this.ended ??= "connection closed by peer (EOF)"
    this.wake()
  }
  private readonly onClose = () => {
    this.ended ??= "connection closed"
    this.wake()
  }
  private readonly onError = (error: Error) => {
    this.ended ??= `connection error: ${error.message}`
    this.wake()
  }

  attach(stream: Stream.Duplex): void {
    this.stream = stream
    this.ended = undefined
    stream.on("data", this.onData)
    stream.on("end", this.onEnd)
    stream.on("close", this.onClose)
    stream.on("error", this.onError)
  }

  /** Stops listening and returns the bytes received but not consumed yet. */
  detach(): Buffer {
    const stream = this.stream
    if (stream !== undefined) {
      stream.off("data", this.onData)
      stream.off("end", this.onEnd)
      stream.off("close", this.onClose)
      stream.off("error", this.onError)
    }
    this.stream = undefined
    const rest = this.buffer
    this.buffer = Buffer.alloc(0)
    return rest
  }

  get available(): number {
    return this.buffer.length
  }

  get closedReason(): string | undefined {
    return this.ended
  }

  private wake(): void {
    const waiter = this.waiter
    if (waiter === undefined) return
    // clear first: resuming may synchronously register the next waiter
    this.waiter = undefined
    if (!waiter()) this.waiter ??= waiter
  }

  private take(n: number): Buffer {
    const out = this.buffer.subarray(0, n)
    this.buffer = this.buffer.subarray(n)
    return out
  }

  /** Reads exactly `n` bytes. */
  read(n: number): Effect.Effect<Buffer, WireClosed> {
    return Effect.callback<Buffer, WireClosed>((resume) => {
      const attempt = (): boolean => {
        if (this.buffer.length >= n) {
          resume(Effect.succeed(Buffer.from(this.take(n))))
          return true
        }
        if (this.ended !== undefined) {
          resume(Effect.fail(new WireClosed({ message: this.ended, buffered: this.buffer.length })))
          return true
        }
        return false
      }
      if (!attempt()) this.waiter = attempt
      return Effect.sync(() => {
        if (this.waiter === attempt) this.waiter = undefined
      })
    })
  }

  /** Waits until the peer closes the stream, discarding whatever arrives. */
  readonly awaitEnd: Effect.Effect<string> = Effect.callback<string>((resume) => {
    const attempt = (): boolean => {
      this.buffer = Buffer.alloc(0)
      if (this.ended !== undefined) {
        resume(Effect.succeed(this.ended))
        return true
      }
      return false
    }
    if (!attempt()) this.waiter = attempt
    return Effect.sync(() => {
      if (this.waiter === attempt) this.waiter = undefined
    })
  })

  /** Reads one backend/frontend message: type byte, Int32 length (including itself), body. */
  get readMessage(): Effect.Effect<{ readonly type: string; readonly body: Buffer }, WireClosed> {
    return Effect.flatMap(this.read(5), (header) => {
      const length = header.readInt32BE(1)
      const type = String.fromCharCode(header[0]!)
      return length > 4
        ? Effect.map(this.read(length - 4), (body) => ({ type, body }))
        : Effect.succeed({ type, body: Buffer.alloc(0) })
    })
  }
}

/** @internal */
export const int32 = (n: number): Buffer => {
  const b = Buffer.alloc(4)
  b.writeInt32BE(n)
  return b
}

/** @internal */
export const cstring = (s: string): Buffer => Buffer.concat([Buffer.from(s, "utf8"), Buffer.from([0])])

/** A frontend/backend message with a type byte. @internal */
export const message = (type: string, body: Uint8Array = Buffer.alloc(0)): Buffer =>
  Buffer.concat([Buffer.from(type, "latin1"), int32(body.length + 4), body])

/** A startup-phase packet (no type byte). @internal */
export const startupPacket = (body: Uint8Array): Buffer => Buffer.concat([int32(body.length + 4), body])

/** @internal */
export const sslRequest = (): Buffer => startupPacket(int32(SSL_REQUEST_CODE))

/** @internal */
export const gssEncRequest = (): Buffer => startupPacket(int32(GSSENC_REQUEST_CODE))

/** @internal */
export const cancelRequest = (pid: number, secret: Uint8Array): Buffer =>
  startupPacket(Buffer.concat([int32(CANCEL_REQUEST_CODE), int32(pid), secret]))

/** @internal */
export const startupMessage = (protocol: number, params: Record<string, string>): Buffer =>
  startupPacket(
    Buffer.concat([
      int32(protocol),
      ...Object.entries(params).flatMap(([k, v]) => [cstring(k), cstring(v)]),
      Buffer.from([0])
    ])
  )

/** Splits a buffer of NUL-terminated strings. @internal */
export const readCStrings = (body: Buffer): Array<string> => {
  const out: Array<string> = []
  let start = 0
  for (let i = 0; i < body.length; i++) {
    if (body[i] === 0) {
      out.push(body.toString("utf8", start, i))
      start = i + 1
    }
  }
  return out
}

/**
 * Fields of an ErrorResponse / NoticeResponse, keyed by the field type letter (S, V, C, M, D, H, …).
 *
 * @internal
 */
export const parseErrorFields = (body: Buffer): Record<string, string> => {
  const fields: Record<string, string> = {}
  let i = 0
  while (i < body.length && body[i] !== 0) {
    const code = String.fromCharCode(body[i]!)
    const end = body.indexOf(0, i + 1)
    if (end === -1) break
    fields[code] = body.toString("utf8", i + 1, end)
    i = end + 1
  }
  return fields
}

/** Encodes an ErrorResponse ('E') message. @internal */
export const errorResponse = (fields: {
  readonly severity?: string | undefined
  readonly code: string
  readonly message: string
}): Buffer => {
  const severity = fields.severity ?? "FATAL"
  return message(
    "E",
    Buffer.concat([
      Buffer.from("S"),
      cstring(severity),
      Buffer.from("V"),
      cstring(severity),
      Buffer.from("C"),
      cstring(fields.code),
      Buffer.from("M"),
      cstring(fields.message),
      Buffer.from([0])
    ])
  )
}

/**
 * A startup-phase packet as a server sees it.
 *
 * @internal
 */
export type StartupPacket =
  | { readonly kind: "sslRequest" }
  | { readonly kind: "gssEncRequest" }
  | { readonly kind: "cancelRequest"; readonly pid: number; readonly key: Uint8Array }
  | { readonly kind: "startup"; readonly protocol: number; readonly parameters: Record<string, string> }
  | { readonly kind: "unknown"; readonly code: number; readonly bytes: Uint8Array }
  | { readonly kind: "invalid"; readonly length: number }

/** Decodes the body (after the length word) of a startup-phase packet. @internal */
export const decodeStartupPacket = (body: Buffer): StartupPacket => {
  if (body.length < 4) return { kind: "invalid", length: body.length + 4 }
  const code = body.readInt32BE(0)
  switch (code) {
    case SSL_REQUEST_CODE:
      return { kind: "sslRequest" }
    case GSSENC_REQUEST_CODE:
      return { kind: "gssEncRequest" }
    case CANCEL_REQUEST_CODE:
      if (body.length < 8) return { kind: "invalid", length: body.length + 4 }
      return { kind: "cancelRequest", pid: body.readInt32BE(4), key: new Uint8Array(body.subarray(8)) }
    default: {
      if (code >>> 16 === 3) {
        const strings = readCStrings(body.subarray(4))
        const parameters: Record<string, string> = {}
        for (let i = 0; i + 1 < strings.length; i += 2) {
          if (strings[i] === "") break
          parameters[strings[i]!] = strings[i + 1]!
        }
        return { kind: "startup", protocol: code, parameters }
      }
      return { kind: "unknown", code, bytes: new Uint8Array(body) }
    }
  }
}
