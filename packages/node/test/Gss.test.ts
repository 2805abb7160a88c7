/**
 * GSSAPI encryption against a real MIT KDC and a PostgreSQL built with GSSAPI (Kerberos.layer): a cancel over GSS
 * encryption stops the query, its bytes on the wire carry no plaintext key, `prefer` without a credential falls back,
 * `require` without one fails with libpq's text, and a wrong service name fails before the key is sent.
 */
import { assert, describe, layer } from "@effect/vitest"
import { CancelError, CancelKey, Protocol } from "@pqcancel/core"
import { CancelConnection } from "@pqcancel/core"
import { ConnectionOptions } from "@pqcancel/core"
import type { Transport } from "@pqcancel/core/Transport"
import { NodeTransport } from "@pqcancel/node"
import * as NodeGss from "@pqcancel/node/NodeGss"
import { EmbeddedPostgres, FakePostmaster, FaultProxy, Kerberos, TestSession } from "@pqcancel/test-utils"
import * as Effect from "effect/Effect"
import type * as Layer from "effect/Layer"
import * as Schedule from "effect/Schedule"
import * as Net from "node:net"
import { assertCancelled, assertStillSleeping, conninfo, runCancel, sessionInfo, sleepingQuery } from "./fixtures.ts"

const missing = Kerberos.unavailableReason() ??
  (Effect.runSync(NodeGss.available()) ? undefined : NodeGss.unavailableReason())

/** A TCP proxy in front of the server that records what the client sends */
const recordingProxy = (port: number) =>
  Effect.acquireRelease(
    Effect.callback<{ readonly server: Net.Server; readonly port: number; readonly sent: Array<Buffer> }>(
      (resume) => {
        const sent: Array<Buffer> = []
        const sockets = new Set<Net.Socket>()
        const server = Net.createServer((client) => {
          const upstream = Net.connect({ host: "127.0.0.1", port })
          sockets.add(client).add(upstream)
          client.on("data", (chunk) => {
            sent.push(chunk)
            upstream.write(chunk)
          })
          upstream.on("data", (chunk) => client.write(chunk))
          client.on("end", () => upstream.end())
          upstream.on("end", () => client.end())
          client.on("error", () => upstream.destroy())
          upstream.on("error", () => client.destroy())
          client.on("close", () => sockets.delete(client))
          upstream.on("close", () => sockets.delete(upstream))
        })
        server.on("close", () => {
          for (const socket of sockets) socket.destroy()
        })
        server.listen({ host: "127.0.0.1", port: 0 }, () =>
          resume(Effect.succeed({ server, port: (server.address() as Net.AddressInfo).port, sent })))
      }
    ),
    (proxy) =>
      Effect.callback<void>((resume) => {
        proxy.server.close(() =>
          resume(Effect.void)
        )
        proxy.server.emit("close")
      })
  )

const indexOf = (haystack: Uint8Array, needle: Uint8Array): number => Buffer.from(haystack).indexOf(needle)

/** A sleeping query on a plaintext TCP session, cancelled with the given conninfo keywords and transport */
const gssCancel = (
  extra: Record<string, string>,
  transport: Layer.Layer<Transport> = NodeTransport.layer,
  address?: (info: CancelConnection.SessionInfo) => CancelConnection.SessionInfo
) =>
  Effect.gen(function*() {
    const cluster = yield* EmbeddedPostgres.EmbeddedPostgres
    const session = yield* TestSession.connectTo(cluster, { transport: "tcp" })
    const monitor = yield* TestSession.connectTo(cluster, { transport: "unix" })
    const parsed = yield* sessionInfo(session, conninfo(cluster, "tcp", { host: "localhost", ...extra }))
    const info = address === undefined ? parsed : address(parsed)
    const pending = yield* sleepingQuery(session, monitor)
    const outcome = yield* runCancel(info).pipe(Effect.provide(transport))
    return { ...outcome, info, pending, session, monitor }
  })

const SERVER_CLOSED = "server closed the connection unexpectedly\n" +
  "\tThis probably means the server terminated abnormally\n" +
  "\tbefore or while processing the request."

/** A cancel (with the realm's credential) against a scripted fake server; what it reported and what was received */
const fakeCancel = (script: (index: number) => ReadonlyArray<FakePostmaster.Step>, conninfo: string) =>
  Effect.gen(function*() {
    const fake = yield* FakePostmaster.make({ script })
    const options = yield* ConnectionOptions.fromString(`host=localhost port=${fake.port} ${conninfo}`, {})
    const info: CancelConnection.SessionInfo = {
      options,
      host: options.hosts[0]!,
      address: { _tag: "Tcp", address: "127.0.0.1", port: fake.port, family: 4 },
      key: CancelKey.unsafeMake({ pid: 4242, secret: new Uint8Array([9, 8, 7, 6]), protocolVersion: "3.0" })
    }
    const outcome = yield* runCancel(info).pipe(Effect.provide(NodeTransport.layer))
    const count = yield* fake.connections
    const records = yield* Effect.forEach(Array.from({ length: count }, (_, i) => i), (i) => fake.awaitFinished(i))
    const prefix = `connection to server at "localhost" (127.0.0.1), port ${fake.port} failed: `
    return { ...outcome, records, prefix }
  })

const kinds = (record: FakePostmaster.ConnectionRecord) => record.packets.map((p) => p.kind)

if (missing !== undefined) {
  // oxlint-disable-next-line effecttsgo/no-console -- say once, in the test output, why the GSS suite is skipped
  console.warn(`GSSAPI encryption tests skipped: ${missing}`)
}

// without the KDC tools, the server or the GSSAPI library, the suite is skipped (and the warning above says why)
describe.skipIf(missing !== undefined)("GSSAPI encryption", () => {
  layer(Kerberos.layer, { excludeTestServices: true, timeout: "90 seconds" })("real KDC and server", (it) => {
    it.effect("gssencmode=require cancels over GSS encryption", () =>
      Effect.gen(function*() {
        const result = yield* gssCancel({ gssencmode: "require" })
        assert.isTrue(result.ok, result.error)
        // libpq's statuses: MADE after the connect and again once the GSS context is up
        assert.deepStrictEqual(result.statuses, [
          "ALLOCATED",
          "STARTED",
          "MADE",
          "GSS_STARTUP",
          "MADE",
          "AWAITING_RESPONSE",
          "OK"
        ])
        yield* assertCancelled(result.pending)
      }).pipe(EmbeddedPostgres.withServerLogOnFailure))

    it.effect("gssencmode=prefer with a credential uses GSS (before TLS)", () =>
      Effect.gen(function*() {
        const result = yield* gssCancel({ gssencmode: "prefer", sslmode: "require" })
        assert.isTrue(result.ok, result.error)
        assert.include(result.statuses, "GSS_STARTUP")
        assert.notInclude(result.statuses, "SSL_STARTUP")
        yield* assertCancelled(result.pending)
      }))

    it.effect("the cancel connection's bytes carry no plaintext key", () =>
      Effect.gen(function*() {
        const cluster = yield* EmbeddedPostgres.EmbeddedPostgres
        const proxy = yield* recordingProxy(cluster.port)
        const result = yield* gssCancel({ gssencmode: "require" }, NodeTransport.layer, (info) => ({
          ...info,
          address: { _tag: "Tcp", address: "127.0.0.1", port: proxy.port, family: 4 }
        }))
        assert.isTrue(result.ok, result.error)
        yield* assertCancelled(result.pending)
        const wire = Buffer.concat(proxy.sent)
        const key = CancelKey.unsafeMake(result.session.backendKey)
        // GSSENCRequest first, then length-prefixed tokens and wrapped packets: never the CancelRequest in clear
        assert.isTrue(wire.subarray(0, 8).equals(Protocol.gssEncRequest))
        assert.strictEqual(indexOf(wire, Protocol.encodeCancelRequest(key)), -1)
        const pidAndSecret = Buffer.concat([
          Buffer.from(Protocol.encodeCancelRequest(key).subarray(8, 12)),
          Buffer.from(result.session.backendKey.secret)
        ])
        assert.strictEqual(indexOf(wire, pidAndSecret), -1)
        assert.isAbove(wire.length, 8 + 4 + 16)
      }))

    it.effect("gssencmode=prefer without a credential falls back to TLS", () =>
      Effect.gen(function*() {
        const realm = yield* Kerberos.Kerberos
        const result = yield* gssCancel(
          { gssencmode: "prefer", sslmode: "prefer" },
          NodeTransport.layerWith({ gss: { ccache: realm.emptyCcache } })
        )
        assert.isTrue(result.ok, result.error)
        assert.notInclude(result.statuses, "GSS_STARTUP")
        assert.include(result.statuses, "SSL_STARTUP")
        yield* assertCancelled(result.pending)
      }))

    it.effect("gssencmode=prefer without a credential and sslmode=disable falls back to plaintext", () =>
      Effect.gen(function*() {
        const realm = yield* Kerberos.Kerberos
        const result = yield* gssCancel(
          { gssencmode: "prefer", sslmode: "disable" },
          NodeTransport.layerWith({ gss: { ccache: realm.emptyCcache } })
        )
        assert.isTrue(result.ok, result.error)
        assert.notInclude(result.statuses, "GSS_STARTUP")
        assert.notInclude(result.statuses, "SSL_STARTUP")
        yield* assertCancelled(result.pending)
      }))

    it.effect("gssencmode=require without a credential fails with libpq's text; the query keeps running", () =>
      Effect.gen(function*() {
        const realm = yield* Kerberos.Kerberos
        const result = yield* gssCancel(
          { gssencmode: "require" },
          NodeTransport.layerWith({ gss: { ccache: realm.emptyCcache } })
        )
        assert.isFalse(result.ok)
        assert.strictEqual(result.error, "GSSAPI encryption required but no credential cache")
        yield* assertStillSleeping(result.monitor, result.session)
      }))

    it.effect("gssencmode=require with GSS turned off in the transport fails like libpq without GSS", () =>
      Effect.gen(function*() {
        const result = yield* gssCancel({ gssencmode: "require" }, NodeTransport.layerWith({ gss: false }))
        assert.isFalse(result.ok)
        assert.strictEqual(result.error, "GSSAPI encryption required but no credential cache")
        yield* assertStillSleeping(result.monitor, result.session)
      }))

    it.effect("a wrong krbsrvname fails before the key is sent; the query keeps running", () =>
      Effect.gen(function*() {
        const cluster = yield* EmbeddedPostgres.EmbeddedPostgres
        const proxy = yield* recordingProxy(cluster.port)
        const result = yield* gssCancel(
          { gssencmode: "require", krbsrvname: "wrongservice" },
          NodeTransport.layer,
          (info) => ({ ...info, address: { _tag: "Tcp", address: "127.0.0.1", port: proxy.port, family: 4 } })
        )
        assert.isFalse(result.ok)
        assert.match(
          result.error ?? "",
          /^connection to server at "localhost" \(127\.0\.0\.1\), port \d+ failed: could not initiate GSSAPI security context: .*not found in Kerberos database/
        )
        assert.include(result.statuses, "GSS_STARTUP")
        // the client sent only the GSSENCRequest: the context failed before any token, let alone the key
        assert.isTrue(Buffer.concat(proxy.sent).equals(Protocol.gssEncRequest))
        yield* assertStillSleeping(result.monitor, result.session)
      }))

    it.effect("a wrong krbsrvname with gssencmode=prefer falls back on a new socket, as libpq does", () =>
      Effect.gen(function*() {
        const result = yield* gssCancel({ gssencmode: "prefer", sslmode: "disable", krbsrvname: "wrongservice" })
        assert.isTrue(result.ok, result.error)
        assert.include(result.statuses, "GSS_STARTUP")
        yield* assertCancelled(result.pending)
      }))

    it.effect("cancelAll over GSS encryption: concurrent security contexts, every query cancelled", () =>
      Effect.gen(function*() {
        const cluster = yield* EmbeddedPostgres.EmbeddedPostgres
        const monitor = yield* TestSession.connectTo(cluster, { transport: "unix" })
        const started = yield* Effect.forEach([1, 2, 3, 4, 5, 6], () =>
          Effect.gen(function*() {
            const session = yield* TestSession.connectTo(cluster, { transport: "tcp" })
            const info = yield* sessionInfo(
              session,
              conninfo(cluster, "tcp", { host: "localhost", gssencmode: "require" })
            )
            const pending = yield* sleepingQuery(session, monitor)
            return { info, pending }
          }))
        const results = yield* CancelConnection.cancelAll(started.map((s) => s.info)).pipe(
          Effect.provide(NodeTransport.layer)
        )
        assert.deepStrictEqual(results.map((r) => r._tag), [
          "Success",
          "Success",
          "Success",
          "Success",
          "Success",
          "Success"
        ])
        for (const { pending } of started) yield* assertCancelled(pending)
      }))

    it.effect("'N' with gssencmode=require fails with libpq's text and sends no key", () =>
      Effect.gen(function*() {
        const result = yield* fakeCancel(
          () => [{ expect: "gssEncRequest" }, { reply: "N" }, "awaitEof"],
          "gssencmode=require"
        )
        assert.isFalse(result.ok)
        assert.strictEqual(
          result.error,
          `${result.prefix}server doesn't support GSSAPI encryption, but it was required`
        )
        assert.deepStrictEqual(result.records.map(kinds), [["gssEncRequest"]])
      }))

    it.effect("'N' with gssencmode=prefer continues on the same socket (sslmode=disable: plaintext)", () =>
      Effect.gen(function*() {
        const result = yield* fakeCancel(
          () => [{ expect: "gssEncRequest" }, { reply: "N" }, { expect: "cancelRequest" }],
          "gssencmode=prefer sslmode=disable"
        )
        assert.isTrue(result.ok, result.error)
        assert.deepStrictEqual(result.records.map(kinds), [["gssEncRequest", "cancelRequest"]])
      }))

    it.effect("'E' fails the attempt: require reports libpq's text, prefer opens a new socket", () =>
      Effect.gen(function*() {
        const required = yield* fakeCancel(
          () => [{ expect: "gssEncRequest" }, { replyThenClose: "E" }],
          "gssencmode=require"
        )
        assert.isFalse(required.ok)
        assert.strictEqual(
          required.error,
          `${required.prefix}server sent an error response during GSS encryption exchange`
        )
        const preferred = yield* fakeCancel(
          (i) => i === 0 ? [{ expect: "gssEncRequest" }, { replyThenClose: "E" }] : [{ expect: "cancelRequest" }],
          "gssencmode=prefer sslmode=disable"
        )
        assert.isTrue(preferred.ok, preferred.error)
        assert.deepStrictEqual(preferred.records.map(kinds), [["gssEncRequest"], ["cancelRequest"]])
      }))

    it.effect("bytes after 'G' (before any token) are refused: received unencrypted data", () =>
      Effect.gen(function*() {
        const result = yield* fakeCancel(
          () => [{ expect: "gssEncRequest" }, { reply: "G\u0000\u0000\u0000\u0004junk" }, "awaitEof"],
          "gssencmode=require"
        )
        assert.isFalse(result.ok)
        assert.strictEqual(result.error, `${result.prefix}received unencrypted data after GSSAPI encryption response`)
        assert.deepStrictEqual(result.records.map(kinds), [["gssEncRequest"]])
      }))

    it.effect("a server that hangs up during the GSS handshake: require fails, prefer retries on a new socket", () =>
      Effect.gen(function*() {
        const required = yield* fakeCancel(
          () => [{ expect: "gssEncRequest" }, { replyThenClose: "G" }],
          "gssencmode=require"
        )
        assert.isFalse(required.ok)
        assert.strictEqual(required.error, `${required.prefix}${SERVER_CLOSED}`)
        assert.deepStrictEqual(required.records.map(kinds), [["gssEncRequest"]])
        const preferred = yield* fakeCancel(
          (i) => i === 0 ? [{ expect: "gssEncRequest" }, { replyThenClose: "G" }] : [{ expect: "cancelRequest" }],
          "gssencmode=prefer sslmode=disable"
        )
        assert.isTrue(preferred.ok, preferred.error)
        assert.deepStrictEqual(preferred.records.map(kinds), [["gssEncRequest"], ["cancelRequest"]])
      }))

    // docs/reliability.md: the network failing a handshake is transient, also GSS's
    for (const how of ["reset", "close"] as const) {
      it.effect(`a ${how} in the middle of the GSS handshake is transient: retried, the query cancelled`, () =>
        Effect.gen(function*() {
          const cluster = yield* EmbeddedPostgres.EmbeddedPostgres
          const proxy = yield* FaultProxy.make({ upstream: { port: cluster.port } })
          const session = yield* TestSession.connectTo(cluster, { transport: "tcp" })
          const monitor = yield* TestSession.connectTo(cluster, { transport: "unix" })
          const parsed = yield* sessionInfo(
            session,
            conninfo(cluster, "tcp", { host: "localhost", gssencmode: "require" })
          )
          const info: CancelConnection.SessionInfo = {
            ...parsed,
            address: { _tag: "Tcp", address: "127.0.0.1", port: proxy.port, family: 4 }
          }
          const pending = yield* sleepingQuery(session, monitor)
          // one attempt (libpq's): the fault fails it, transiently
          proxy.setRule((c) => c.index === 0 ? { inHandshake: how } : undefined)
          const failed = yield* Effect.flip(CancelConnection.cancel(info))
          assert.strictEqual(failed._tag, "CancelFailed")
          assert.isTrue(CancelError.isTransient(failed), failed.message)
          assert.strictEqual(proxy.records()[0]?.first, "GSSENCRequest")
          assert.strictEqual(proxy.records()[0]?.faulted, how)
          yield* assertStillSleeping(monitor, session)
          // with a retry schedule the next attempt gets through
          proxy.setRule((c) => c.index === 1 ? { inHandshake: how } : undefined)
          yield* CancelConnection.cancel(info, { retry: Schedule.recurs(2) })
          assert.strictEqual(proxy.records().length, 3)
          yield* assertCancelled(pending)
        }).pipe(Effect.provide(NodeTransport.layer)))
    }

    it.effect("credentialsAvailable: the user's ticket yes, an empty cache no", () =>
      Effect.gen(function*() {
        const realm = yield* Kerberos.Kerberos
        assert.isTrue(yield* NodeGss.credentialsAvailable())
        assert.isTrue(yield* NodeGss.credentialsAvailable({ ccache: realm.ccache }))
        assert.isFalse(yield* NodeGss.credentialsAvailable({ ccache: realm.emptyCcache }))
        // the recent-answer variant used for gssencmode=prefer agrees, fresh and cached
        for (let i = 0; i < 2; i++) {
          assert.isTrue(yield* NodeGss.credentialsAvailableRecent({ ccache: realm.ccache }))
          assert.isFalse(yield* NodeGss.credentialsAvailableRecent({ ccache: realm.emptyCcache }))
        }
      }))
  })
})
