/**
 * One postgres.js session socket as the adapter sees it, at the protocol level (the same for postgres.js 3 and 4):
 *
 * - the BackendKeyData the server sent (the session's cancel key), read from the startup messages;
 * - how many statements are on the wire and not answered yet: every Sync and simple Query the driver writes is
 *   answered by exactly one ReadyForQuery, so `outstanding` = units written − ReadyForQuery received. The counting
 *   walks message headers only (5 bytes per message), in both directions;
 * - a write gate: while a cancel for one of this session's statements is being prepared or on its way, what the
 *   driver writes is held back (in order) instead of going to the server, so the only statements the server can be
 *   running when the signal lands are the ones that were already on the wire.
 *
 * @internal
 */
import type { CancelMachine, ConnectionOptions } from "@pqcancel/core"
import { CancelKey } from "@pqcancel/core"
import * as Result from "effect/Result"
import type * as Net from "node:net"

const SYNC = 0x53
const QUERY = 0x51
const FLUSH = 0x48
const READY = 0x5a
const BACKEND_KEY_DATA = 0x4b
/** a message body the adapter copies (BackendKeyData) is never longer than this (protocol 3.2: 4 + 256 bytes) */
const MAX_CAPTURE = 260

/**
 * Message framing across chunks: calls `onMessage(type)` once per message header (its body is skipped, or copied for
 * the types `capture` selects). The first message of a client stream (the startup packet) has no type byte.
 */
class Framer {
  private readonly header = Buffer.alloc(5)
  private have = 0
  private remaining = 0
  private type = 0
  private untyped: boolean
  private captured: Array<Buffer> | undefined = undefined
  private readonly onMessage: (type: number) => void
  private readonly capture: ((type: number) => boolean) | undefined
  private readonly onBody: ((type: number, body: Buffer) => void) | undefined
  /** the stream is broken (an impossible length): stop counting (the session is not cancelled any more) */
  broken = false

  constructor(options: {
    readonly untypedFirst: boolean
    readonly onMessage: (type: number) => void
    readonly capture?: ((type: number) => boolean) | undefined
    readonly onBody?: ((type: number, body: Buffer) => void) | undefined
  }) {
    this.untyped = options.untypedFirst
    this.onMessage = options.onMessage
    this.capture = options.capture
    this.onBody = options.onBody
  }

  /** whether the stream is between two messages */
  get atBoundary(): boolean {
    return this.have === 0 && this.remaining === 0
  }

  push(chunk: Uint8Array): void {
    if (this.broken) return
    const n = chunk.length
    let i = 0
    while (i < n) {
      if (this.remaining > 0) {
        const take = Math.min(this.remaining, n - i)
        if (this.captured !== undefined) this.captured.push(Buffer.from(chunk.subarray(i, i + take)))
        i += take
        this.remaining -= take
        if (this.remaining === 0) this.endBody()
        continue
      }
      const size = this.untyped ? 4 : 5
      let type: number
      let length: number
      if (this.have === 0 && n - i >= size) {
        type = this.untyped ? 0 : chunk[i]!
        const at = this.untyped ? i : i + 1
        length = ((chunk[at]! << 24) | (chunk[at + 1]! << 16) | (chunk[at + 2]! << 8) | chunk[at + 3]!) >>> 0
        i += size
      } else {
        while (this.have < size && i < n) this.header[this.have++] = chunk[i++]!
        if (this.have < size) return
        this.have = 0
        type = this.untyped ? 0 : this.header[0]!
        length = this.header.readUInt32BE(this.untyped ? 0 : 1)
      }
      if (length < 4) {
        this.broken = true
        return
      }
      this.untyped = false
      this.type = type
      this.remaining = length - 4
      this.onMessage(type)
      if (this.capture !== undefined && this.capture(type) && this.remaining <= MAX_CAPTURE) {
        this.captured = []
        if (this.remaining === 0) this.endBody()
      }
    }
  }

  private endBody(): void {
    const captured = this.captured
    if (captured === undefined) return
    this.captured = undefined
    this.onBody?.(this.type, Buffer.concat(captured))
  }
}

/**
 * The end (exclusive) of the first unit in `bytes` (which starts at a message boundary): up to and including its
 * first Sync, simple Query or Flush (a statement described first writes Parse / Describe / Flush, then the rest once
 * answered). `undefined` when `bytes` holds no complete unit.
 */
const firstUnitEnd = (bytes: Buffer): number | undefined => {
  let i = 0
  while (i + 5 <= bytes.length) {
    const type = bytes[i]!
    const end = i + 1 + bytes.readUInt32BE(i + 1)
    if (end > bytes.length) return undefined
    if (type === SYNC || type === QUERY || type === FLUSH) return end
    i = end
  }
  return undefined
}

type Write = (chunk: unknown, encoding?: unknown, callback?: unknown) => boolean

/** One session: where it is, how it is encrypted, its key, and the state of its wire */
export class Wire {
  readonly socket: Net.Socket
  readonly raw: Net.Socket
  readonly host: ConnectionOptions.HostEntry
  readonly address: CancelMachine.RemoteAddress
  readonly encrypted: boolean
  /** the session's cancel key, once BackendKeyData was read */
  key: CancelKey.CancelKey | undefined = undefined
  /** `pid:secret` as postgres.js keeps them, once BackendKeyData was read */
  id: string | undefined = undefined
  retired = false
  /** cancels of this session's statements being sent right now (nothing held may go meanwhile) */
  cancelling = 0
  /** units (Sync, simple Query) that went to the server */
  private units = 0
  /** ReadyForQuery received, the startup's not counted */
  private ready = -1
  private gates = 0
  private held: Array<readonly [unknown, unknown, unknown]> = []
  private readonly write: Write
  private readonly out: Framer

  /** the server's bytes, counted (a socket reading into a shared buffer hands them here itself) */
  readonly receive: (chunk: Uint8Array) => void

  constructor(
    stream: { readonly socket: Net.Socket; readonly raw: Net.Socket; readonly encrypted: boolean },
    host: ConnectionOptions.HostEntry,
    address: CancelMachine.RemoteAddress,
    onKey: (wire: Wire) => void,
    sharedReads: boolean
  ) {
    this.socket = stream.socket
    this.raw = stream.raw
    this.encrypted = stream.encrypted
    this.host = host
    this.address = address
    const socket = stream.socket
    this.out = new Framer({
      untypedFirst: true,
      onMessage: (type) => {
        if (type === SYNC || type === QUERY) this.units++
      }
    })
    const incoming = new Framer({
      untypedFirst: false,
      onMessage: (type) => {
        if (type === READY) this.ready++
      },
      capture: (type) => type === BACKEND_KEY_DATA && this.key === undefined,
      onBody: (_type, body) => {
        const decoded = CancelKey.fromBackendKeyData(body, body.length === 8 ? "3.0" : "3.2")
        if (Result.isFailure(decoded)) return
        this.key = decoded.success
        this.id = sessionId(body.readUInt32BE(0), body.length >= 8 ? body.readUInt32BE(4) : 0)
        onKey(this)
      }
    })
    // the driver's writes go through the gate and the counter; the server's bytes through the counter (an own
    // property of this socket object: nothing else is changed)
    const write = socket.write.bind(socket) as Write
    this.write = write
    socket.write = ((chunk: unknown, encoding?: unknown, callback?: unknown): boolean => {
      if (this.gates > 0) {
        this.held.push([chunk, encoding, callback])
        return true
      }
      this.count(chunk, encoding)
      return write(chunk, encoding, callback)
    }) as typeof socket.write
    this.receive = (chunk) => incoming.push(chunk)
    if (sharedReads) return
    const push = socket.push.bind(socket)
    socket.push = (chunk: unknown, encoding?: BufferEncoding): boolean => {
      if (chunk instanceof Uint8Array) incoming.push(chunk)
      return push(chunk, encoding)
    }
  }

  private count(chunk: unknown, encoding: unknown): void {
    if (chunk instanceof Uint8Array) this.out.push(chunk)
    else if (typeof chunk === "string") {
      this.out.push(Buffer.from(chunk, typeof encoding === "string" ? encoding as BufferEncoding : "utf8"))
    }
  }

  /** statements on the wire that the server has not answered (the running one included) */
  get outstanding(): number {
    return this.units - this.ready
  }

  /** whether the driver wrote something that the gate holds */
  get holding(): boolean {
    return this.held.length > 0
  }

  /** hold the driver's writes back (counted: each `gate` is undone by one `ungate`) */
  gate(): void {
    this.gates++
  }

  /** the last `ungate` lets everything held go to the server, in order */
  ungate(): void {
    if (this.gates === 0) return
    this.gates--
    if (this.gates > 0 || this.retired) return
    const held = this.held
    this.held = []
    for (const [chunk, encoding, callback] of held) {
      this.count(chunk, encoding)
      this.write(chunk, encoding, callback)
    }
  }

  /**
   * Lets the first held unit go (the one statement the gate holds that is next in line), the rest stays held.
   * Returns whether it did.
   */
  releaseFirst(): boolean {
    if (this.held.length === 0 || !this.out.atBoundary || this.retired) return false
    if (!this.held.every(([chunk]) => chunk instanceof Uint8Array)) return false
    const bytes = Buffer.concat(this.held.map(([chunk]) => chunk as Uint8Array))
    const end = firstUnitEnd(bytes)
    if (end === undefined) return false
    const callbacks = this.held.map(([, , callback]) => callback)
    this.held = end < bytes.length ? [[bytes.subarray(end), undefined, undefined]] : []
    this.count(bytes.subarray(0, end), undefined)
    this.write(bytes.subarray(0, end), undefined, undefined)
    // the driver's write callbacks (postgres.js 3 uses them for COPY): called once the bytes were handed over
    for (const callback of callbacks) if (typeof callback === "function") queueMicrotask(() => callback())
    return true
  }

  /**
   * Closes the session's sockets (postgres.js fails what it still waited for, and reconnects on demand); resolves
   * once the driver was told (the socket's `close` event), so a statement issued after it never meets this session
   */
  retire(): Promise<void> {
    this.retired = true
    this.held = []
    const socket = this.socket
    const closed = socket.closed
      ? Promise.resolve()
      : new Promise<void>((resolve) => socket.once("close", () => resolve()))
    socket.destroy()
    this.raw.destroy()
    return closed
  }
}

/** the registry key of a session: its pid and secret (postgres.js reads them signed, a pooler's may be ≥ 2³¹) */
export const sessionId = (pid: number, secret: number): string => `${pid >>> 0}:${secret >>> 0}`
