import { assert, layer } from "@effect/vitest"
import { EmbeddedPostgres, FaultProxy, TestSession } from "@pqcancel/test-utils"
import * as Effect from "effect/Effect"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Os from "node:os"
import * as Path from "node:path"

const ca = Fs.readFileSync(EmbeddedPostgres.fixturePath("ca.crt"), "utf8")
const int32 = (n: number) => {
  const b = Buffer.alloc(4)
  b.writeInt32BE(n)
  return b
}
// a CancelRequest with a key no backend has: the postmaster reads it and closes
const bogusCancel = Buffer.concat([int32(16), int32(80877102), int32(1), int32(2)])

const through = (proxy: FaultProxy.FaultProxy, options: Partial<TestSession.ConnectOptions> = {}) =>
  TestSession.connect({ transport: "tcp", port: proxy.port, ...options })

/** A raw socket to the proxy; the Scope destroys it */
const rawSocket = (port: number) =>
  Effect.acquireRelease(
    Effect.callback<Net.Socket, Error>((resume) => {
      const socket = Net.connect(port, "127.0.0.1", () => resume(Effect.succeed(socket)))
      socket.once("error", (error: Error) => resume(Effect.fail(error)))
    }),
    (socket) => Effect.sync(() => socket.destroy())
  )

/** The socket's end: `end` (FIN), or the error code it failed with */
const outcome = (socket: Net.Socket) =>
  Effect.callback<string>((resume) => {
    socket.resume()
    socket.once("end", () => resume(Effect.succeed("end")))
    socket.once("error", (error: NodeJS.ErrnoException) => resume(Effect.succeed(error.code ?? "error")))
  })

const proxyTo = (cluster: EmbeddedPostgres.Cluster) => FaultProxy.make({ upstream: { port: cluster.port } })

layer(EmbeddedPostgres.layer18, { excludeTestServices: true, timeout: "60 seconds" })("FaultProxy", (it) => {
  it.effect("latency and 1–5 byte slices both ways: a TLS session works and is seen as an SSLRequest", () =>
    Effect.gen(function*() {
      const cluster = yield* EmbeddedPostgres.EmbeddedPostgres
      const proxy = yield* proxyTo(cluster)
      proxy.setRule(() => ({ latencyMs: { up: 5, down: 5 }, slice: true }))
      const session = yield* through(proxy, { tls: "sslrequest", ca })
      const result = yield* session.query("SELECT repeat('x', 3000)")
      assert.strictEqual(result._tag === "Ok" ? result.rows[0]![0]!.length : 0, 3000)
      const [record] = proxy.records()
      assert.strictEqual(record?.first, "SSLRequest")
      assert.isTrue(record!.bytesDown > 3000)
    }))

  it.effect("a CancelRequest is told apart by its first packet; a held close reaches the client later", () =>
    Effect.gen(function*() {
      const cluster = yield* EmbeddedPostgres.EmbeddedPostgres
      const proxy = yield* proxyTo(cluster)
      proxy.setRule((c) => c.first === "CancelRequest" ? { holdCloseMs: 50 } : undefined)
      const socket = yield* rawSocket(proxy.port)
      socket.write(bogusCancel)
      assert.strictEqual(yield* outcome(socket), "end")
      const [record] = proxy.records()
      assert.strictEqual(record?.first, "CancelRequest")
      assert.deepStrictEqual(record?.fault, { holdCloseMs: 50 })
      assert.isTrue(record?.serverClosed)
    }))

  it.effect("a close never passed on: the server closed, the client still waits", () =>
    Effect.gen(function*() {
      const cluster = yield* EmbeddedPostgres.EmbeddedPostgres
      const proxy = yield* proxyTo(cluster)
      proxy.setRule(() => ({ holdCloseMs: "never" }))
      const socket = yield* rawSocket(proxy.port)
      let ended = false
      socket.on("end", () => {
        ended = true
      })
      socket.write(bogusCancel)
      yield* proxy.awaitRecord(0, (r) => r.serverClosed)
      assert.isFalse(ended)
      assert.isFalse(proxy.records()[0]!.closed)
      socket.destroy()
      assert.isTrue(yield* proxy.settled(0))
      // and the proxy's own sockets, both sides
      assert.isTrue(yield* proxy.drained(0))
      assert.strictEqual(proxy.open(), 0)
    }))

  it.effect("a reset after N bytes from the server: the session's startup fails with ECONNRESET", () =>
    Effect.gen(function*() {
      const cluster = yield* EmbeddedPostgres.EmbeddedPostgres
      const proxy = yield* proxyTo(cluster)
      proxy.setRule(() => ({ resetAfter: { down: 10 } }))
      const error = yield* Effect.flip(through(proxy))
      assert.include(error.message, "ECONNRESET")
      assert.strictEqual(proxy.records()[0]?.faulted, "reset")
    }))

  for (const tls of ["sslrequest", "direct"] as const) {
    for (const how of ["reset", "close"] as const) {
      it.effect(`${how} in the middle of the TLS handshake (${tls})`, () =>
        Effect.gen(function*() {
          const cluster = yield* EmbeddedPostgres.EmbeddedPostgres
          const proxy = yield* proxyTo(cluster)
          proxy.setRule(() => ({ inHandshake: how }))
          const error = yield* Effect.flip(through(proxy, { tls, ca }))
          assert.isDefined(error.message)
          const [record] = proxy.records()
          assert.strictEqual(record?.first, tls === "direct" ? "TLS" : "SSLRequest")
          assert.strictEqual(record?.faulted, how)
          // the server's handshake bytes were seen, not delivered
          assert.isTrue(record!.bytesDown > 1)
        }))
    }
  }

  it.effect("a blackhole reads and never answers", () =>
    Effect.gen(function*() {
      const cluster = yield* EmbeddedPostgres.EmbeddedPostgres
      const proxy = yield* proxyTo(cluster)
      proxy.setRule(() => ({ blackhole: true }))
      const error = yield* Effect.flip(through(proxy, { connectTimeout: "300 millis" }))
      assert.isDefined(error)
      const [record] = proxy.records()
      assert.strictEqual(record?.first, "StartupMessage")
      assert.isTrue(record!.bytesUp > 8)
      assert.strictEqual(record?.bytesDown, 0)
    }))

  it.effect("refuse closes the listener (ECONNREFUSED), accept opens it again on the same port", () =>
    Effect.gen(function*() {
      const cluster = yield* EmbeddedPostgres.EmbeddedPostgres
      const proxy = yield* proxyTo(cluster)
      const before = yield* through(proxy)
      yield* proxy.refuse
      const refused = yield* Effect.flip(rawSocket(proxy.port))
      assert.strictEqual((refused as NodeJS.ErrnoException).code, "ECONNREFUSED")
      // established sessions go on
      assert.strictEqual((yield* before.query("SELECT 1"))._tag, "Ok")
      yield* proxy.accept
      const after = yield* through(proxy)
      assert.strictEqual((yield* after.query("SELECT 2"))._tag, "Ok")
    }))

  it.effect("a stalled session: the query never reaches the server, nothing is closed", () =>
    Effect.gen(function*() {
      const cluster = yield* EmbeddedPostgres.EmbeddedPostgres
      const proxy = yield* proxyTo(cluster)
      const session = yield* through(proxy, { parameters: { application_name: "stalled" } })
      const monitor = yield* TestSession.connectTo(cluster, { transport: "unix" })
      assert.strictEqual(proxy.stall(), 1)
      const sent = proxy.records()[0]!.bytesUp
      yield* session.startQuery("SELECT 'never arrives'")
      yield* proxy.awaitRecord(0, (r) => r.bytesUp > sent)
      const seen = yield* monitor.query(
        `SELECT query FROM pg_stat_activity WHERE pid = ${session.backendKey.pid}`
      )
      assert.isFalse(seen._tag === "Ok" && seen.rows[0]?.[0] === "SELECT 'never arrives'")
      const [record] = proxy.records()
      assert.isFalse(record?.closed)
      assert.isFalse(record?.serverClosed)
    }))

  it.effect("listens on a unix socket in front of the server's socket", () =>
    Effect.gen(function*() {
      const cluster = yield* EmbeddedPostgres.EmbeddedPostgres
      const dir = yield* Effect.acquireRelease(
        Effect.sync(() => Fs.mkdtempSync(Path.join(Os.tmpdir(), "faultproxy-"))),
        (dir) => Effect.sync(() => Fs.rmSync(dir, { recursive: true, force: true }))
      )
      const path = Path.join(dir, `.s.PGSQL.${cluster.port}`)
      const proxy = yield* FaultProxy.make({ upstream: { path: cluster.socketPath }, listen: { path } })
      proxy.setRule(() => ({ slice: true }))
      const session = yield* TestSession.connect({ transport: "unix", port: cluster.port, socketPath: path })
      assert.strictEqual((yield* session.query("SELECT 3"))._tag, "Ok")
      assert.strictEqual(proxy.records()[0]?.first, "StartupMessage")
    }))
})
