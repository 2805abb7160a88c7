/**
 * Faults a real postmaster won't produce on demand, against the scriptable FakePostmaster: what the cancel reports
 * (libpq 18's texts) and what the server received (never the key in plaintext when sslmode requires TLS).
 */
import { assert, describe, it } from "@effect/vitest"
import { CancelConnection, CancelKey, ConnectionOptions, LegacyCancel } from "@pqcancel/core"
import { NodeTransport } from "@pqcancel/node"
import { EmbeddedPostgres, FakePostmaster } from "@pqcancel/test-utils"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Os from "node:os"
import * as Path from "node:path"
import { runCancel } from "./fixtures.ts"

const PID = 1234
const SECRET = new Uint8Array([1, 2, 3, 4])
const KEY = CancelKey.unsafeMake({ pid: PID, secret: SECRET, protocolVersion: "3.0" })
const CA = EmbeddedPostgres.fixturePath("ca.crt")

const int32 = (n: number) => {
  const b = Buffer.alloc(4)
  b.writeInt32BE(n)
  return b
}
const SSL_REQUEST = new Uint8Array(Buffer.concat([int32(8), int32(80877103)]))
const cancelPacket = (pid: number, secret: Uint8Array) =>
  new Uint8Array(Buffer.concat([int32(12 + secret.length), int32(80877102), int32(pid), secret]))
const CANCEL_PACKET = cancelPacket(PID, SECRET)
const contains = (haystack: Uint8Array, needle: Uint8Array) => Buffer.from(haystack).indexOf(needle) !== -1

const prefix = (port: number) => `connection to server at "127.0.0.1", port ${port} failed: `
const SERVER_CLOSED = "server closed the connection unexpectedly\n" +
  "\tThis probably means the server terminated abnormally\n" +
  "\tbefore or while processing the request."

/** The SessionInfo of a session on 127.0.0.1:port, with the cancel's options from `conninfo` (host defaults to
 * 127.0.0.1) */
const session = (
  port: number,
  conninfo: string,
  key: CancelKey.CancelKey | undefined = KEY
): Effect.Effect<CancelConnection.SessionInfo, never> =>
  ConnectionOptions.fromString(`${conninfo.includes("host=") ? "" : "host=127.0.0.1 "}port=${port} ${conninfo}`, {})
    .pipe(
      Effect.map((options) => ({
        options,
        host: options.hosts[0]!,
        address: { _tag: "Tcp", address: "127.0.0.1", port, family: 4 } as const,
        key
      })),
      Effect.orDie
    )

/** One blocking cancel (create, blocking, finish); the error, if any */
const cancelError = (info: CancelConnection.SessionInfo, timeout?: Duration.Input) =>
  CancelConnection.cancel(info, { timeout }).pipe(
    Effect.flip,
    Effect.provide(NodeTransport.layer)
  )

const cancelOk = (info: CancelConnection.SessionInfo) =>
  CancelConnection.cancel(info).pipe(Effect.provide(NodeTransport.layer))

/** A TCP port on 127.0.0.1 nobody listens on: bound, then closed */
const closedPort = Effect.callback<number>((resume) => {
  const server = Net.createServer()
  server.listen(0, "127.0.0.1", () => {
    const port = (server.address() as Net.AddressInfo).port
    server.close(() => resume(Effect.succeed(port)))
  })
})

const pollToEnd = (connection: CancelConnection.CancelConnection) =>
  connection.poll.pipe(Effect.repeat({ until: (p) => p === "OK" || p === "FAILED" }))

const assertKeyNeverSent = (record: FakePostmaster.ConnectionRecord) => {
  assert.isFalse(record.packets.some((p) => p.kind === "cancelRequest"), "no CancelRequest")
  assert.isFalse(contains(record.plaintext, CANCEL_PACKET), "CancelRequest bytes in plaintext")
  assert.isFalse(contains(record.plaintext, SECRET), "key bytes in plaintext")
}

describe("faults after the CancelRequest", () => {
  it.live("1. no reply, then FIN: OK, exactly one CancelRequest with the pid and key", () =>
    Effect.gen(function*() {
      const fake = yield* FakePostmaster.make({ script: [{ expect: "cancelRequest" }] })
      yield* cancelOk(yield* session(fake.port, "sslmode=disable"))
      const record = yield* fake.awaitFinished(0)
      assert.strictEqual(record.outcome, "completed")
      assert.deepStrictEqual(record.packets, [{ kind: "cancelRequest", pid: PID, key: SECRET, tls: false }])
      assert.deepStrictEqual(record.wire, CANCEL_PACKET)
      assert.strictEqual(yield* fake.connections, 1)
    }))

  it.live("2. a byte after the request: unexpected response from server", () =>
    Effect.gen(function*() {
      const fake = yield* FakePostmaster.make({ script: [{ expect: "cancelRequest" }, { reply: "X" }, "awaitEof"] })
      const error = yield* cancelError(yield* session(fake.port, "sslmode=disable"))
      assert.strictEqual(error._tag, "CancelFailed")
      assert.strictEqual(error.message, `${prefix(fake.port)}unexpected response from server`)
      const record = yield* fake.awaitFinished(0)
      assert.deepStrictEqual(record.packets, [{ kind: "cancelRequest", pid: PID, key: SECRET, tls: false }])
      assert.strictEqual(yield* fake.connections, 1)
    }))

  it.live("3a. a server that never closes: blocking({ timeout }) ends with timeout expired", () =>
    Effect.gen(function*() {
      const fake = yield* FakePostmaster.make({ script: [{ expect: "cancelRequest" }, "hang"] })
      const error = yield* cancelError(yield* session(fake.port, "sslmode=disable"), "300 millis")
      assert.strictEqual(error._tag, "CancelTimeout")
      assert.strictEqual(error.message, `${prefix(fake.port)}timeout expired`)
      // the cancel's Scope closed the socket: the fake saw the request, then the client's close
      const record = yield* fake.awaitFinished(0)
      assert.strictEqual(record.outcome, "peerClosed")
      assert.deepStrictEqual(record.packets, [{ kind: "cancelRequest", pid: PID, key: SECRET, tls: false }])
    }))

  it.live("3b. a server that never closes: blocking() honours connect_timeout", () =>
    Effect.gen(function*() {
      const fake = yield* FakePostmaster.make({ script: [{ expect: "cancelRequest" }, "hang"] })
      const error = yield* cancelError(yield* session(fake.port, "sslmode=disable connect_timeout=2"))
      assert.strictEqual(error._tag, "CancelTimeout")
      assert.isTrue(error.message.endsWith("timeout expired"), error.message)
      assert.strictEqual(error.message, `${prefix(fake.port)}timeout expired`)
      const record = yield* fake.awaitFinished(0)
      assert.deepStrictEqual(record.packets, [{ kind: "cancelRequest", pid: PID, key: SECRET, tls: false }])
    }))

  it.live("3c. start + poll ignore connect_timeout (libpq docs): poll just keeps waiting", () =>
    Effect.gen(function*() {
      const fake = yield* FakePostmaster.make({ script: [{ expect: "cancelRequest" }, "hang"] })
      const info = yield* session(fake.port, "sslmode=disable connect_timeout=2")
      yield* Effect.scoped(Effect.gen(function*() {
        const connection = yield* CancelConnection.make(info)
        yield* connection.start
        // Connected ⇒ the CancelRequest is written ⇒ AWAITING_RESPONSE, READING
        const first = yield* connection.poll.pipe(
          Effect.repeat({ until: () => Effect.map(connection.status, (s) => s === "AWAITING_RESPONSE") })
        )
        assert.strictEqual(first, "READING")
        // longer than connect_timeout (2 s): poll neither returns nor times out by itself
        const polled = yield* Effect.timeoutOption(connection.poll, "2500 millis")
        assert.isTrue(Option.isNone(polled))
        assert.strictEqual(yield* connection.status, "AWAITING_RESPONSE")
        assert.strictEqual(yield* connection.errorMessage, prefix(fake.port))
      })).pipe(Effect.provide(NodeTransport.layer))
      const record = yield* fake.awaitFinished(0)
      assert.strictEqual(record.outcome, "peerClosed")
      assert.deepStrictEqual(record.packets, [{ kind: "cancelRequest", pid: PID, key: SECRET, tls: false }])
    }))

  it.live("4. RST after the request: server closed the connection unexpectedly", () =>
    Effect.gen(function*() {
      const fake = yield* FakePostmaster.make({ script: [{ expect: "cancelRequest" }, "reset"] })
      const error = yield* cancelError(yield* session(fake.port, "sslmode=disable"))
      assert.strictEqual(error._tag, "CancelFailed")
      assert.strictEqual(error.message, `${prefix(fake.port)}${SERVER_CLOSED}`)
      const record = yield* fake.awaitFinished(0)
      assert.strictEqual(record.detail, "reset (RST)")
      assert.deepStrictEqual(record.packets, [{ kind: "cancelRequest", pid: PID, key: SECRET, tls: false }])
    }))
})

describe("connect failures", () => {
  it.live("5a. refused TCP port: Connection refused + libpq's TCP hint", () =>
    Effect.gen(function*() {
      const port = yield* closedPort
      const error = yield* cancelError(yield* session(port, "sslmode=prefer"))
      assert.strictEqual(error._tag, "CancelFailed")
      assert.strictEqual(
        error.message,
        `${prefix(port)}Connection refused\n\tIs the server running on that host and accepting TCP/IP connections?`
      )
    }))

  it.live("5b. a unix socket path that does not exist: No such file or directory + libpq's socket hint", () =>
    Effect.gen(function*() {
      // a fresh empty directory: no socket in it
      const dir = yield* Effect.acquireRelease(
        Effect.sync(() => Fs.mkdtempSync(Path.join(Os.tmpdir(), "pqcancel-faults-"))),
        (dir) => Effect.sync(() => Fs.rmSync(dir, { recursive: true, force: true }))
      )
      const path = Path.join(dir, ".s.PGSQL.5432")
      const options = yield* ConnectionOptions.fromString(`host=${dir} port=5432`, {})
      const error = yield* cancelError({
        options,
        host: options.hosts[0]!,
        address: { _tag: "Unix", path },
        key: KEY
      })
      assert.strictEqual(error._tag, "CancelFailed")
      assert.strictEqual(
        error.message,
        `connection to server on socket "${path}" failed: No such file or directory\n` +
          "\tIs the server running locally and accepting connections on that socket?"
      )
    }))
})

describe("SSL negotiation faults", () => {
  for (const sslmode of ["prefer", "require"] as const) {
    it.live(`6a. 'E' to the SSLRequest (sslmode=${sslmode}): error, no fallback, no key`, () =>
      Effect.gen(function*() {
        const fake = yield* FakePostmaster.make({
          script: [
            { expect: "sslRequest" },
            { replyThenClose: FakePostmaster.errorPacket({ code: "08P01", message: "no SSL for you" }) }
          ]
        })
        const error = yield* cancelError(yield* session(fake.port, `sslmode=${sslmode}`))
        assert.strictEqual(error._tag, "CancelFailed")
        assert.strictEqual(error.message, `${prefix(fake.port)}server sent an error response during SSL exchange`)
        const record = yield* fake.awaitFinished(0)
        assert.deepStrictEqual(record.packets, [{ kind: "sslRequest", tls: false }])
        assertKeyNeverSent(record)
        assert.strictEqual(yield* fake.connections, 1)
      }))
  }

  it.live("6b. 'N' under prefer: plaintext CancelRequest on the same connection", () =>
    Effect.gen(function*() {
      const fake = yield* FakePostmaster.make({
        script: [{ expect: "sslRequest" }, { reply: "N" }, { expect: "cancelRequest" }]
      })
      yield* cancelOk(yield* session(fake.port, "sslmode=prefer"))
      const record = yield* fake.awaitFinished(0)
      assert.strictEqual(record.outcome, "completed")
      assert.deepStrictEqual(record.packets, [
        { kind: "sslRequest", tls: false },
        { kind: "cancelRequest", pid: PID, key: SECRET, tls: false }
      ])
      assert.deepStrictEqual(record.wire, new Uint8Array([...SSL_REQUEST, ...CANCEL_PACKET]))
      assert.strictEqual(yield* fake.connections, 1)
    }))

  for (const sslmode of ["require", "verify-ca", "verify-full"] as const) {
    it.live(`6c. 'N' under ${sslmode}: SSL was required, key never sent`, () =>
      Effect.gen(function*() {
        const fake = yield* FakePostmaster.make({ script: [{ expect: "sslRequest" }, { reply: "N" }, "awaitEof"] })
        const error = yield* cancelError(yield* session(fake.port, `sslmode=${sslmode} sslrootcert=${CA}`))
        assert.strictEqual(error._tag, "CancelFailed")
        assert.strictEqual(error.message, `${prefix(fake.port)}server does not support SSL, but SSL was required`)
        const record = yield* fake.awaitFinished(0)
        assert.deepStrictEqual(record.packets, [{ kind: "sslRequest", tls: false }])
        assertKeyNeverSent(record)
        assert.strictEqual(yield* fake.connections, 1)
      }))
  }

  it.live("6d. an invalid answer 'X' to the SSLRequest", () =>
    Effect.gen(function*() {
      const fake = yield* FakePostmaster.make({ script: [{ expect: "sslRequest" }, { reply: "X" }, "awaitEof"] })
      const error = yield* cancelError(yield* session(fake.port, "sslmode=prefer"))
      assert.strictEqual(error._tag, "CancelFailed")
      assert.strictEqual(error.message, `${prefix(fake.port)}received invalid response to SSL negotiation: X`)
      const record = yield* fake.awaitFinished(0)
      assert.deepStrictEqual(record.packets, [{ kind: "sslRequest", tls: false }])
      assertKeyNeverSent(record)
      assert.strictEqual(yield* fake.connections, 1)
    }))

  for (const sslmode of ["prefer", "require"] as const) {
    it.live(`7. unencrypted data after 'S' (sslmode=${sslmode}): error, no fallback, no key`, () =>
      Effect.gen(function*() {
        // "SX" in one write. (Not followed by a tlsUpgrade step: FakePostmaster's upgrade never finishes when the
        // client closes without sending a ClientHello.)
        const fake = yield* FakePostmaster.make({ script: [{ expect: "sslRequest" }, { reply: "SX" }, "awaitEof"] })
        const error = yield* cancelError(yield* session(fake.port, `sslmode=${sslmode}`))
        assert.strictEqual(error._tag, "CancelFailed")
        assert.strictEqual(error.message, `${prefix(fake.port)}received unencrypted data after SSL response`)
        const record = yield* fake.awaitFinished(0)
        // rejected before any handshake: not even a ClientHello (libpq detects it after the handshake; same outcome)
        assert.deepStrictEqual(record.packets, [{ kind: "sslRequest", tls: false }])
        assertKeyNeverSent(record)
        assert.isFalse(contains(record.wire, CANCEL_PACKET))
        assert.strictEqual(yield* fake.connections, 1)
      }))
  }

  it.live("8a. failed handshake under prefer: a new connection, plaintext CancelRequest there", () =>
    Effect.gen(function*() {
      const fake = yield* FakePostmaster.make({
        script: (index) =>
          index === 0
            ? [{ expect: "sslRequest" }, { reply: "S" }, { tlsFail: "garbage" }]
            : [{ expect: "cancelRequest" }]
      })
      const result = yield* runCancel(yield* session(fake.port, "sslmode=prefer")).pipe(
        Effect.provide(NodeTransport.layer)
      )
      assert.isTrue(result.ok, result.error)
      assert.deepStrictEqual(result.statuses, [
        "ALLOCATED",
        "STARTED",
        "MADE",
        "SSL_STARTUP",
        "STARTED",
        "MADE",
        "AWAITING_RESPONSE",
        "OK"
      ])
      const first = yield* fake.awaitFinished(0)
      assert.deepStrictEqual(first.packets, [{ kind: "sslRequest", tls: false }])
      assertKeyNeverSent(first)
      const second = yield* fake.awaitFinished(1)
      assert.deepStrictEqual(second.packets, [{ kind: "cancelRequest", pid: PID, key: SECRET, tls: false }])
      assert.strictEqual(yield* fake.connections, 2)
    }))

  it.live("8b. failed handshake under require: CancelFailed, key never sent", () =>
    Effect.gen(function*() {
      const fake = yield* FakePostmaster.make({
        script: [{ expect: "sslRequest" }, { reply: "S" }, { tlsFail: "close" }]
      })
      const error = yield* cancelError(yield* session(fake.port, "sslmode=require"))
      assert.strictEqual(error._tag, "CancelFailed")
      // the exact text depends on the TLS library (libpq: "SSL SYSCALL error: EOF detected" or, with OpenSSL 3,
      // "SSL error: unexpected eof while reading")
      assert.isTrue(error.message.startsWith(`${prefix(fake.port)}SSL `), error.message)
      const record = yield* fake.awaitFinished(0)
      assert.deepStrictEqual(record.packets, [{ kind: "sslRequest", tls: false }])
      assertKeyNeverSent(record)
      assert.isFalse(contains(record.wire, CANCEL_PACKET))
      assert.strictEqual(yield* fake.connections, 1)
    }))

  it.live("8c. garbage instead of a ServerHello under require: CancelFailed, key never sent", () =>
    Effect.gen(function*() {
      const fake = yield* FakePostmaster.make({
        script: [{ expect: "sslRequest" }, { reply: "S" }, { tlsFail: "garbage" }]
      })
      const error = yield* cancelError(yield* session(fake.port, "sslmode=require"))
      assert.strictEqual(error._tag, "CancelFailed")
      assert.isTrue(error.message.startsWith(`${prefix(fake.port)}SSL error: `), error.message)
      const record = yield* fake.awaitFinished(0)
      assertKeyNeverSent(record)
      assert.strictEqual(yield* fake.connections, 1)
    }))

  it.live("8d. garbage instead of a ServerHello: libpq's 'SSL error: wrong version number'", () =>
    Effect.gen(function*() {
      const fake = yield* FakePostmaster.make({
        script: [{ expect: "sslRequest" }, { reply: "S" }, { tlsFail: "garbage" }]
      })
      const error = yield* cancelError(yield* session(fake.port, "sslmode=require"))
      assert.strictEqual(error._tag, "CancelFailed")
      // libpq adds its protocol-version hint to this OpenSSL reason, with the default bounds
      assert.strictEqual(
        error.message,
        `${prefix(fake.port)}SSL error: wrong version number\n` +
          "This may indicate that the server does not support any SSL protocol version between TLSv1.2 and TLSv1.3."
      )
      assertKeyNeverSent(yield* fake.awaitFinished(0))
      // with configured bounds, the hint names them
      const bounded = yield* FakePostmaster.make({
        script: [{ expect: "sslRequest" }, { reply: "S" }, { tlsFail: "garbage" }]
      })
      const boundedError = yield* cancelError(
        yield* session(bounded.port, "sslmode=require ssl_min_protocol_version=TLSv1.3")
      )
      assert.isTrue(
        boundedError.message.endsWith("between TLSv1.3 and TLSv1.3."),
        boundedError.message
      )
    }))

  it.live("8e. an impostor with another CA's certificate under verify-full: libpq's 'certificate verify failed'", () =>
    Effect.gen(function*() {
      for (const negotiation of ["postgres", "direct"] as const) {
        const fake = yield* FakePostmaster.make({
          script: negotiation === "direct"
            ? [{ expect: "directTls" }, { tlsUpgrade: FakePostmaster.serverTls({ impostor: true }) }, "awaitEof"]
            : [
              { expect: "sslRequest" },
              { reply: "S" },
              { tlsUpgrade: FakePostmaster.serverTls({ impostor: true }) },
              "awaitEof"
            ]
        })
        const error = yield* cancelError(
          yield* session(
            fake.port,
            `host=localhost sslmode=verify-full sslnegotiation=${negotiation} sslrootcert=${CA}`
          )
        )
        assert.strictEqual(error._tag, "CancelFailed")
        assert.strictEqual(
          error.message,
          `connection to server at "localhost" (127.0.0.1), port ${fake.port} failed: SSL error: certificate verify failed`
        )
        assertKeyNeverSent(yield* fake.awaitFinished(0))
      }
    }))
})

describe("TLS", () => {
  it.live("9. verify-full over SSLRequest: the CancelRequest travels inside TLS only", () =>
    Effect.gen(function*() {
      const fake = yield* FakePostmaster.make({
        script: [
          { expect: "sslRequest" },
          { reply: "S" },
          { tlsUpgrade: FakePostmaster.serverTls() },
          { expect: "cancelRequest" }
        ]
      })
      yield* cancelOk(yield* session(fake.port, `host=localhost sslmode=verify-full sslrootcert=${CA}`))
      const record = yield* fake.awaitFinished(0)
      assert.strictEqual(record.outcome, "completed")
      assert.deepStrictEqual(record.packets, [
        { kind: "sslRequest", tls: false },
        { kind: "cancelRequest", pid: PID, key: SECRET, tls: true }
      ])
      assert.isDefined(record.tls)
      assert.deepStrictEqual(record.plaintext, SSL_REQUEST)
      assert.isFalse(contains(record.plaintext, SECRET))
      assert.isFalse(contains(record.wire, CANCEL_PACKET))
      assert.strictEqual(yield* fake.connections, 1)
    }))

  it.live("9b. sslsni: SNI carries the host name; none with sslsni=0 or for an IP address", () =>
    Effect.gen(function*() {
      const script = [
        { expect: "sslRequest" },
        { reply: "S" },
        { tlsUpgrade: FakePostmaster.serverTls() },
        { expect: "cancelRequest" }
      ] as const
      const cases = [
        [`host=localhost sslmode=require`, "localhost"],
        [`host=localhost sslmode=require sslsni=0`, false],
        [`host=127.0.0.1 sslmode=require`, false]
      ] as const
      for (const [conninfo, expected] of cases) {
        const fake = yield* FakePostmaster.make({ script: [...script] })
        yield* cancelOk(yield* session(fake.port, conninfo))
        const record = yield* fake.awaitFinished(0)
        assert.strictEqual(record.tls?.servername, expected, conninfo)
      }
    }))

  it.live("10a. sslnegotiation=direct: a ClientHello first (no SSLRequest), ALPN postgresql", () =>
    Effect.gen(function*() {
      const fake = yield* FakePostmaster.make({
        script: [
          { expect: "directTls" },
          { tlsUpgrade: FakePostmaster.serverTls({ requireAlpn: true }) },
          { expect: "cancelRequest" }
        ]
      })
      yield* cancelOk(
        yield* session(fake.port, `host=localhost sslmode=verify-full sslnegotiation=direct sslrootcert=${CA}`)
      )
      const record = yield* fake.awaitFinished(0)
      assert.strictEqual(record.outcome, "completed")
      assert.strictEqual(record.wire[0], 0x16)
      assert.strictEqual(record.plaintext.length, 0)
      assert.strictEqual(record.tls?.alpn, "postgresql")
      assert.deepStrictEqual(record.packets, [
        { kind: "tlsClientHello", tls: false },
        { kind: "cancelRequest", pid: PID, key: SECRET, tls: true }
      ])
      assert.isFalse(contains(record.wire, CANCEL_PACKET))
    }))

  it.live("10b. direct TLS completed without ALPN: libpq's ALPN error, key never sent", () =>
    Effect.gen(function*() {
      const fake = yield* FakePostmaster.make({
        script: [{ expect: "directTls" }, { tlsUpgrade: FakePostmaster.serverTls({ alpn: false }) }, "awaitEof"]
      })
      const error = yield* cancelError(yield* session(fake.port, "sslmode=require sslnegotiation=direct"))
      assert.strictEqual(error._tag, "CancelFailed")
      assert.strictEqual(
        error.message,
        `${prefix(fake.port)}direct SSL connection was established without ALPN protocol negotiation extension`
      )
      const record = yield* fake.awaitFinished(0)
      assert.strictEqual(record.tls?.alpn, false)
      assert.deepStrictEqual(record.packets, [{ kind: "tlsClientHello", tls: false }])
      assert.isFalse(contains(record.wire, CANCEL_PACKET))
      assert.strictEqual(yield* fake.connections, 1)
    }))
})

describe("legacy PQcancel", () => {
  it.live("11a. a reply byte is ignored: ok", () =>
    Effect.gen(function*() {
      const fake = yield* FakePostmaster.make({ script: [{ expect: "cancelRequest" }, { replyThenClose: "X" }] })
      const handle = LegacyCancel.getCancel(yield* session(fake.port, "sslmode=disable"))
      const result = yield* LegacyCancel.cancel(handle).pipe(Effect.provide(NodeTransport.layer))
      assert.deepStrictEqual(result, { ok: true })
      const record = yield* fake.awaitFinished(0)
      assert.deepStrictEqual(record.packets, [{ kind: "cancelRequest", pid: PID, key: SECRET, tls: false }])
    }))

  it.live("11b. always plaintext, even with sslmode=verify-full (no SSLRequest)", () =>
    Effect.gen(function*() {
      const fake = yield* FakePostmaster.make({ script: [{ expect: "cancelRequest" }] })
      const handle = LegacyCancel.getCancel(
        yield* session(fake.port, `host=localhost sslmode=verify-full sslrootcert=${CA} gssencmode=prefer`)
      )
      const result = yield* LegacyCancel.cancel(handle).pipe(Effect.provide(NodeTransport.layer))
      assert.deepStrictEqual(result, { ok: true })
      const record = yield* fake.awaitFinished(0)
      assert.deepStrictEqual(record.packets, [{ kind: "cancelRequest", pid: PID, key: SECRET, tls: false }])
      assert.deepStrictEqual(record.plaintext, CANCEL_PACKET)
      assert.isUndefined(record.tls)
    }))

  it.live("11c. refused port: ok false with PQcancel's connect() prefix", () =>
    Effect.gen(function*() {
      const port = yield* closedPort
      const result = yield* LegacyCancel.cancel(LegacyCancel.getCancel(yield* session(port, "sslmode=disable")))
        .pipe(Effect.provide(NodeTransport.layer))
      assert.isFalse(result.ok)
      if (!result.ok) {
        assert.isTrue(result.error.startsWith("PQcancel() -- connect() failed: "), result.error)
        assert.isTrue(result.error.endsWith("\n"), result.error)
      }
    }))

  it.live("11d. refused port: libpq's exact errbuf text", () =>
    Effect.gen(function*() {
      const port = yield* closedPort
      const result = yield* LegacyCancel.cancel(LegacyCancel.getCancel(yield* session(port, "sslmode=disable")))
        .pipe(Effect.provide(NodeTransport.layer))
      assert.deepStrictEqual(result, { ok: false, error: "PQcancel() -- connect() failed: error 111\n" })
    }))

  it.live("11e. no handle / no key: libpq's texts without newline", () =>
    Effect.gen(function*() {
      const noHandle = yield* LegacyCancel.cancel(undefined).pipe(Effect.provide(NodeTransport.layer))
      assert.deepStrictEqual(noHandle, { ok: false, error: "PQcancel() -- no cancel object supplied" })
      const noKey = yield* LegacyCancel.cancel(
        LegacyCancel.getCancel({ ...(yield* session(1, "sslmode=disable")), key: undefined })
      )
        .pipe(Effect.provide(NodeTransport.layer))
      assert.deepStrictEqual(noKey, { ok: false, error: "PQcancel() -- no cancellation key received" })
    }))
})

describe("keys and lifecycle", () => {
  it.live("12. a protocol 3.2 key of 256 bytes is sent intact", () =>
    Effect.gen(function*() {
      const secret = new Uint8Array(Array.from({ length: 256 }, (_, i) => (i * 73 + 5) & 0xff))
      const key = CancelKey.unsafeMake({ pid: PID, secret, protocolVersion: "3.2" })
      const fake = yield* FakePostmaster.make({ script: [{ expect: "cancelRequest" }] })
      yield* cancelOk(yield* session(fake.port, "sslmode=disable", key))
      const record = yield* fake.awaitFinished(0)
      assert.deepStrictEqual(record.packets, [{ kind: "cancelRequest", pid: PID, key: secret, tls: false }])
      assert.deepStrictEqual(record.wire, cancelPacket(PID, secret))
      assert.strictEqual(record.wire.length, 12 + 256)
    }))

  it.live("13. start twice: BAD with libpq's text; reset ⇒ ALLOCATED; a new start works", () =>
    Effect.gen(function*() {
      const fake = yield* FakePostmaster.make({ script: [{ expect: "cancelRequest" }] })
      const info = yield* session(fake.port, "sslmode=disable")
      yield* Effect.scoped(Effect.gen(function*() {
        const connection = yield* CancelConnection.make(info)
        yield* connection.start
        assert.strictEqual(yield* connection.status, "STARTED")
        yield* fake.awaitConnection(0)
        const error = yield* Effect.flip(connection.start)
        assert.strictEqual(error._tag, "CancelFailed")
        assert.strictEqual(error.message, `${prefix(fake.port)}cancel request is already being sent on this connection`)
        assert.isTrue(error.message.endsWith("cancel request is already being sent on this connection"))
        assert.strictEqual(yield* connection.status, "BAD")
        assert.strictEqual(yield* pollToEnd(connection), "FAILED")
        yield* connection.reset
        assert.strictEqual(yield* connection.status, "ALLOCATED")
        assert.strictEqual(yield* connection.errorMessage, "")
        assert.strictEqual(yield* connection.socket, -1)
        // the first socket was closed by reset without ever carrying the key
        const first = yield* fake.awaitFinished(0)
        assert.deepStrictEqual(first.packets, [])
        yield* connection.start
        assert.strictEqual(yield* pollToEnd(connection), "OK")
        assert.strictEqual(yield* connection.status, "OK")
        assert.strictEqual(yield* connection.errorMessage, "")
      })).pipe(Effect.provide(NodeTransport.layer))
      const second = yield* fake.awaitFinished(1)
      assert.deepStrictEqual(second.packets, [{ kind: "cancelRequest", pid: PID, key: SECRET, tls: false }])
      assert.strictEqual(yield* fake.connections, 2)
    }))

  it.live("14a. gssencmode=prefer without a GSS credential: no GSSENCRequest", () =>
    Effect.gen(function*() {
      // a GSSENCRequest would be a mismatch for the first expect step
      const fake = yield* FakePostmaster.make({
        script: [{ expect: "sslRequest" }, { reply: "N" }, { expect: "cancelRequest" }]
      })
      yield* cancelOk(yield* session(fake.port, "sslmode=prefer gssencmode=prefer"))
      const record = yield* fake.awaitFinished(0)
      assert.strictEqual(record.outcome, "completed")
      assert.deepStrictEqual(record.packets, [
        { kind: "sslRequest", tls: false },
        { kind: "cancelRequest", pid: PID, key: SECRET, tls: false }
      ])
    }))

  it.live("14b. gssencmode=require without a GSS credential: libpq's text, no connection made", () =>
    Effect.gen(function*() {
      const fake = yield* FakePostmaster.make({ script: [{ expect: "cancelRequest" }] })
      const info = yield* session(fake.port, "sslmode=disable gssencmode=require")
      yield* Effect.scoped(Effect.gen(function*() {
        const connection = yield* CancelConnection.make(info)
        const error = yield* Effect.flip(connection.blocking())
        assert.strictEqual(error._tag, "CancelFailed")
        // no host prefix: libpq fails before emitHostIdentityInfo, i.e. before creating a socket
        assert.strictEqual(error.message, "GSSAPI encryption required but no credential cache")
        assert.strictEqual(yield* connection.errorMessage, "GSSAPI encryption required but no credential cache\n")
        assert.strictEqual(yield* connection.status, "BAD")
        assert.strictEqual(yield* connection.socket, -1)
      })).pipe(Effect.provide(NodeTransport.layer))
      // the same fake then serves a cancel without GSS: it is the first and only connection
      yield* cancelOk(yield* session(fake.port, "sslmode=disable gssencmode=disable"))
      const record = yield* fake.awaitFinished(0)
      assert.deepStrictEqual(record.packets, [{ kind: "cancelRequest", pid: PID, key: SECRET, tls: false }])
      assert.strictEqual(yield* fake.connections, 1)
    }))
})

describe("options built by hand get the parser's validation", () => {
  const WEAK_DIRECT =
    "weak sslmode \"prefer\" may not be used with sslnegotiation=direct (use \"require\", \"verify-ca\", or \"verify-full\")"

  it.live("prefer + direct: make and cancel refuse before connecting, PQcancelCreate is BAD", () =>
    Effect.gen(function*() {
      // a direct handshake that fails, then anything: a fallback would send the key in plaintext here
      const fake = yield* FakePostmaster.make({ script: [{ tlsFail: "close" }, { expect: "cancelRequest" }] })
      const parsed = yield* session(fake.port, "sslmode=require sslnegotiation=direct")
      const info = { ...parsed, options: { ...parsed.options, sslmode: "prefer" as const } }
      const error = yield* cancelError(info)
      assert.strictEqual(error._tag, "CancelCreateError")
      assert.strictEqual(error.message, WEAK_DIRECT)
      yield* Effect.scoped(Effect.gen(function*() {
        const created = yield* CancelConnection.makeUnchecked(info)
        assert.strictEqual(yield* created.status, "BAD")
        assert.strictEqual(yield* created.errorMessage, `${WEAK_DIRECT}\n`)
        assert.strictEqual((yield* Effect.flip(created.blocking()))._tag, "CancelFailed")
      })).pipe(Effect.provide(NodeTransport.layer))
      // the parser says the same for the same pair
      const parsedError = yield* Effect.flip(
        ConnectionOptions.fromString(`host=127.0.0.1 sslmode=prefer sslnegotiation=direct`, {})
      )
      assert.strictEqual(parsedError.message, WEAK_DIRECT)
      assert.strictEqual(yield* fake.connections, 0)
    }))

  it.live("other invalid values built by hand: typed errors with libpq's texts", () =>
    Effect.gen(function*() {
      const parsed = yield* session(1, "sslmode=require")
      const cases: ReadonlyArray<readonly [Partial<Record<string, unknown>>, string]> = [
        [{ sslmode: "verify-some" }, "invalid sslmode value: \"verify-some\""],
        [{ sslnegotiation: "tls" }, "invalid sslnegotiation value: \"tls\""],
        [
          { sslrootcert: "system" },
          "weak sslmode \"require\" may not be used with sslrootcert=system (use \"verify-full\")"
        ],
        [{ sslMinProtocolVersion: "TLSv1.3", sslMaxProtocolVersion: "TLSv1.2" }, "invalid SSL protocol version range"],
        [{ gssencmode: "always" }, "invalid gssencmode value: \"always\""],
        [
          { minProtocolVersion: "3.2", maxProtocolVersion: "3.0" },
          "\"min_protocol_version\" is greater than \"max_protocol_version\""
        ],
        [{ connectTimeout: -1 }, "invalid integer value \"-1\" for connection option \"connect_timeout\""]
      ]
      for (const [change, message] of cases) {
        const info = { ...parsed, options: { ...parsed.options, ...change } as ConnectionOptions.ConnectionOptions }
        const error = yield* cancelError(info)
        assert.strictEqual(error._tag, "CancelCreateError")
        assert.strictEqual(error.message, message)
      }
    }))
})
