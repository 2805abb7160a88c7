/**
 * A scriptable fake postmaster for the faults a real server won't produce on demand: an `E` instead of `S`/`N`,
 * garbage instead of a ServerHello, a reset in the middle of the exchange, a server that never answers, …
 *
 * It listens on 127.0.0.1 (port 0) and optionally on a Unix socket `<dir>/.s.PGSQL.<port>`. Each accepted
 * connection runs a list of {@link Step}s; when the steps run out the connection is closed (FIN). Everything a
 * connection receives is recorded, decoded (kind of packet; for a CancelRequest the pid and key bytes; whether it
 * arrived over TLS) and raw (`wire`: every byte as seen on the socket, ciphertext included), so a test can assert
 * e.g. that the cancel key never crossed the wire in plaintext.
 *
 * Closing the Scope closes the listeners, destroys every socket and interrupts the scripts.
 *
 * @example
 * ```ts
 * import * as Effect from "effect/Effect"
 * import { FakePostmaster } from "@pqcancel/test-utils"
 *
 * const program = Effect.gen(function*() {
 *   const fake = yield* FakePostmaster.make({
 *     script: [{ expect: "sslRequest" }, { reply: "S" }, { tlsUpgrade: FakePostmaster.serverTls() }, { expect: "cancelRequest" }]
 *   })
 *   // ... point the code under test at 127.0.0.1:fake.port ...
 *   const record = yield* fake.awaitFinished(0)
 *   // record.packets[1] is { kind: "cancelRequest", pid, key, tls: true }
 * })
 * ```
 *
 * @since 0.1.0
 */
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"
import * as FiberSet from "effect/FiberSet"
import * as Schema from "effect/Schema"
import type * as Scope from "effect/Scope"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Os from "node:os"
import * as Path from "node:path"
import type * as Stream from "node:stream"
import * as Tls from "node:tls"
import * as Url from "node:url"
import { replayDuplex } from "./internal/replayDuplex.ts"
import { Signal } from "./internal/signal.ts"
import * as Wire from "./internal/wire.ts"

// ---------------------------------------------------------------------------------------------------------------------
// models
// ---------------------------------------------------------------------------------------------------------------------

/**
 * What the next startup-phase packet must be. `directTls` is a TLS ClientHello (first byte 0x16) instead of a
 * packet; `startup` is a StartupMessage; `any` accepts anything.
 *
 * @category models
 * @since 0.1.0
 */
export type Expectation = "sslRequest" | "gssEncRequest" | "cancelRequest" | "startup" | "directTls" | "any"

/**
 * Server-side TLS for `tlsUpgrade`.
 *
 * @category models
 * @since 0.1.0
 */
export interface ServerTls {
  readonly cert: string
  readonly key: string
  /** Advertise ALPN `postgresql` (default true). */
  readonly alpn?: boolean | undefined
  /** Close the connection after the handshake when ALPN `postgresql` was not negotiated (like PG for direct TLS). */
  readonly requireAlpn?: boolean | undefined
}

/**
 * One step of a connection script.
 *
 * - `{ expect }`: read one startup-phase packet (or detect a ClientHello) and record it; a mismatch ends the
 *   connection (destroyed) with outcome `mismatch`.
 * - `{ reply }`: write bytes (a string is written as latin1, e.g. `"S"`, `"N"`, `"G"`).
 * - `{ replyThenClose }`: write, then FIN.
 * - `{ tlsUpgrade }`: server-side TLS handshake on the same socket (after `S`, or after a `directTls` ClientHello).
 * - `{ tlsFail: "garbage" | "close" | "reset" }`: instead of a handshake, answer garbage (then FIN), FIN, or RST.
 * - `"awaitEof"`: read (and record) until the client closes.
 * - `"close"`: FIN. `"reset"`: RST. `"hang"`: never answer and never close; keeps recording until the client closes
 *   or the Scope ends.
 *
 * @category models
 * @since 0.1.0
 */
export type Step =
  | { readonly expect: Expectation }
  | { readonly reply: Uint8Array | string }
  | { readonly replyThenClose: Uint8Array | string }
  | { readonly tlsUpgrade: ServerTls }
  | { readonly tlsFail: "garbage" | "close" | "reset" }
  | "close"
  | "reset"
  | "hang"
  | "awaitEof"

/**
 * A packet as received (decoded), with whether it arrived over TLS.
 *
 * @category models
 * @since 0.1.0
 */
export type Packet = (Wire.StartupPacket | { readonly kind: "tlsClientHello" }) & { readonly tls: boolean }

/**
 * How a connection's script ended.
 *
 * - `completed`: all steps ran (then FIN, or the script's own close/reset).
 * - `peerClosed`: the client closed/reset while the script was reading (or hanging).
 * - `mismatch`: an `expect` step saw another packet.
 * - `tlsError`: the server-side handshake failed (or ALPN was required and missing).
 * - `interrupted`: the Scope closed first.
 *
 * @category models
 * @since 0.1.0
 */
export type Outcome = "completed" | "peerClosed" | "mismatch" | "tlsError" | "interrupted"

/**
 * What one connection received.
 *
 * @category models
 * @since 0.1.0
 */
export interface ConnectionRecord {
  readonly index: number
  readonly transport: "tcp" | "unix"
  readonly packets: ReadonlyArray<Packet>
  /** Every byte received on the socket, in order (ciphertext after a TLS upgrade). */
  readonly wire: Uint8Array
  /** The bytes received before TLS was established (all of them when TLS never was). */
  readonly plaintext: Uint8Array
  /** Set once TLS is established; `servername` is the SNI the client sent (false when none). */
  readonly tls:
    | { readonly protocol: string | null; readonly alpn: string | false; readonly servername: string | false }
    | undefined
  readonly finished: boolean
  readonly outcome: Outcome | undefined
  readonly detail: string
}

/**
 * @category models
 * @since 0.1.0
 */
export interface Options {
  /** The steps of every connection, or a function of the connection index (0-based). */
  readonly script: ReadonlyArray<Step> | ((index: number) => ReadonlyArray<Step>)
  /** Also listen on a Unix socket `<socketDir>/.s.PGSQL.<port>`. */
  readonly unix?: boolean | undefined
}

/**
 * A running fake postmaster.
 *
 * @category models
 * @since 0.1.0
 */
export interface FakePostmaster {
  readonly host: "127.0.0.1"
  readonly port: number
  /** Directory of the Unix socket (libpq `host=`), when `unix: true`. */
  readonly socketDir: string | undefined
  readonly socketPath: string | undefined
  /** Snapshot of all connection records so far. */
  readonly received: Effect.Effect<ReadonlyArray<ConnectionRecord>>
  /** Number of connections accepted so far. */
  readonly connections: Effect.Effect<number>
  /** Waits until connection `index` (0-based) has been accepted. */
  readonly awaitConnection: (index: number) => Effect.Effect<ConnectionRecord>
  /** Waits until connection `index` (0-based) has finished its script. */
  readonly awaitFinished: (index: number) => Effect.Effect<ConnectionRecord>
}

/**
 * The fake could not listen.
 *
 * @category errors
 * @since 0.1.0
 */
export class FakePostmasterError
  extends Schema.TaggedError<FakePostmasterError>("@pqcancel/test-utils/FakePostmaster/FakePostmasterError")(
    "FakePostmasterError",
    {
      message: Schema.String
    }
  )
{}

// ---------------------------------------------------------------------------------------------------------------------
// message helpers
// ---------------------------------------------------------------------------------------------------------------------

/**
 * An ErrorResponse packet (severity defaults to FATAL).
 *
 * @category constructors
 * @since 0.1.0
 */
export const errorPacket = (fields: {
  readonly code: string
  readonly message: string
  readonly severity?: string | undefined
}): Uint8Array => Wire.errorResponse(fields)

/**
 * A backend message: type byte, Int32 length, body.
 *
 * @category constructors
 * @since 0.1.0
 */
export const backendMessage = (type: string, body?: Uint8Array): Uint8Array => Wire.message(type, body)

/**
 * BackendKeyData (`K`) with the given pid and key bytes.
 *
 * @category constructors
 * @since 0.1.0
 */
export const backendKeyData = (pid: number, key: Uint8Array): Uint8Array =>
  Wire.message("K", Buffer.concat([Wire.int32(pid), key]))

/**
 * The fixture server certificate and key (CN localhost, signed by `fixtures/ca.crt`).
 *
 * @category constructors
 * @since 0.1.0
 */
export const serverTls = (options?: {
  readonly alpn?: boolean | undefined
  readonly requireAlpn?: boolean | undefined
  /**
   * present a certificate for the same names signed by another CA (`impostor.crt`, issued by `wrong-ca.crt`): an
   * impostor the client must reject
   */
  readonly impostor?: boolean | undefined
}): ServerTls => {
  const fixtures = new URL("../fixtures/", import.meta.url)
  const name = options?.impostor === true ? "impostor" : "server"
  return {
    cert: Fs.readFileSync(Url.fileURLToPath(new URL(`${name}.crt`, fixtures)), "utf8"),
    key: Fs.readFileSync(Url.fileURLToPath(new URL(`${name}.key`, fixtures)), "utf8"),
    alpn: options?.alpn,
    requireAlpn: options?.requireAlpn
  }
}

// ---------------------------------------------------------------------------------------------------------------------
// connection handling
// ---------------------------------------------------------------------------------------------------------------------

interface MutableRecord {
  index: number
  transport: "tcp" | "unix"
  packets: Array<Packet>
  wire: Array<Buffer>
  wireLength: number
  /** Set when TLS starts: the number of wire bytes that were not TLS. */
  plaintextLength: number | undefined
  tls:
    | { readonly protocol: string | null; readonly alpn: string | false; readonly servername: string | false }
    | undefined
  finished: boolean
  outcome: Outcome | undefined
  detail: string
}

const snapshot = (r: MutableRecord): ConnectionRecord => {
  const wire = new Uint8Array(Buffer.concat(r.wire))
  return {
    index: r.index,
    transport: r.transport,
    packets: [...r.packets],
    wire,
    plaintext: wire.slice(0, r.plaintextLength ?? wire.length),
    tls: r.tls,
    finished: r.finished,
    outcome: r.outcome,
    detail: r.detail
  }
}

class Ended extends Data.TaggedError("Ended")<{ readonly outcome: Outcome; readonly detail: string }> {}

const handle = (socket: Net.Socket, r: MutableRecord, steps: ReadonlyArray<Step>, signal: Signal) => {
  const reader = new Wire.StreamReader()
  let stream: Stream.Duplex = socket
  let secure: Tls.TLSSocket | undefined = undefined
  let pendingClientHello: Buffer | undefined = undefined
  const recordRaw = (b: Buffer) => {
    r.wire.push(b)
    r.wireLength += b.length
    signal.notify()
  }
  reader.onBytes.push(recordRaw)
  reader.attach(socket)
  socket.on("error", () => {})

  const readClosed = (e: Wire.WireClosed) => new Ended({ outcome: "peerClosed", detail: e.message })

  const readPacket = Effect.gen(function*() {
    const first = yield* reader.read(1)
    if (first[0] === 0x16 && secure === undefined) {
      pendingClientHello = first
      const packet: Packet = { kind: "tlsClientHello", tls: false }
      return packet
    }
    const rest = yield* reader.read(3)
    const length = Buffer.concat([first, rest]).readInt32BE(0)
    if (length < 8 || length > Wire.MAX_STARTUP_PACKET_LENGTH) {
      const packet: Packet = { kind: "invalid", length, tls: secure !== undefined }
      return packet
    }
    const body = yield* reader.read(length - 4)
    const packet: Packet = { ...Wire.decodeStartupPacket(body), tls: secure !== undefined }
    return packet
  }).pipe(Effect.mapError(readClosed))

  const write = (bytes: Uint8Array | string) =>
    Effect.sync(() => {
      stream.write(typeof bytes === "string" ? Buffer.from(bytes, "latin1") : bytes)
    })

  const close = Effect.callback<void>((resume) => {
    if (stream.writableEnded || stream.destroyed) {
      resume(Effect.void)
      return
    }
    stream.end(() => resume(Effect.void))
  })

  const reset = Effect.sync(() => {
    if (typeof socket.resetAndDestroy === "function" && r.transport === "tcp") socket.resetAndDestroy()
    else socket.destroy()
  })

  const recordUntilEof = Effect.gen(function*() {
    while (true) {
      const packet = yield* readPacket
      r.packets.push(packet)
      signal.notify()
    }
  })

  const upgrade = (options: ServerTls) =>
    Effect.callback<void, Ended>((resume) => {
      const prefix = Buffer.concat([pendingClientHello ?? Buffer.alloc(0), reader.detach()])
      pendingClientHello = undefined
      r.plaintextLength = r.wireLength - prefix.length
      reader.onBytes.length = 0
      const duplex = replayDuplex(socket, prefix, recordRaw)
      const alpn = options.alpn ?? true
      const tlsOptions: Tls.TLSSocketOptions = { isServer: true, cert: options.cert, key: options.key }
      if (alpn) tlsOptions.ALPNProtocols = ["postgresql"]
      const tls = new Tls.TLSSocket(duplex, tlsOptions)
      const onError = (error: Error) => resume(Effect.fail(new Ended({ outcome: "tlsError", detail: error.message })))
      tls.once("error", onError)
      // the client may hang up instead of sending a ClientHello: end the step instead of waiting forever
      tls.once("close", () =>
        resume(
          Effect.fail(new Ended({ outcome: "peerClosed", detail: "closed before the TLS handshake completed" }))
        ))
      tls.once("secure", () => {
        tls.off("error", onError)
        tls.on("error", () => {})
        secure = tls
        stream = tls
        const servername = (tls as Tls.TLSSocket & { readonly servername?: string | false }).servername
        r.tls = {
          protocol: tls.getProtocol(),
          alpn: tls.alpnProtocol ?? false,
          servername: typeof servername === "string" ? servername : false
        }
        signal.notify()
        if (options.requireAlpn === true && tls.alpnProtocol !== "postgresql") {
          tls.destroy()
          resume(Effect.fail(new Ended({ outcome: "tlsError", detail: "ALPN postgresql was not negotiated" })))
          return
        }
        reader.attach(tls)
        resume(Effect.void)
      })
    })

  const run = (step: Step): Effect.Effect<void, Ended> => {
    if (step === "close") {
      return Effect.andThen(close, Effect.fail(new Ended({ outcome: "completed", detail: "closed (FIN)" })))
    }
    if (step === "reset") {
      return Effect.andThen(reset, Effect.fail(new Ended({ outcome: "completed", detail: "reset (RST)" })))
    }
    if (step === "hang") return Effect.andThen(recordUntilEof, Effect.never)
    if (step === "awaitEof") {
      return Effect.catchIf(recordUntilEof, (e) => e.outcome === "peerClosed", () => Effect.void)
    }
    if ("expect" in step) {
      return Effect.flatMap(readPacket, (packet) => {
        r.packets.push(packet)
        signal.notify()
        const expected = step.expect
        const ok = expected === "any" ||
          (expected === "directTls" ? packet.kind === "tlsClientHello" : packet.kind === expected)
        return ok
          ? Effect.void
          : Effect.andThen(
            Effect.sync(() => socket.destroy()),
            Effect.fail(new Ended({ outcome: "mismatch", detail: `expected ${expected}, received ${packet.kind}` }))
          )
      })
    }
    if ("reply" in step) return write(step.reply)
    if ("replyThenClose" in step) {
      return Effect.andThen(
        Effect.andThen(write(step.replyThenClose), close),
        Effect.fail(new Ended({ outcome: "completed", detail: "replied then closed (FIN)" }))
      )
    }
    if ("tlsUpgrade" in step) return upgrade(step.tlsUpgrade)
    // "instead of a ServerHello": first wait for the ClientHello
    const awaitClientHello = pendingClientHello !== undefined
      ? Effect.void
      : Effect.asVoid(Effect.mapError(reader.read(1), readClosed))
    return Effect.andThen(awaitClientHello, Effect.suspend(() => tlsFail(step.tlsFail)))
  }

  const tlsFail = (kind: "garbage" | "close" | "reset"): Effect.Effect<void, Ended> => {
    // the first ClientHello byte has been consumed, the rest of what arrived is still buffered
    r.plaintextLength = r.wireLength - reader.available - 1
    switch (kind) {
      case "garbage":
        return Effect.andThen(
          Effect.andThen(write("HTTP/1.1 400 Bad Request\r\n\r\nthis is not a ServerHello\n"), close),
          Effect.fail(new Ended({ outcome: "completed", detail: "answered garbage instead of a ServerHello" }))
        )
      case "close":
        return Effect.andThen(
          close,
          Effect.fail(new Ended({ outcome: "completed", detail: "closed instead of a ServerHello" }))
        )
      case "reset":
        return Effect.andThen(
          reset,
          Effect.fail(new Ended({ outcome: "completed", detail: "reset instead of a ServerHello" }))
        )
    }
  }

  const finish = (outcome: Outcome, detail: string) =>
    Effect.sync(() => {
      r.finished = true
      r.outcome = outcome
      r.detail = detail
      signal.notify()
    })

  return Effect.forEach(steps, run, { discard: true }).pipe(
    Effect.andThen(close),
    Effect.andThen(finish("completed", "script done (FIN)")),
    Effect.catch((ended: Ended) => finish(ended.outcome, ended.detail)),
    Effect.onInterrupt(() => finish("interrupted", "scope closed")),
    Effect.ensuring(Effect.sync(() => {
      secure?.destroy()
      socket.destroy()
    }))
  )
}

// ---------------------------------------------------------------------------------------------------------------------
// constructors
// ---------------------------------------------------------------------------------------------------------------------

const listen = (server: Net.Server, options: Net.ListenOptions) =>
  Effect.acquireRelease(
    Effect.callback<void, FakePostmasterError>((resume) => {
      server.once("error", (error: Error) => resume(Effect.fail(new FakePostmasterError({ message: error.message }))))
      server.listen(options, () => resume(Effect.void))
    }),
    () =>
      Effect.callback<void>((resume) => {
        server.close(() => resume(Effect.void))
      })
  )

/**
 * Starts a fake postmaster; it stops when the Scope closes.
 *
 * @category constructors
 * @since 0.1.0
 */
export const make: (options: Options) => Effect.Effect<FakePostmaster, FakePostmasterError, Scope.Scope> = Effect.fn(
  "FakePostmaster.make"
)(function*(options: Options) {
  const records: Array<MutableRecord> = []
  const sockets = new Set<Net.Socket>()
  const signal = new Signal()
  const runFork = yield* FiberSet.makeRuntime<never, void, never>()
  const onConnection = (transport: "tcp" | "unix") => (socket: Net.Socket) => {
    sockets.add(socket)
    socket.once("close", () => sockets.delete(socket))
    const index = records.length
    const record: MutableRecord = {
      index,
      transport,
      packets: [],
      wire: [],
      wireLength: 0,
      plaintextLength: undefined,
      tls: undefined,
      finished: false,
      outcome: undefined,
      detail: ""
    }
    records.push(record)
    signal.notify()
    const steps = typeof options.script === "function" ? options.script(index) : options.script
    runFork(handle(socket, record, steps, signal))
  }
  const tcp = Net.createServer(onConnection("tcp"))
  yield* listen(tcp, { host: "127.0.0.1", port: 0 })
  // finalizers run in reverse: sockets are destroyed before server.close() waits for them
  yield* Effect.addFinalizer(() =>
    Effect.sync(() => {
      for (const socket of sockets) socket.destroy()
    })
  )
  const port = (tcp.address() as Net.AddressInfo).port
  let socketDir: string | undefined = undefined
  let socketPath: string | undefined = undefined
  if (options.unix === true) {
    const dir = yield* Effect.acquireRelease(
      Effect.try({
        try: () => Fs.mkdtempSync(Path.join(Os.tmpdir(), "pqf-")),
        catch: (error) => new FakePostmasterError({ message: String(error) })
      }),
      (dir) => Effect.sync(() => Fs.rmSync(dir, { recursive: true, force: true }))
    )
    socketDir = dir
    socketPath = Path.join(dir, `.s.PGSQL.${port}`)
    const unix = Net.createServer(onConnection("unix"))
    yield* listen(unix, { path: socketPath })
    yield* Effect.addFinalizer(() =>
      Effect.sync(() => {
        for (const socket of sockets) socket.destroy()
      })
    )
  }
  return {
    host: "127.0.0.1",
    port,
    socketDir,
    socketPath,
    received: Effect.sync(() => records.map(snapshot)),
    connections: Effect.sync(() => records.length),
    awaitConnection: (index) =>
      signal.waitFor(() => (records[index] === undefined ? undefined : snapshot(records[index]))),
    awaitFinished: (index) =>
      signal.waitFor(() => (records[index]?.finished === true ? snapshot(records[index]) : undefined))
  } satisfies FakePostmaster
})
