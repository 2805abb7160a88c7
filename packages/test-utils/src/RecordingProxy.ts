/**
 * A recording TCP proxy for differential tests: clients (libpq, pqcancel) connect to it as if it were the server;
 * each accepted connection takes the next {@link Behaviour} of the current script (then `forward`): forward to a
 * real server, answer the SSLRequest with `'N'`, `'E'` or garbage, close, stay silent, or impersonate a TLS server
 * with another CA's certificate. Every connection's client bytes are recorded, so a test can compare what two
 * clients sent and check that a cancel key never travelled in plaintext.
 *
 * @example
 * ```ts
 * import * as Effect from "effect/Effect"
 * import { RecordingProxy } from "@pqcancel/test-utils"
 *
 * const program = Effect.scoped(Effect.gen(function*() {
 *   const proxy = yield* RecordingProxy.make({ upstreamPort: 5432 })
 *   proxy.script(["answerN"]) // the next connection gets 'N' to its SSLRequest
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
import * as Tls from "node:tls"
import * as Url from "node:url"
import { replayDuplex } from "./internal/replayDuplex.ts"
import { waitUntilSettled } from "./internal/settled.ts"

/**
 * What the proxy does with one accepted connection.
 *
 * - `forward`: a byte pipe to the upstream server (both directions)
 * - `answerN` / `answerE` / `answerGarbage`: answer the first packet with `N`, `E` or `X`; after `N` the next packet
 *   is read and the connection closed (FIN), as a server that accepts a plaintext CancelRequest
 * - `close`: read the first packet, then FIN
 * - `silent`: read everything, answer nothing (until the client hangs up)
 * - `impostor`: TLS (after `S` to an SSLRequest, or direct) with another CA's certificate; what arrives inside TLS is
 *   recorded, then FIN
 * - `impostorClientCert`: the same with a certificate the right CA signed for clients only (`client.crt`: wrong
 *   purpose, wrong name)
 * - `sThenGarbage`: `S`, then answer the ClientHello with non-TLS bytes, then FIN
 * - `sWithData`: `S` and unencrypted bytes in one segment, then silent
 *
 * @category models
 * @since 0.1.0
 */
export type Behaviour =
  | "forward"
  | "answerN"
  | "answerE"
  | "answerGarbage"
  | "close"
  | "silent"
  | "impostor"
  | "impostorClientCert"
  | "sThenGarbage"
  | "sWithData"

/**
 * One client packet the proxy recognized in a connection's plaintext bytes.
 *
 * @category models
 * @since 0.1.0
 */
export type PacketKind =
  | "SSLRequest"
  | "GSSENCRequest"
  | "CancelRequest"
  | "StartupMessage"
  | "TLS"
  | "other"

/**
 * A connection as the proxy saw it.
 *
 * @category models
 * @since 0.1.0
 */
export interface ConnectionRecord {
  readonly index: number
  readonly behaviour: Behaviour
  /** every byte the client sent (TLS records stay encrypted) */
  readonly wire: Uint8Array
  /** the client's packets before any TLS, then `TLS` for the encrypted rest */
  readonly packets: ReadonlyArray<PacketKind>
  /** what arrived inside an impostor's TLS session (decrypted) */
  readonly insideTls: Uint8Array
  /** the client closed (FIN or RST) */
  readonly closed: boolean
}

/**
 * A running proxy.
 *
 * @category models
 * @since 0.1.0
 */
export interface RecordingProxy {
  readonly port: number
  /** the behaviours of the next connections, in order (then `forward`) */
  readonly script: (behaviours: ReadonlyArray<Behaviour>) => void
  /** the connections accepted so far */
  readonly records: () => ReadonlyArray<ConnectionRecord>
  /**
   * waits until every connection accepted since the `from`-th was closed (by its client or by the proxy), bounded by
   * `timeoutMs`; false when some is still open
   */
  readonly settled: (from: number, timeoutMs?: number) => Effect.Effect<boolean>
}

const SSL_REQUEST_CODE = 80877103
const GSS_REQUEST_CODE = 80877104
const CANCEL_REQUEST_CODE = 80877102

/**
 * Splits a client's plaintext bytes into the startup-phase packets (length-prefixed, no type byte); a TLS record
 * (0x16) ends the plaintext part.
 *
 * @category utils
 * @since 0.1.0
 */
export const packetsOf = (wire: Uint8Array): Array<PacketKind> => {
  const view = new DataView(wire.buffer, wire.byteOffset, wire.byteLength)
  const kinds: Array<PacketKind> = []
  let offset = 0
  while (offset < wire.length) {
    if (wire[offset] === 0x16) {
      kinds.push("TLS")
      break
    }
    if (offset + 8 > wire.length) {
      kinds.push("other")
      break
    }
    const length = view.getInt32(offset)
    const code = view.getInt32(offset + 4)
    kinds.push(
      code === SSL_REQUEST_CODE
        ? "SSLRequest"
        : code === GSS_REQUEST_CODE
        ? "GSSENCRequest"
        : code === CANCEL_REQUEST_CODE
        ? "CancelRequest"
        : code === 196608 || code === 196610
        ? "StartupMessage"
        : "other"
    )
    if (length < 8) break
    offset += length
  }
  return kinds
}

const fixture = (name: string): string =>
  Fs.readFileSync(Url.fileURLToPath(new URL(`../fixtures/${name}`, import.meta.url)), "utf8")

interface Mutable {
  index: number
  behaviour: Behaviour
  wire: Array<Buffer>
  insideTls: Array<Buffer>
  closed: boolean
}

/**
 * Starts a proxy on 127.0.0.1 (a free port) in front of `upstreamPort` on 127.0.0.1; the Scope closes it and every
 * connection.
 *
 * @category constructors
 * @since 0.1.0
 */
export const make = (options: { readonly upstreamPort: number }): Effect.Effect<RecordingProxy, never, Scope.Scope> =>
  Effect.gen(function*() {
    let queue: Array<Behaviour> = []
    const records: Array<Mutable> = []
    const sockets = new Set<Net.Socket>()
    const impostors = {
      impostor: { cert: fixture("wrong-ca.crt"), key: fixture("wrong-ca.key") },
      impostorClientCert: { cert: fixture("client.crt"), key: fixture("client.key") }
    }

    const track = (socket: Net.Socket) => {
      sockets.add(socket)
      socket.on("close", () => sockets.delete(socket))
      socket.on("error", () => {})
    }

    const onConnection = (client: Net.Socket) => {
      track(client)
      const record: Mutable = {
        index: records.length,
        behaviour: queue.shift() ?? "forward",
        wire: [],
        insideTls: [],
        closed: false
      }
      records.push(record)
      client.on("close", () => {
        record.closed = true
        for (const waiter of Array.from(closeWaiters)) waiter()
      })
      const recordData = (bytes: Buffer) => record.wire.push(bytes)
      switch (record.behaviour) {
        case "forward": {
          const upstream = Net.connect({ host: "127.0.0.1", port: options.upstreamPort })
          track(upstream)
          client.on("data", (bytes: Buffer) => {
            recordData(bytes)
            upstream.write(bytes)
          })
          upstream.on("data", (bytes: Buffer) => client.write(bytes))
          client.on("end", () => upstream.end())
          upstream.on("end", () => client.end())
          client.on("close", () => upstream.destroy())
          upstream.on("close", () => client.destroy())
          return
        }
        case "silent":
          client.on("data", recordData)
          return
        case "close":
          client.once("data", () => client.end())
          client.on("data", recordData)
          return
        case "answerN":
        case "answerE":
        case "answerGarbage": {
          let answered = false
          client.on("data", (bytes: Buffer) => {
            recordData(bytes)
            if (answered) {
              client.end()
              return
            }
            answered = true
            if (record.behaviour === "answerN") client.write("N")
            else {
              client.write(record.behaviour === "answerE" ? "E" : "X")
              client.end()
            }
          })
          return
        }
        case "sWithData":
          client.on("data", recordData)
          client.once("data", () => client.write("SX"))
          return
        case "sThenGarbage": {
          let step = 0
          client.on("data", (bytes: Buffer) => {
            recordData(bytes)
            step++
            if (step === 1) client.write("S")
            else if (step === 2) client.end("this is not TLS at all\n")
          })
          return
        }
        case "impostor":
        case "impostorClientCert": {
          const impostor = impostors[record.behaviour]
          client.once("data", (first: Buffer) => {
            recordData(first)
            const direct = first[0] === 0x16
            if (!direct) client.write("S")
            // TLS over a duplex that replays a direct ClientHello and records every raw byte after it
            const secure = new Tls.TLSSocket(replayDuplex(client, direct ? first : Buffer.alloc(0), recordData), {
              isServer: true,
              cert: impostor.cert,
              key: impostor.key,
              ALPNProtocols: ["postgresql"]
            })
            track(secure)
            secure.on("data", (bytes: Buffer) => {
              record.insideTls.push(bytes)
              secure.end()
            })
            secure.on("end", () => secure.end())
          })
          return
        }
      }
    }

    const server = Net.createServer(onConnection)
    yield* Effect.acquireRelease(
      Effect.callback<void>((resume) => {
        server.listen({ host: "127.0.0.1", port: 0 }, () => resume(Effect.void))
      }),
      () =>
        Effect.callback<void>((resume) => {
          for (const socket of sockets) socket.destroy()
          server.close(() => resume(Effect.void))
        })
    )
    const port = (server.address() as Net.AddressInfo).port

    const snapshot = (r: Mutable): ConnectionRecord => {
      const wire = new Uint8Array(Buffer.concat(r.wire))
      return {
        index: r.index,
        behaviour: r.behaviour,
        wire,
        packets: packetsOf(wire),
        insideTls: new Uint8Array(Buffer.concat(r.insideTls)),
        closed: r.closed
      }
    }

    // woken by every close: event-driven, no polling
    const closeWaiters = new Set<() => void>()
    const settled = (from: number, timeoutMs = 5000): Effect.Effect<boolean> =>
      waitUntilSettled(() => records.slice(from).every((r) => r.closed), closeWaiters, timeoutMs)

    return {
      port,
      script: (behaviours) => {
        queue = [...behaviours]
      },
      records: () => records.map(snapshot),
      settled
    }
  })
