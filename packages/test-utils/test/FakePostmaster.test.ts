import { assert, describe, it } from "@effect/vitest"
import { EmbeddedPostgres, FakePostmaster, TestSession } from "@pqcancel/test-utils"
import * as Effect from "effect/Effect"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Tls from "node:tls"

const ca = Fs.readFileSync(EmbeddedPostgres.fixturePath("ca.crt"), "utf8")
const int32 = (n: number) => {
  const b = Buffer.alloc(4)
  b.writeInt32BE(n)
  return b
}
const sslRequest = Buffer.concat([int32(8), int32(80877103)])
const cancelRequest = (pid: number, key: Uint8Array) =>
  Buffer.concat([int32(12 + key.length), int32(80877102), int32(pid), key])
const key32 = Buffer.from(Array.from({ length: 32 }, (_, i) => (i * 37 + 11) & 0xff))
const contains = (haystack: Uint8Array, needle: Uint8Array) => Buffer.from(haystack).indexOf(needle) !== -1

const connectRaw = (port: number) =>
  Effect.acquireRelease(
    Effect.callback<Net.Socket, Error>((resume) => {
      const socket = Net.connect(port, "127.0.0.1", () => resume(Effect.succeed(socket)))
      socket.once("error", (error: Error) => resume(Effect.fail(error)))
    }),
    (socket) => Effect.sync(() => socket.destroy())
  )

const readOnce = (stream: Net.Socket) =>
  Effect.callback<Buffer, Error>((resume) => {
    stream.once("data", (chunk: Buffer) => resume(Effect.succeed(chunk)))
    stream.once("error", (error: Error) => resume(Effect.fail(error)))
  })

/** Waits for the server's FIN (or a close). */
const awaitEnd = (stream: Net.Socket) =>
  Effect.callback<void>((resume) => {
    if (stream.readableEnded || stream.destroyed) return resume(Effect.void)
    stream.resume()
    stream.once("end", () => resume(Effect.void))
    stream.once("close", () => resume(Effect.void))
  })

const tlsOver = (options: Tls.ConnectionOptions) =>
  Effect.acquireRelease(
    Effect.callback<Tls.TLSSocket, Error>((resume) => {
      const tls = Tls.connect({ ca, servername: "localhost", ...options })
      tls.once("secureConnect", () => resume(Effect.succeed(tls)))
      tls.once("error", (error: Error) => resume(Effect.fail(error)))
    }),
    (tls) => Effect.sync(() => tls.destroy())
  )

const R_OK = FakePostmaster.backendMessage("R", int32(0))
const READY = FakePostmaster.backendMessage("Z", Buffer.from("I"))

describe("FakePostmaster", () => {
  it.live("SSLRequest, S, TLS, CancelRequest: the key never crosses the wire in plaintext", () =>
    Effect.gen(function*() {
      const fake = yield* FakePostmaster.make({
        script: [
          { expect: "sslRequest" },
          { reply: "S" },
          { tlsUpgrade: FakePostmaster.serverTls() },
          { expect: "cancelRequest" }
        ]
      })
      const raw = yield* connectRaw(fake.port)
      raw.write(sslRequest)
      const answer = yield* readOnce(raw)
      assert.strictEqual(answer.toString("latin1"), "S")
      const tls = yield* tlsOver({ socket: raw })
      tls.write(cancelRequest(4242, key32))
      yield* awaitEnd(tls)
      const record = yield* fake.awaitFinished(0)
      assert.strictEqual(record.outcome, "completed")
      assert.deepStrictEqual(record.packets, [
        { kind: "sslRequest", tls: false },
        { kind: "cancelRequest", pid: 4242, key: new Uint8Array(key32), tls: true }
      ])
      assert.strictEqual(record.tls?.protocol, "TLSv1.3")
      assert.deepStrictEqual(record.plaintext, new Uint8Array(sslRequest))
      assert.isTrue(record.wire.length > sslRequest.length)
      assert.isFalse(contains(record.wire, key32))
      assert.strictEqual(yield* fake.connections, 1)
    }))

  it.live("a client that hangs up instead of starting TLS ends the connection (no wait forever)", () =>
    Effect.gen(function*() {
      const fake = yield* FakePostmaster.make({
        script: [
          { expect: "sslRequest" },
          { reply: "S" },
          { tlsUpgrade: FakePostmaster.serverTls() },
          { expect: "cancelRequest" }
        ]
      })
      const raw = yield* connectRaw(fake.port)
      raw.write(sslRequest)
      assert.strictEqual((yield* readOnce(raw)).toString("latin1"), "S")
      raw.end()
      const record = yield* fake.awaitFinished(0)
      assert.strictEqual(record.outcome, "peerClosed")
      assert.isUndefined(record.tls)
    }))

  it.live("SSLRequest answered N, then a plaintext CancelRequest is recorded as plaintext", () =>
    Effect.gen(function*() {
      const fake = yield* FakePostmaster.make({
        script: [{ expect: "sslRequest" }, { reply: "N" }, { expect: "cancelRequest" }]
      })
      const raw = yield* connectRaw(fake.port)
      raw.write(sslRequest)
      assert.strictEqual((yield* readOnce(raw)).toString("latin1"), "N")
      raw.write(cancelRequest(7, key32.subarray(0, 4)))
      yield* awaitEnd(raw)
      const record = yield* fake.awaitFinished(0)
      assert.deepStrictEqual(record.packets[1], {
        kind: "cancelRequest",
        pid: 7,
        key: new Uint8Array(key32.subarray(0, 4)),
        tls: false
      })
      assert.isTrue(contains(record.plaintext, key32.subarray(0, 4)))
      assert.isUndefined(record.tls)
    }))

  it.live("direct TLS: ClientHello detected, ALPN postgresql negotiated", () =>
    Effect.gen(function*() {
      const fake = yield* FakePostmaster.make({
        script: [
          { expect: "directTls" },
          { tlsUpgrade: FakePostmaster.serverTls({ requireAlpn: true }) },
          { expect: "cancelRequest" }
        ]
      })
      const tls = yield* tlsOver({ host: "127.0.0.1", port: fake.port, ALPNProtocols: ["postgresql"] })
      assert.strictEqual(tls.alpnProtocol, "postgresql")
      tls.write(cancelRequest(99, key32))
      yield* awaitEnd(tls)
      const record = yield* fake.awaitFinished(0)
      assert.strictEqual(record.outcome, "completed")
      assert.deepStrictEqual(record.tls, { protocol: "TLSv1.3", alpn: "postgresql", servername: "localhost" })
      assert.deepStrictEqual(record.packets.map((p) => [p.kind, p.tls]), [["tlsClientHello", false], [
        "cancelRequest",
        true
      ]])
      assert.isFalse(contains(record.wire, key32))
    }))

  it.live("direct TLS without ALPN is dropped when ALPN is required", () =>
    Effect.gen(function*() {
      const fake = yield* FakePostmaster.make({
        script: [{ expect: "directTls" }, { tlsUpgrade: FakePostmaster.serverTls({ requireAlpn: true }) }]
      })
      const tls = yield* tlsOver({ host: "127.0.0.1", port: fake.port })
      yield* awaitEnd(tls)
      const record = yield* fake.awaitFinished(0)
      assert.strictEqual(record.outcome, "tlsError")
      assert.strictEqual(record.tls?.alpn, false)
    }))

  it.live("faults seen by TestSession: E to SSLRequest, garbage instead of ServerHello, RST", () =>
    Effect.gen(function*() {
      const fake = yield* FakePostmaster.make({
        script: (index) =>
          index === 0
            ? [{ expect: "sslRequest" }, {
              replyThenClose: FakePostmaster.errorPacket({ code: "08P01", message: "unsupported frontend protocol" })
            }]
            : index === 1
            ? [{ expect: "sslRequest" }, { reply: "S" }, { tlsFail: "garbage" }]
            : [{ expect: "sslRequest" }, "reset"]
      })
      const options = { transport: "tcp", port: fake.port, tls: "sslrequest", ca } as const
      const e0 = yield* TestSession.connect(options).pipe(Effect.flip)
      assert.strictEqual(e0._tag, "TlsError")
      assert.include(e0.message, "received invalid response to SSL negotiation: E")
      const e1 = yield* TestSession.connect(options).pipe(Effect.flip)
      assert.strictEqual(e1._tag, "TlsError")
      const garbage = yield* fake.awaitFinished(1)
      assert.strictEqual(garbage.detail, "answered garbage instead of a ServerHello")
      assert.deepStrictEqual(garbage.plaintext, new Uint8Array(sslRequest))
      assert.isTrue(garbage.wire.length > sslRequest.length)
      const e2 = yield* TestSession.connect(options).pipe(Effect.flip)
      assert.strictEqual(e2._tag, "SessionClosed")
      assert.strictEqual((yield* fake.awaitFinished(2)).detail, "reset (RST)")
    }))

  it.live("a hanging server trips the client's connect timeout", () =>
    Effect.gen(function*() {
      const fake = yield* FakePostmaster.make({ script: ["hang"] })
      const error = yield* TestSession.connect({ transport: "tcp", port: fake.port, connectTimeout: "100 millis" })
        .pipe(Effect.scoped, Effect.flip)
      assert.strictEqual(error._tag, "ConnectError")
      assert.include(error.message, "timeout")
      const record = yield* fake.awaitFinished(0)
      assert.strictEqual(record.outcome, "peerClosed")
      assert.strictEqual(record.packets[0]?.kind, "startup")
    }))

  it.live("an unexpected packet ends the connection with outcome mismatch", () =>
    Effect.gen(function*() {
      const fake = yield* FakePostmaster.make({ script: [{ expect: "cancelRequest" }] })
      const error = yield* TestSession.connect({ transport: "tcp", port: fake.port }).pipe(Effect.flip)
      assert.strictEqual(error._tag, "SessionClosed")
      const record = yield* fake.awaitFinished(0)
      assert.strictEqual(record.outcome, "mismatch")
      assert.strictEqual(record.detail, "expected cancelRequest, received startup")
    }))

  it.live("a scripted startup over the Unix socket: 3.2 with a 256-byte key", () =>
    Effect.gen(function*() {
      const key = Buffer.alloc(256, 7)
      const fake = yield* FakePostmaster.make({
        unix: true,
        script: [
          { expect: "startup" },
          { reply: Buffer.concat([R_OK, FakePostmaster.backendKeyData(31337, key), READY]) },
          "awaitEof"
        ]
      })
      const session = yield* TestSession.connect({
        transport: "unix",
        port: fake.port,
        socketPath: fake.socketPath,
        protocol: "3.2"
      })
      assert.deepStrictEqual(session.backendKey, { pid: 31337, secret: new Uint8Array(key), protocolVersion: "3.2" })
      yield* session.close
      const record = yield* fake.awaitFinished(0)
      assert.strictEqual(record.transport, "unix")
      assert.strictEqual(record.outcome, "completed")
      const startup = record.packets[0]
      assert.strictEqual(startup?.kind, "startup")
      if (startup?.kind === "startup") {
        assert.strictEqual(startup.protocol, 196610)
        assert.strictEqual(startup.parameters["user"], "postgres")
      }
    }))

  it.live("an 8-byte key under protocol 3.0 is a ProtocolError", () =>
    Effect.gen(function*() {
      const fake = yield* FakePostmaster.make({
        script: [
          { expect: "startup" },
          { reply: Buffer.concat([R_OK, FakePostmaster.backendKeyData(1, Buffer.alloc(8)), READY]) },
          "awaitEof"
        ]
      })
      const error = yield* TestSession.connect({ transport: "tcp", port: fake.port }).pipe(Effect.flip)
      assert.strictEqual(error._tag, "ProtocolError")
      assert.include(error.message, "not allowed in protocol version 3.0")
    }))

  it.live("closing the scope destroys hanging connections and removes the socket directory", () =>
    Effect.gen(function*() {
      let socketDir: string | undefined
      let closedByServer = false
      const raw = yield* Effect.acquireRelease(
        Effect.sync(() => new Net.Socket()),
        (socket) => Effect.sync(() => socket.destroy())
      )
      raw.on("close", () => {
        closedByServer = true
      })
      raw.on("error", () => {})
      yield* Effect.scoped(Effect.gen(function*() {
        const fake = yield* FakePostmaster.make({ script: ["hang"], unix: true })
        socketDir = fake.socketDir
        raw.connect(fake.port, "127.0.0.1")
        raw.resume()
        yield* fake.awaitConnection(0)
        assert.isFalse(closedByServer)
      }))
      yield* Effect.callback<void>((resume) => {
        if (closedByServer) return resume(Effect.void)
        raw.once("close", () => resume(Effect.void))
      })
      assert.isTrue(closedByServer)
      assert.isFalse(Fs.existsSync(socketDir!))
    }))
})
