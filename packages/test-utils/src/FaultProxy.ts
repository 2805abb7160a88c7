/**
 * A fault-injecting TCP (or unix socket) proxy in front of a real PostgreSQL: clients connect to it as if it were the
 * server, and each connection gets the {@link Fault} the current rule picks for it once its first packet arrived
 * (so a session, a cancel connection, an SSLRequest, a GSSENCRequest and direct TLS can be told apart; behind TLS or
 * GSS, by their order). Faults: latency per direction, the stream sliced into 1–5 byte pieces, a blackhole (read,
 * never answer), a reset (RST) after N bytes or in the middle of a TLS or GSS handshake, the server's close held or
 * never passed on; and for the proxy as a whole: the listener closed (connect refused) and established connections
 * stalled in both directions (half-open).
 *
 * @example
 * ```ts
 * import * as Effect from "effect/Effect"
 * import { FaultProxy } from "@pqcancel/test-utils"
 *
 * const program = Effect.scoped(Effect.gen(function*() {
 *   const proxy = yield* FaultProxy.make({ upstream: { port: 5432 } })
 *   // cancel connections: 300 ms each way; every other connection passes untouched
 *   proxy.setRule((c) => c.first === "CancelRequest" ? { latencyMs: { up: 300, down: 300 } } : undefined)
 *   return proxy.port
 * }))
 * ```
 *
 * @since 0.1.0
 */
import * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"
import * as Fs from "node:fs"
import * as Net from "node:net"
import { waitUntilSettled } from "./internal/settled.ts"
import { Signal } from "./internal/signal.ts"
import { packetsOf } from "./RecordingProxy.ts"
import type { PacketKind } from "./RecordingProxy.ts"

/**
 * What the proxy does to one connection. The fields combine (a latency and slicing, say); an empty fault forwards
 * the bytes untouched.
 *
 * @category models
 * @since 0.1.0
 */
export interface Fault {
  /** delay every chunk (and the FIN) by this many ms: `up` client → server, `down` server → client */
  readonly latencyMs?: { readonly up?: number; readonly down?: number }
  /** deliver the stream in 1–5 byte pieces, each in its own write (both directions) */
  readonly slice?: boolean
  /** read what the client sends, never connect upstream, never answer, never close */
  readonly blackhole?: boolean
  /** reset (RST) the client's socket once this many bytes went in that direction (a unix socket: closed) */
  readonly resetAfter?: { readonly up?: number; readonly down?: number }
  /**
   * in the middle of a TLS or GSS handshake (the server's first handshake bytes after its `S`/`G`, or after a
   * direct ClientHello): `reset` the client's socket (RST), or `close` it (FIN)
   */
  readonly inHandshake?: "reset" | "close"
  /** the server's close (FIN) passed on after this many ms, or `never` (the client sees nothing until it closes) */
  readonly holdCloseMs?: number | "never"
}

/**
 * What a rule sees of a new connection: its order and its first packet.
 *
 * @category models
 * @since 0.1.0
 */
export interface ConnectionInfo {
  /** 0 for the first connection the proxy accepted */
  readonly index: number
  /** the first packet: `CancelRequest`, `StartupMessage`, `SSLRequest`, `GSSENCRequest`, `TLS` (direct) or `other` */
  readonly first: PacketKind
}

/**
 * Picks the fault of a connection (undefined: forward untouched).
 *
 * @category models
 * @since 0.1.0
 */
export type Rule = (connection: ConnectionInfo) => Fault | undefined

/**
 * One connection as the proxy saw it.
 *
 * @category models
 * @since 0.1.0
 */
export interface ConnectionRecord extends ConnectionInfo {
  readonly fault: Fault | undefined
  /** bytes the client sent / the server sent (whether delivered or not) */
  readonly bytesUp: number
  readonly bytesDown: number
  /** the proxy reset (RST) or closed the client's socket as a fault */
  readonly faulted: "reset" | "close" | undefined
  /** the server closed its side (FIN or reset), whether or not the client was told */
  readonly serverClosed: boolean
  /** the client closed its side (FIN or reset), or the proxy closed the connection */
  readonly clientClosed: boolean
  /** the client's socket is closed */
  readonly closed: boolean
}

/**
 * A running proxy.
 *
 * @category models
 * @since 0.1.0
 */
export interface FaultProxy {
  /** the TCP port it listens on (0 when it listens on a unix socket) */
  readonly port: number
  /** the unix socket path it listens on, if any */
  readonly path: string | undefined
  /** picks the fault of each connection accepted from now on (its first packet decides) */
  readonly setRule: (rule: Rule) => void
  /** the connections accepted so far */
  readonly records: () => ReadonlyArray<ConnectionRecord>
  /** how many client sockets are open */
  readonly open: () => number
  /** stop listening: new connections are refused; established ones go on */
  readonly refuse: Effect.Effect<void>
  /** listen again (same port or path) */
  readonly accept: Effect.Effect<void>
  /** stall every open connection (or those matching) in both directions: nothing passes, nothing closes */
  readonly stall: (which?: (record: ConnectionRecord) => boolean) => number
  /**
   * waits until the client closed every connection accepted since the `from`-th (or the proxy did), bounded by
   * `timeoutMs`; false when some is still open
   */
  readonly settled: (from: number, timeoutMs?: number) => Effect.Effect<boolean>
  /**
   * waits until every connection accepted since the `from`-th is closed on both of the proxy's sides (the client's
   * and the server's socket), bounded by `timeoutMs`; false when some is still open
   */
  readonly drained: (from: number, timeoutMs?: number) => Effect.Effect<boolean>
  /** waits until the `index`-th connection exists and satisfies `check` (re-checked on every byte and close) */
  readonly awaitRecord: (
    index: number,
    check: (record: ConnectionRecord) => boolean
  ) => Effect.Effect<ConnectionRecord>
}

/** Where the proxy forwards to: a TCP port on 127.0.0.1 (or `host`) or a unix socket path. */
type Upstream = { readonly port: number; readonly host?: string } | { readonly path: string }

interface Mutable {
  readonly index: number
  first: PacketKind | undefined
  fault: Fault | undefined
  bytesUp: number
  bytesDown: number
  faulted: "reset" | "close" | undefined
  serverClosed: boolean
  clientClosed: boolean
  closed: boolean
  upstreamOpen: boolean
  stalled: boolean
}

const pieces = (bytes: Buffer): Array<Buffer> => {
  const out: Array<Buffer> = []
  for (let offset = 0; offset < bytes.length;) {
    const size = 1 + Math.floor(Math.random() * 5)
    out.push(bytes.subarray(offset, offset + size))
    offset += size
  }
  return out
}

/**
 * One direction of a connection: delays, slices and counts what passes, and passes the FIN on after the data.
 * `write` and `end` act on the destination; `cut` is called when the byte limit is reached.
 */
class Lane {
  private readonly queue: Array<{ readonly due: number; readonly bytes: Buffer | undefined }> = []
  private busy = false
  private timer: ReturnType<typeof setTimeout> | undefined = undefined
  private sent = 0
  private stopped = false

  private readonly latencyMs: number
  private readonly slice: boolean
  private readonly limit: number | undefined
  private readonly write: (bytes: Buffer) => void
  private readonly end: () => void
  private readonly cut: () => void

  constructor(options: {
    readonly latencyMs: number
    readonly slice: boolean
    readonly limit: number | undefined
    readonly write: (bytes: Buffer) => void
    readonly end: () => void
    readonly cut: () => void
  }) {
    this.latencyMs = options.latencyMs
    this.slice = options.slice
    this.limit = options.limit
    this.write = options.write
    this.end = options.end
    this.cut = options.cut
  }

  push(bytes: Buffer | undefined): void {
    if (this.stopped) return
    const due = Date.now() + this.latencyMs
    if (bytes !== undefined && this.slice) { for (const piece of pieces(bytes)) this.queue.push({ due, bytes: piece }) }
    else this.queue.push({ due, bytes })
    this.pump()
  }

  stop(): void {
    this.stopped = true
    this.queue.length = 0
    if (this.timer !== undefined) clearTimeout(this.timer)
  }

  private pump(): void {
    while (!this.busy && !this.stopped && this.queue.length > 0) {
      const item = this.queue[0]!
      const wait = item.due - Date.now()
      if (wait > 0) {
        this.busy = true
        this.timer = setTimeout(() => {
          this.busy = false
          this.pump()
        }, wait)
        return
      }
      this.queue.shift()
      if (item.bytes === undefined) {
        this.end()
        continue
      }
      let bytes = item.bytes
      if (this.limit !== undefined && this.sent + bytes.length >= this.limit) {
        bytes = bytes.subarray(0, this.limit - this.sent)
        if (bytes.length > 0) this.write(bytes)
        this.sent = this.limit
        this.stop()
        this.cut()
        return
      }
      this.sent += bytes.length
      this.write(bytes)
      if (this.slice) {
        // the next piece in a later turn, so it leaves in its own segment
        this.busy = true
        setImmediate(() => {
          this.busy = false
          this.pump()
        })
        return
      }
    }
  }
}

/**
 * Starts a proxy on 127.0.0.1 (a free port) or on the unix socket `listen.path`, in front of `upstream`; the Scope
 * closes it and every connection.
 *
 * @category constructors
 * @since 0.1.0
 */
export const make = (options: {
  readonly upstream: Upstream
  readonly listen?: { readonly path: string } | undefined
}): Effect.Effect<FaultProxy, never, Scope.Scope> =>
  Effect.gen(function*() {
    let rule: Rule = () => undefined
    const records: Array<Mutable> = []
    const sockets = new Set<Net.Socket>()
    const lanes = new Map<Mutable, { readonly stop: () => void }>()
    const closeWaiters = new Set<() => void>()
    const changed = new Signal()

    const track = (socket: Net.Socket) => {
      sockets.add(socket)
      socket.on("close", () => sockets.delete(socket))
      socket.on("error", () => {})
    }

    const onConnection = (client: Net.Socket) => {
      track(client)
      client.setNoDelay(true)
      const record: Mutable = {
        index: records.length,
        first: undefined,
        fault: undefined,
        bytesUp: 0,
        bytesDown: 0,
        faulted: undefined,
        serverClosed: false,
        clientClosed: false,
        closed: false,
        upstreamOpen: false,
        stalled: false
      }
      records.push(record)
      let upstream: Net.Socket | undefined
      let up: Lane | undefined
      let down: Lane | undefined
      const stopLanes = () => {
        up?.stop()
        down?.stop()
      }
      lanes.set(record, { stop: stopLanes })
      client.on("close", () => {
        record.closed = true
        record.clientClosed = true
        stopLanes()
        lanes.delete(record)
        upstream?.destroy()
        for (const waiter of Array.from(closeWaiters)) waiter()
        changed.notify()
      })
      const fail = (how: "reset" | "close") => {
        if (record.faulted !== undefined || record.closed) return
        record.faulted = how
        stopLanes()
        // a unix socket has no RST: the nearest is closing it at once
        if (how === "reset" && options.listen === undefined) client.resetAndDestroy()
        else if (how === "reset") client.destroy()
        else client.end()
        upstream?.destroy()
      }

      // the handshake watch: bytes from the server that belong to a TLS or GSS handshake
      let handshake: "direct" | "answer" | "none" = "none"
      let pending: Buffer = Buffer.alloc(0)

      const begin = (first: Buffer) => {
        const kind = first[0] === 0x16 ? "TLS" : packetsOf(new Uint8Array(first))[0] ?? "other"
        record.first = kind
        const fault = rule({ index: record.index, first: kind })
        record.fault = fault
        if (fault?.blackhole === true) return
        if (fault?.inHandshake !== undefined) {
          handshake = kind === "TLS" ? "direct" : kind === "SSLRequest" || kind === "GSSENCRequest" ? "answer" : "none"
        }
        const target = "path" in options.upstream
          ? Net.connect({ path: options.upstream.path, allowHalfOpen: true })
          : Net.connect({
            host: options.upstream.host ?? "127.0.0.1",
            port: options.upstream.port,
            allowHalfOpen: true
          })
        upstream = target
        record.upstreamOpen = true
        track(target)
        target.setNoDelay(true)
        up = new Lane({
          latencyMs: fault?.latencyMs?.up ?? 0,
          slice: fault?.slice === true,
          limit: fault?.resetAfter?.up,
          write: (bytes) => target.write(bytes),
          end: () => target.end(),
          cut: () => fail("reset")
        })
        down = new Lane({
          latencyMs: fault?.latencyMs?.down ?? 0,
          slice: fault?.slice === true,
          limit: fault?.resetAfter?.down,
          write: (bytes) => client.write(bytes),
          end: () => client.end(),
          cut: () => fail("reset")
        })
        const downLane = down
        target.on("data", (bytes: Buffer) => {
          record.bytesDown += bytes.length
          changed.notify()
          if (record.stalled) return
          if (handshake !== "none" && fault?.inHandshake !== undefined) {
            if (handshake === "answer") {
              // the one-byte answer to the SSLRequest / GSSENCRequest passes; a refusal ends the watch
              handshake = bytes[0] === 0x53 || bytes[0] === 0x47 ? "direct" : "none"
              if (bytes.length === 1 || handshake === "none") {
                downLane.push(bytes)
                return
              }
              downLane.push(bytes.subarray(0, 1))
            }
            fail(fault.inHandshake)
            return
          }
          downLane.push(bytes)
        })
        target.on("end", () => {
          record.serverClosed = true
          changed.notify()
          if (record.stalled) return
          const hold = fault?.holdCloseMs
          if (hold === "never") {
            if (client.readableEnded) client.end()
            return
          }
          if (hold !== undefined) {
            const timer = setTimeout(() => downLane.push(undefined), hold)
            client.once("close", () => clearTimeout(timer))
          } else downLane.push(undefined)
        })
        target.on("close", () => {
          record.serverClosed = true
          record.upstreamOpen = false
          for (const waiter of Array.from(closeWaiters)) waiter()
          changed.notify()
          // a reset or error upstream: pass it on, unless the close is held or the connection is stalled
          if (fault?.holdCloseMs !== undefined || record.stalled) return
          if (!target.readableEnded) client.destroy()
        })
      }

      client.on("data", (bytes: Buffer) => {
        record.bytesUp += bytes.length
        changed.notify()
        if (record.first === undefined) {
          pending = pending.length === 0 ? bytes : Buffer.concat([pending, bytes])
          // the first packet's length and code (or a TLS record's first byte) decide the kind
          if (pending[0] !== 0x16 && pending.length < 8) return
          begin(pending)
          bytes = pending
        }
        if (record.stalled) return
        up?.push(bytes)
      })
      client.on("end", () => {
        record.clientClosed = true
        for (const waiter of Array.from(closeWaiters)) waiter()
        changed.notify()
        // the client gave up: nothing passes on (a stall, a blackhole, a close never passed on); its socket closes,
        // and with it the server's side (as the server's keepalive would find, later)
        if (
          upstream === undefined || record.stalled || record.fault?.blackhole === true ||
          (record.serverClosed && record.fault?.holdCloseMs === "never")
        ) client.end()
        else up?.push(undefined)
      })
    }

    const server = Net.createServer({ allowHalfOpen: true }, onConnection)
    const listenPath = options.listen?.path
    const listen = Effect.callback<void>((resume) => {
      if (listenPath !== undefined) Fs.rmSync(listenPath, { force: true })
      server.listen(
        listenPath !== undefined ? { path: listenPath } : { host: "127.0.0.1", port },
        () => resume(Effect.void)
      )
    })
    let port = 0
    yield* Effect.acquireRelease(
      listen,
      () =>
        Effect.callback<void>((resume) => {
          for (const socket of sockets) socket.destroy()
          if (!server.listening) return resume(Effect.void)
          server.close(() => resume(Effect.void))
        })
    )
    if (listenPath === undefined) port = (server.address() as Net.AddressInfo).port

    const snapshot = (r: Mutable): ConnectionRecord => ({
      index: r.index,
      first: r.first ?? "other",
      fault: r.fault,
      bytesUp: r.bytesUp,
      bytesDown: r.bytesDown,
      faulted: r.faulted,
      serverClosed: r.serverClosed,
      clientClosed: r.clientClosed,
      closed: r.closed
    })

    // woken by every close: event-driven, no polling
    const settled = (from: number, timeoutMs = 5000): Effect.Effect<boolean> =>
      waitUntilSettled(() => records.slice(from).every((r) => r.clientClosed), closeWaiters, timeoutMs)

    return {
      port,
      path: listenPath,
      setRule: (next) => {
        rule = next
      },
      records: () => records.map(snapshot),
      open: () => records.filter((r) => !r.closed).length,
      refuse: Effect.callback<void>((resume) => {
        if (!server.listening) return resume(Effect.void)
        // stop accepting at once; established connections are not waited for
        server.close()
        resume(Effect.void)
      }),
      accept: Effect.suspend(() => server.listening ? Effect.void : listen),
      stall: (which = () => true) => {
        let count = 0
        for (const record of records) {
          if (record.closed || record.stalled || !which(snapshot(record))) continue
          record.stalled = true
          lanes.get(record)?.stop()
          count++
        }
        return count
      },
      settled,
      drained: (from, timeoutMs = 5000) =>
        waitUntilSettled(() => records.slice(from).every((r) => r.closed && !r.upstreamOpen), closeWaiters, timeoutMs),
      awaitRecord: (index, check) =>
        changed.waitFor(() => {
          const record = records[index]
          if (record === undefined || record.first === undefined) return undefined
          const view = snapshot(record)
          return check(view) ? view : undefined
        })
    }
  })
