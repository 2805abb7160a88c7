/**
 * PostgreSQL's GSS framing (internal/gssChannel.ts) against a fake GSSAPI library and a fake socket: the handshake's
 * length-prefixed tokens, the wrapped packets after it, libpq's texts for what a broken server or library does, and
 * that nothing is written in clear and every handle is released, also when the socket closes mid-call.
 */
import { assert, describe, it } from "@effect/vitest"
import type * as TransportNs from "@pqcancel/core/Transport"
import type * as NodeGss from "@pqcancel/node/NodeGss"
import { Channel as GssChannel } from "@pqcancel/node/NodeGss"
import * as Effect from "effect/Effect"
import { EventEmitter } from "node:events"
import type * as Net from "node:net"

class FakeSocket extends EventEmitter {
  readonly written: Array<Buffer> = []
  write(bytes: Uint8Array): boolean {
    this.written.push(Buffer.from(bytes))
    return true
  }
  receive(bytes: Uint8Array | string): void {
    this.emit("data", typeof bytes === "string" ? Buffer.from(bytes, "latin1") : Buffer.from(bytes))
  }
}

const frame = (payload: Uint8Array | string): Buffer => {
  const body = typeof payload === "string" ? Buffer.from(payload) : Buffer.from(payload)
  const out = Buffer.alloc(4 + body.length)
  out.writeUInt32BE(body.length)
  body.copy(out, 4)
  return out
}

/** A GSSAPI whose context needs `rounds` server tokens; wrap = "W:" + bytes, unwrap strips "W:" */
const fakeApi = (overrides: Partial<NodeGss.GssApi> & { readonly rounds?: number } = {}) => {
  const live = new Set<string>()
  const calls: Array<string> = []
  let pendingInit: (() => void) | undefined
  let round = 0
  const rounds = overrides.rounds ?? 1
  const api: NodeGss.GssApi = {
    library: "fake",
    acquireCred: (_ccache, callback) => {
      live.add("cred")
      callback({ cred: 1 })
    },
    releaseCred: (cred) => {
      if (cred !== null) live.delete("cred")
    },
    importName: (name) => {
      calls.push(`import ${name}`)
      live.add("name")
      return { name: { name } }
    },
    releaseName: (name) => {
      if (name !== null) live.delete("name")
    },
    initSecContext: (_cred, _context, _target, flags, input, callback) => {
      calls.push(`init flags=${flags} input=${input === undefined ? "none" : Buffer.from(input).toString()}`)
      live.add("context")
      const output = round < rounds ? Buffer.from(`token${round}`) : new Uint8Array(0)
      round++
      pendingInit = () => callback({ major: 0, minor: 0, context: { ctx: 1 }, output })
    },
    deleteContext: (context) => {
      if (context !== null) live.delete("context")
    },
    wrap: (_context, input) => ({ output: Buffer.concat([Buffer.from("W:"), input]), confidential: true }),
    unwrap: (_context, input) => ({ output: Buffer.from(input).subarray(2), confidential: true }),
    wrapSizeLimit: () => 8,
    describe: (status) => ` major ${status.major}: minor ${status.minor}`,
    ...overrides
  }
  return {
    api,
    live,
    calls,
    /** let the (asynchronous) gss_init_sec_context call return */
    completeInit: () => {
      const pending = pendingInit
      pendingInit = undefined
      pending?.()
    }
  }
}

const target: GssChannel.Target = { service: "postgres", host: "db.example", ccache: undefined, delegate: false }

const setup = (fake: ReturnType<typeof fakeApi>, t: GssChannel.Target = target) => {
  const socket = new FakeSocket()
  const events: Array<TransportNs.TransportEvent> = []
  const channel = GssChannel.start(fake.api, socket as unknown as Net.Socket, t, (e) => events.push(e))
  return { socket, events, channel }
}

describe("GssChannel", () => {
  it.effect("handshake: length-prefixed tokens both ways, then wrapped packets split at the size limit", () =>
    Effect.sync(() => {
      const fake = fakeApi({ rounds: 1 })
      const { channel, events, socket } = setup(fake)
      assert.deepStrictEqual(fake.calls, ["import postgres@db.example", "init flags=62 input=none"])
      // writes before the context is established are dropped, never sent in clear
      channel.write(Buffer.from("secret"))
      fake.completeInit()
      assert.deepStrictEqual(socket.written, [frame("token0")])
      socket.receive(frame("server0"))
      fake.completeInit()
      assert.deepStrictEqual(events, [{ _tag: "GssEstablished" }])
      assert.strictEqual(fake.calls[2], "init flags=62 input=server0")
      // 12 bytes with an 8-byte limit: two packets, each W:-wrapped and length-prefixed
      channel.write(Buffer.from("0123456789ab"))
      assert.deepStrictEqual(socket.written.slice(1), [frame("W:01234567"), frame("W:89ab")])
      // incoming packets (split across chunks) are unwrapped
      const packet = frame("W:hello")
      socket.receive(packet.subarray(0, 3))
      socket.receive(packet.subarray(3))
      assert.deepStrictEqual(events.slice(1), [{ _tag: "Data", bytes: new Uint8Array(Buffer.from("hello")) }])
      socket.emit("end")
      assert.deepStrictEqual(events.at(-1), { _tag: "Eof" })
      channel.close()
      assert.strictEqual(fake.live.size, 0)
    }))

  it.effect("no host name: libpq's text, before any library call", () =>
    Effect.sync(() => {
      const fake = fakeApi()
      const { events } = setup(fake, { ...target, host: undefined })
      assert.deepStrictEqual(events, [{ _tag: "GssFailed", message: "host name must be specified" }])
      assert.deepStrictEqual(fake.calls, [])
    }))

  it.effect("gssdelegation asks for GSS_C_DELEG_FLAG", () =>
    Effect.sync(() => {
      const fake = fakeApi()
      setup(fake, { ...target, delegate: true })
      assert.strictEqual(fake.calls[1], "init flags=63 input=none")
    }))

  it.effect("a failing gss_init_sec_context: 'could not initiate GSSAPI security context:' + the library's texts", () =>
    Effect.sync(() => {
      const fake = fakeApi()
      fake.api = {
        ...fake.api,
        initSecContext: (_c, _x, _t, _f, _i, callback) =>
          callback({ major: 0xd0000, minor: 7, context: null, output: new Uint8Array(0) })
      } as NodeGss.GssApi
      const { events, socket } = setup(fake)
      assert.deepStrictEqual(events, [{
        _tag: "GssFailed",
        message: "could not initiate GSSAPI security context: major 851968: minor 7"
      }])
      assert.deepStrictEqual(socket.written, [])
    }))

  it.effect("server faults during the handshake: 'E', an oversize token, a hang-up", () =>
    Effect.sync(() => {
      const withE = fakeApi()
      const e = setup(withE)
      withE.completeInit()
      e.socket.receive(Buffer.concat([Buffer.from("Efatal text"), Buffer.from([0, 1, 2])]))
      assert.deepStrictEqual(e.events, [{ _tag: "GssFailed", message: "fatal text" }])

      const big = fakeApi()
      const b = setup(big)
      big.completeInit()
      const header = Buffer.alloc(4)
      header.writeUInt32BE(65533)
      b.socket.receive(header)
      assert.deepStrictEqual(b.events, [{
        _tag: "GssFailed",
        message: "oversize GSSAPI packet sent by the server (65533 > 65532)"
      }])

      const gone = fakeApi()
      const g = setup(gone)
      gone.completeInit()
      g.socket.emit("end")
      assert.strictEqual(g.events.length, 1)
      assert.strictEqual(g.events[0]!._tag, "GssFailed")
      assert.match((g.events[0] as { message: string }).message, /^server closed the connection unexpectedly/)
    }))

  it.effect("after the handshake: oversize packets and unconfidential messages are I/O errors", () =>
    Effect.sync(() => {
      const fake = fakeApi({ rounds: 0 })
      const { events, socket } = setup(fake)
      fake.completeInit()
      assert.deepStrictEqual(events, [{ _tag: "GssEstablished" }])
      const header = Buffer.alloc(4)
      header.writeUInt32BE(16381)
      socket.receive(header)
      assert.deepStrictEqual(events[1], {
        _tag: "IoError",
        code: "EIO",
        message: "oversize GSSAPI packet sent by the server (16381 > 16380)"
      })

      const plain = fakeApi({
        rounds: 0,
        unwrap: (_c, input) => ({ output: input, confidential: false }),
        wrap: (_c, input) => ({ output: input, confidential: false })
      })
      const p = setup(plain)
      plain.completeInit()
      p.socket.receive(frame("W:x"))
      assert.deepStrictEqual(p.events[1], {
        _tag: "IoError",
        code: "EIO",
        message: "incoming GSSAPI message did not use confidentiality"
      })
      // and a write whose wrap would not be confidential is refused, not sent
      p.channel.write(Buffer.from("key"))
      assert.deepStrictEqual(p.socket.written, [])
    }))

  it.effect("closing while gss_init_sec_context runs releases the handles when it returns", () =>
    Effect.sync(() => {
      const fake = fakeApi()
      const { channel, events, socket } = setup(fake)
      channel.close()
      assert.isTrue(fake.live.has("context"))
      fake.completeInit()
      assert.strictEqual(fake.live.size, 0)
      assert.deepStrictEqual(events, [])
      assert.deepStrictEqual(socket.written, [])
    }))
})
