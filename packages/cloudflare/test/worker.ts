/**
 * The Worker the workerd tests and the workerd bench cell run (bundled by Bun into one module, `cloudflare:sockets`
 * left to workerd): a POST with a session's conninfo, address and key sends one cancel from inside the Worker through
 * CloudflareTransport and answers with the outcome; a POST to `/bench` (with `n` and `tls`) times about n one-shot
 * cancels against the hand-written floor on `cloudflare:sockets`, in interleaved batches, and answers with the median
 * time per cancel (ms).
 */
import { CloudflareTransport } from "@pqcancel/cloudflare"
import { CancelConnection, CancelKey, ConnectionOptions } from "@pqcancel/core"
import { connect } from "cloudflare:sockets"
import type { Socket } from "cloudflare:sockets"
import * as Effect from "effect/Effect"

/** What the test posts. */
export interface CancelBody {
  readonly conninfo: string
  readonly address:
    | { readonly _tag: "Tcp"; readonly address: string; readonly port: number; readonly family: 4 | 6 }
    | { readonly _tag: "Unix"; readonly path: string }
  readonly pid: number
  readonly secretHex: string
  readonly protocolVersion: CancelKey.ProtocolVersion
}

/** What the Worker answers. */
export type CancelOutcome =
  | { readonly ok: true }
  | { readonly ok: false; readonly tag: string; readonly message: string }

const fromHex = (hex: string): Uint8Array => Uint8Array.from(hex.match(/../g) ?? [], (byte) => parseInt(byte, 16))

const sessionInfo = (body: CancelBody) =>
  Effect.map(ConnectionOptions.fromString(body.conninfo, {}), (options): CancelConnection.SessionInfo => ({
    options,
    host: options.hosts[0]!,
    address: body.address,
    key: CancelKey.unsafeMake({ pid: body.pid, secret: fromHex(body.secretHex), protocolVersion: body.protocolVersion })
  }))

const cancel = (body: CancelBody): Effect.Effect<CancelOutcome> =>
  Effect.flatMap(sessionInfo(body), CancelConnection.cancel).pipe(
    Effect.provide(CloudflareTransport.layer),
    Effect.match({
      onSuccess: (): CancelOutcome => ({ ok: true }),
      onFailure: (error): CancelOutcome => ({ ok: false, tag: error._tag, message: error.message })
    })
  )

/** What the bench posts: a session to cancel over and over (an idle backend), and the cell. */
export interface BenchBody extends CancelBody {
  readonly n: number
  /** SSLRequest + TLS, the host name "localhost" verified by the platform */
  readonly tls: boolean
}

const SSL_REQUEST = Uint8Array.of(0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f)

// the floor: the same cancel written by hand on cloudflare:sockets, no validation, no state machine
const floorCancel = async (host: string, port: number, packet: Uint8Array, tls: boolean): Promise<void> => {
  let socket: Socket = connect({ hostname: host, port }, { secureTransport: tls ? "starttls" : "off" })
  if (tls) {
    const writer = socket.writable.getWriter()
    const reader = socket.readable.getReader()
    await writer.write(SSL_REQUEST)
    const answer = await reader.read()
    if (answer.value?.[0] !== 0x53) throw new Error("server refused SSL")
    writer.releaseLock()
    reader.releaseLock()
    socket = socket.startTls({ expectedServerHostname: "localhost" })
  }
  await socket.writable.getWriter().write(packet)
  const reader = socket.readable.getReader()
  while (!(await reader.read()).done) {
    // the server answers nothing; done when it closes
  }
  await socket.close()
}

const median = (samples: Array<number>): number => samples.sort((a, b) => a - b)[Math.floor(samples.length / 2)]!

const bench = (body: BenchBody) =>
  Effect.gen(function*() {
    const info = yield* sessionInfo(body)
    if (body.address._tag !== "Tcp") return yield* Effect.die("a TCP session")
    const { address, port } = body.address
    const secret = fromHex(body.secretHex)
    const packet = new Uint8Array(12 + secret.length)
    const view = new DataView(packet.buffer)
    view.setInt32(0, packet.length)
    view.setInt32(4, 80877102)
    view.setInt32(8, body.pid)
    packet.set(secret, 12)
    const systems = [
      CancelConnection.cancel(info).pipe(Effect.orDie),
      Effect.promise(() => floorCancel(address, port, packet, body.tls))
    ]
    // a Worker's clock has whole milliseconds and moves on I/O only: time batches of 10 cancels, interleaved
    const batch = 10
    const rounds = Math.max(2, Math.round(body.n / batch))
    const samples: [Array<number>, Array<number>] = [[], []]
    for (let i = 0; i < rounds; i++) {
      for (let k = 0; k < 2; k++) {
        const which = (i + k) % 2
        const t0 = performance.now()
        for (let j = 0; j < batch; j++) yield* systems[which]!
        if (i >= rounds / 10) samples[which]!.push((performance.now() - t0) / batch) // the first tenth warms up
      }
    }
    return { pqcancel: median(samples[0]), nativeFloor: median(samples[1]) }
  }).pipe(Effect.provide(CloudflareTransport.layer))

export default {
  fetch: async (request: Request): Promise<Response> => {
    try {
      return new URL(request.url).pathname === "/bench"
        ? Response.json(await Effect.runPromise(bench(await request.json() as BenchBody)))
        : Response.json(await Effect.runPromise(cancel(await request.json() as CancelBody)))
    } catch (error) {
      return new Response(error instanceof Error ? error.stack ?? error.message : String(error), { status: 500 })
    }
  }
}
