/**
 * One runtime's cell of `bench/runtimes.ts`, run by that runtime (`node`, `bun` or `deno run -A`): pqcancel's one-shot
 * cancel (`CancelConnection.cancel` with `NodeTransport`, i.e. the runtime's `node:net` / `node:tls`) against two
 * hand-written floors, interleaved cancel by cancel against an idle backend of an embedded PostgreSQL 18 it starts
 * (and stops) itself:
 *
 * - **native floor**: the same cancel on the runtime's own socket API — `Bun.connect` + `upgradeTLS` on Bun,
 *   `Deno.connect` + `Deno.startTls` on Deno (on Node: `node:net` / `node:tls`, i.e. the node floor);
 * - **node floor**: the cancel on the runtime's `node:net` / `node:tls` (bench/node-systems.ts `rawCancelWith`);
 * - on Bun also pqcancel with **BunTransport** (`pqcancelNative`), against the native floor.
 *
 * Cells: `tcp` (sslmode=disable) and `vfull` (SSLRequest + TLS, verify-full against the test CA and the host name
 * "localhost": Deno.startTls always verifies, so every system verifies). Prints one JSON line per cell.
 *
 *   bun bench/runtime-ab.ts [--n 400] [--cells tcp,vfull]
 */
import { CancelConnection, Transport } from "@pqcancel/core"
import { NodeTransport } from "@pqcancel/node"
import * as BunTransport from "@pqcancel/node/BunTransport"
import * as EmbeddedPostgres from "@pqcancel/test-utils/EmbeddedPostgres"
import * as TestSession from "@pqcancel/test-utils/TestSession"
import * as Effect from "effect/Effect"
import * as Fs from "node:fs"
import type { Cell } from "./cells.ts"
import { pqcancelSession } from "./cells.ts"
import { cancelPacket, floorTls, rawCancelWith } from "./node-systems.ts"
import { summarize } from "./stats.ts"

const argv = process.argv.slice(2)
const option = (name: string): string | undefined => {
  const i = argv.indexOf(`--${name}`)
  return i === -1 ? undefined : argv[i + 1]
}
const n = Number(option("n") ?? 400)
const cellIds = (option("cells") ?? "tcp,vfull").split(",") as Array<"tcp" | "vfull">

interface Target {
  readonly host: string
  readonly port: number
  readonly packet: Uint8Array
  readonly tls: boolean
  readonly ca: string
}

const SSL_REQUEST = Uint8Array.of(0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f)

// the runtimes' own APIs, typed here as far as this file uses them (no bun-types / deno types in the workspace)
interface BunSocket {
  write(bytes: Uint8Array): number
  end(): void
  upgradeTLS(options: { tls: object; socket: object }): [BunSocket, BunSocket]
}
interface BunApi {
  connect(options: { hostname: string; port: number; socket: object; tls?: object }): Promise<BunSocket>
}
interface DenoConn {
  write(bytes: Uint8Array): Promise<number>
  read(into: Uint8Array): Promise<number | null>
  close(): void
  setNoDelay?(on: boolean): void
}
interface DenoApi {
  connect(options: { hostname: string; port: number }): Promise<DenoConn>
  startTls(conn: DenoConn, options: { hostname: string; caCerts: Array<string> }): Promise<DenoConn>
}
const bun = (globalThis as { readonly Bun?: BunApi }).Bun
const deno = (globalThis as { readonly Deno?: DenoApi }).Deno
const runtime = bun !== undefined ? "bun" : deno !== undefined ? "deno" : "node"

// Bun: the socket handlers fire from Bun's event loop; the cancel is done when the server closes (end)
const bunCancel = (api: BunApi, target: Target, done: (error?: Error) => void): void => {
  const finish = {
    end: (socket: BunSocket) => {
      socket.end()
      done()
    },
    error: (_socket: BunSocket, error: Error) => done(error),
    connectError: (_socket: BunSocket, error: Error) => done(error),
    data: () => {}
  }
  api.connect({
    hostname: target.host,
    port: target.port,
    socket: {
      ...finish,
      open: (socket: BunSocket) => socket.write(target.tls ? SSL_REQUEST : target.packet),
      data: (socket: BunSocket) => {
        if (!target.tls) return
        socket.upgradeTLS({
          tls: { ca: target.ca, serverName: "localhost", rejectUnauthorized: true },
          socket: {
            ...finish,
            handshake: (secure: BunSocket, success: boolean, error: Error | null) =>
              success ? secure.write(target.packet) : done(error ?? new Error("handshake failed"))
          }
        })
      }
    }
  }).catch(done)
}

const denoCancel = async (api: DenoApi, target: Target): Promise<void> => {
  let conn = await api.connect({ hostname: target.host, port: target.port })
  conn.setNoDelay?.(true)
  try {
    const one = new Uint8Array(1)
    if (target.tls) {
      await conn.write(SSL_REQUEST)
      if ((await conn.read(one)) !== 1 || one[0] !== 0x53) throw new Error("server refused SSL")
      conn = await api.startTls(conn, { hostname: "localhost", caCerts: [target.ca] })
    }
    await conn.write(target.packet)
    if ((await conn.read(one)) !== null) throw new Error("unexpected bytes")
  } finally {
    conn.close()
  }
}

const nativeFloor = (target: Target): Effect.Effect<void> =>
  bun !== undefined
    ? Effect.callback<void>((resume) => bunCancel(bun, target, (e) => resume(e ? Effect.die(e) : Effect.void)))
    : deno !== undefined
    ? Effect.promise(() => denoCancel(deno, target))
    : Effect.never

const program = Effect.gen(function*() {
  const cluster = yield* EmbeddedPostgres.make({ version: 18, settings: { log_min_messages: "log" } })
  const ca = Fs.readFileSync(cluster.caCertPath, "utf8")
  for (const id of cellIds) {
    const cell: Cell = { id: `${id}/3.2`, transport: id, protocol: "3.2" }
    const session = yield* TestSession.connectTo(cluster, { transport: "tcp", tls: "disable", protocol: "3.2" })
    const info = pqcancelSession(cluster, cell, session)
    const packet = cancelPacket(session.backendKey)
    const remote = session.remote
    if (remote._tag !== "Tcp") return yield* Effect.die("expected a TCP session")
    const target: Target = { host: remote.address, port: remote.port, packet, tls: id === "vfull", ca }
    const tls = floorTls(cluster, cell, true)
    const mode = id === "vfull" ? "sslrequest" : "disable"
    const systems: Array<readonly [string, Effect.Effect<void>]> = [
      [
        "pqcancel",
        CancelConnection.cancel(info).pipe(Effect.orDie, Effect.provideService(Transport.Transport, NodeTransport.make))
      ],
      [
        "nodeFloor",
        Effect.callback<void>((resume) => {
          rawCancelWith(remote, packet, mode, tls, (e) => resume(e ? Effect.die(e) : Effect.void))
        })
      ]
    ]
    if (runtime !== "node") systems.push(["nativeFloor", nativeFloor(target)])
    if (runtime === "bun") {
      systems.push([
        "pqcancelNative",
        CancelConnection.cancel(info).pipe(Effect.orDie, Effect.provideService(Transport.Transport, BunTransport.make))
      ])
    }
    const samples = systems.map(() => [] as Array<number>)
    for (let i = 0; i < n; i++) {
      for (let k = 0; k < systems.length; k++) {
        const which = (i + k) % systems.length
        const t0 = performance.now()
        yield* systems[which]![1]
        const t1 = performance.now()
        if (i >= n / 10) samples[which]!.push(t1 - t0) // the first tenth warms up
      }
    }
    const medians = Object.fromEntries(systems.map(([name], k) => [name, summarize(samples[k]!).median]))
    console.log(JSON.stringify({ runtime, cell: id, n, medians }))
  }
}).pipe(Effect.scoped)

void Effect.runPromise(program).then(() => process.exit(0), (error) => {
  console.error(error)
  process.exit(1)
})
