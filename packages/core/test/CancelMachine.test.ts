import { assert, describe, it } from "@effect/vitest"
import { CancelMachine } from "@pqcancel/core"
import type { CancelKey, ConnectionOptions } from "@pqcancel/core"
import * as Arbitrary from "effect/Arbitrary"
import * as Redacted from "effect/Redacted"
import * as Schema from "effect/Schema"
import * as Util from "node:util"

const key: CancelKey.CancelKey = {
  pid: 4242,
  secret: Redacted.make(new Uint8Array([0xde, 0xad, 0xbe, 0xef])),
  protocolVersion: "3.0"
}

const SslModes = ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] as const
const GssModes = ["disable", "prefer", "require"] as const

interface Setup {
  readonly sslmode: ConnectionOptions.SslMode
  readonly sslnegotiation: ConnectionOptions.SslNegotiation
  readonly gssencmode: ConnectionOptions.GssEncMode
  readonly gssAvailable: boolean
  readonly unix: boolean
  readonly legacy: boolean
}

const SetupSchema = Schema.Struct({
  sslmode: Schema.Literals(SslModes),
  direct: Schema.Boolean,
  gssencmode: Schema.Literals(GssModes),
  gssAvailable: Schema.Boolean,
  unix: Schema.Boolean,
  legacy: Schema.Boolean
})

// direct with a weak sslmode is what option validation rejects; the machine refuses it too (a hand-built config)
const toSetup = (s: typeof SetupSchema.Type): Setup => ({
  sslmode: s.sslmode,
  sslnegotiation: s.direct ? "direct" : "postgres",
  gssencmode: s.gssencmode,
  gssAvailable: s.gssAvailable,
  unix: s.unix,
  legacy: s.legacy
})

const configOf = (setup: Setup): CancelMachine.MachineConfig =>
  CancelMachine.makeConfig({
    host: setup.unix
      ? { _tag: "Unix", directory: "/tmp", port: 5432 }
      : { _tag: "Tcp", host: "db.example", hostaddr: undefined, port: 5432 },
    address: setup.unix
      ? { _tag: "Unix", path: "/tmp/.s.PGSQL.5432" }
      : { _tag: "Tcp", address: "127.0.0.1", port: 5432, family: 4 },
    sslmode: setup.sslmode,
    sslnegotiation: setup.sslnegotiation,
    gssencmode: setup.gssencmode,
    sslsni: true,
    gssAvailable: setup.gssAvailable,
    key,
    legacy: setup.legacy
  })

// a TCP cancel with SSLRequest negotiation, no GSS
const tcpConfig = (sslmode: ConnectionOptions.SslMode) =>
  configOf({
    sslmode,
    sslnegotiation: "postgres",
    gssencmode: "disable",
    gssAvailable: false,
    unix: false,
    legacy: false
  })

const bytes = (s: string) => new TextEncoder().encode(s)
const EventChoices: ReadonlyArray<CancelMachine.Event> = [
  CancelMachine.Events.start,
  CancelMachine.Events.poll,
  CancelMachine.Events.reset,
  CancelMachine.Events.connected,
  { _tag: "ConnectFailed", message: "Connection refused" },
  { _tag: "Data", bytes: bytes("S") },
  { _tag: "Data", bytes: bytes("N") },
  { _tag: "Data", bytes: bytes("G") },
  { _tag: "Data", bytes: bytes("E") },
  { _tag: "Data", bytes: bytes("x") },
  { _tag: "Data", bytes: bytes("SX") },
  CancelMachine.Events.eof,
  { _tag: "IoError", code: "ECONNRESET", message: "Connection reset by peer" },
  { _tag: "IoError", code: "EIO", message: "Input/output error" },
  { _tag: "TlsEstablished", alpn: "postgresql" },
  { _tag: "TlsEstablished", alpn: false },
  { _tag: "TlsFailed", message: "SSL error: certificate verify failed" },
  CancelMachine.Events.gssEstablished,
  { _tag: "GssFailed", message: "GSSAPI encryption is not supported" },
  CancelMachine.Events.deadline,
  { _tag: "PeerRejected", message: "requirepeer parameter is not supported on this platform" }
]
const EventIndexes = Arbitrary.array(
  Arbitrary.schema(Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: EventChoices.length - 1 }))),
  { maxLength: 30 }
)

// The messages libpq 18 can put in a cancel connection's error buffer (spec §2.1), each after an optional prefix
const knownMessage = [
  /^cancel request is already being sent on this connection$/,
  /^unexpected response from server$/,
  /^timeout expired$/,
  /^invalid connection state, probably indicative of memory corruption$/,
  /^server does not support SSL, but SSL was required$/,
  /^server sent an error response during SSL exchange$/,
  /^received invalid response to SSL negotiation: .$/,
  /^received unencrypted data after SSL response$/,
  /^server doesn't support GSSAPI encryption, but it was required$/,
  /^server sent an error response during GSS encryption exchange$/,
  /^received invalid response to GSSAPI negotiation: .$/,
  /^received unencrypted data after GSSAPI encryption response$/,
  /^GSSAPI encryption required but it is not supported over a local socket$/,
  /^GSSAPI encryption required but no credential cache$/,
  /^direct SSL connection was established without ALPN protocol negotiation extension$/,
  /^SSL error: .+$/,
  /^GSSAPI encryption is not supported$/,
  /^server closed the connection unexpectedly$/,
  /^\tThis probably means the server terminated abnormally$/,
  /^\tbefore or while processing the request\.$/,
  /^could not receive data from server: .+$/,
  // strerror texts of a failed connect()
  /^(Connection refused|Connection reset by peer|Input\/output error)$/,
  /^\tIs the server running (on that host and accepting TCP\/IP connections|locally and accepting connections on that socket)\?$/,
  /^PQcancel\(\) -- connect\(\) failed: .+$/,
  /^requirepeer parameter is not supported on this platform$/,
  /^weak sslmode "(disable|allow|prefer)" may not be used with sslnegotiation=direct \(use "require", "verify-ca", or "verify-full"\)$/
]
const prefix = /^connection to server (at "[^"]+"( \([^)]+\))?, port \d+|on socket "[^"]+") failed: /

const checkErrorText = (error: string) => {
  if (error === "") return
  assert.isTrue(error.endsWith("\n"), `error ends with a newline: ${JSON.stringify(error)}`)
  for (let line of error.slice(0, -1).split("\n")) {
    while (prefix.test(line)) line = line.replace(prefix, "")
    if (line === "") continue
    assert.isTrue(knownMessage.some((re) => re.test(line)), `libpq message: ${JSON.stringify(line)}`)
  }
}

const strongSsl = (sslmode: ConnectionOptions.SslMode) => ["require", "verify-ca", "verify-full"].includes(sslmode)

// direct TLS counts as required encryption whatever the sslmode: a failed direct attempt never falls back to plaintext
const requiresEncryption = (setup: Setup) =>
  !setup.legacy && !setup.unix &&
  (strongSsl(setup.sslmode) || setup.gssencmode === "require" || setup.sslnegotiation === "direct")

describe("CancelMachine", () => {
  it.prop(
    "invariants hold for every event sequence",
    { setup: Arbitrary.schema(SetupSchema), events: EventIndexes },
    ({ events, setup: raw }) => {
      const setup = toSetup(raw)
      const config = configOf(setup)
      let state = CancelMachine.initial
      // a model of the socket, from the actions and the events a real transport could report: encryption is up once
      // the handshake the machine asked for has completed, and a new or closed socket starts in plaintext
      let socketEncrypted = false
      let handshake: "none" | "tls" | "gss" = "none"
      for (const index of events) {
        const event = EventChoices[index]!
        const before = state
        const next = CancelMachine.step(config, state, event)
        state = next.state
        // the event comes first: a write in the same step already travels over the established encryption
        if (event._tag === "TlsEstablished" && handshake === "tls") socketEncrypted = true
        if (event._tag === "GssEstablished" && handshake === "gss") socketEncrypted = true
        if (event._tag === "TlsEstablished" || event._tag === "TlsFailed") handshake = "none"
        if (event._tag === "GssEstablished" || event._tag === "GssFailed") handshake = "none"
        for (const action of next.actions) {
          if (action._tag === "Connect" || action._tag === "Close") {
            socketEncrypted = false
            handshake = "none"
          }
          if (action._tag === "StartTls") handshake = "tls"
          if (action._tag === "StartGss") handshake = "gss"
          if (action._tag === "Write") {
            // what the machine claims about a write is what the socket does
            assert.strictEqual(action.encrypted, socketEncrypted, `${action.kind} encrypted flag matches the socket`)
            if (action.kind === "CancelRequest" && requiresEncryption(setup)) {
              assert.isTrue(socketEncrypted, "the key is never written before encryption")
            }
          }
        }
        // OK and BAD are terminal: only Reset (and, from OK, Start) leave them
        if (before.status === "BAD" && event._tag !== "Reset") assert.strictEqual(state.status, "BAD")
        if (before.status === "OK" && event._tag !== "Reset" && event._tag !== "Start") {
          assert.strictEqual(state.status, "OK")
        }
        if (before.status === "OK" && event._tag === "Start") {
          assert.strictEqual(state.status, "BAD")
          assert.include(state.error, "cancel request is already being sent on this connection")
        }
        // EOF or a deadline ends every in-flight request
        if (CancelMachine.isInFlight(before) && (event._tag === "Eof" || event._tag === "Deadline")) {
          assert.isTrue(CancelMachine.isTerminal(state))
        }
        if (event._tag === "Reset") assert.deepStrictEqual(state, CancelMachine.initial)
        assert.strictEqual(state.polling === "OK", state.status === "OK")
        if (state.status === "OK") assert.strictEqual(state.error, "")
        // while in flight, libpq's buffer holds the host prefix of the current attempt (no newline yet)
        if (!CancelMachine.isInFlight(state)) checkErrorText(state.error)
      }
    },
    { arbitrary: { runs: 10000 } }
  )

  // A simulated server answering each action, and the outcome the spec's tables give for it
  type Server = { readonly ssl: "S" | "N" | "E" | "handshake-fails"; readonly reply: "eof" | "byte" }
  const ServerSchema = Schema.Struct({
    ssl: Schema.Literals(["S", "N", "E", "handshake-fails"]),
    reply: Schema.Literals(["eof", "byte"])
  })

  // libpq's poll loop against the simulated server: every poll either advances on its own (MADE, direct TLS's
  // SSL_STARTUP + WRITING: the socket is writable at once) or consumes the next I/O event; `polls` records
  // `polling/status` after each poll, as PQcancelPoll + PQcancelStatus report them
  const run = (setup: Setup, server: Server) => {
    const config = configOf(setup)
    const queue: Array<CancelMachine.Event> = []
    const trace: Array<string> = []
    const polls: Array<string> = []
    let sockets = 0
    const perform = (actions: ReadonlyArray<CancelMachine.Action>) => {
      for (const action of actions) {
        trace.push(action._tag === "Write" ? `${action.kind}${action.encrypted ? "(tls)" : ""}` : action._tag)
        if (action._tag === "Connect") {
          sockets++
          queue.push(CancelMachine.Events.connected)
        }
        if (action._tag === "Write" && action.kind === "SSLRequest") {
          queue.push({ _tag: "Data", bytes: bytes(server.ssl === "handshake-fails" ? "S" : server.ssl) })
        }
        if (action._tag === "Write" && action.kind === "CancelRequest") {
          queue.push(server.reply === "eof" ? CancelMachine.Events.eof : { _tag: "Data", bytes: bytes("Z") })
        }
        if (action._tag === "StartTls") {
          queue.push(
            server.ssl === "S" || (action.request.direct && server.ssl !== "handshake-fails")
              ? { _tag: "TlsEstablished", alpn: "postgresql" }
              : { _tag: "TlsFailed", message: "SSL error: handshake failure" }
          )
        }
      }
    }
    const started = CancelMachine.step(config, CancelMachine.initial, CancelMachine.Events.start)
    let state = started.state
    perform(started.actions)
    while (!CancelMachine.isTerminal(state) && polls.length < 20) {
      const event = CancelMachine.advancesOnPoll(state) ? CancelMachine.Events.poll : queue.shift()
      if (event === undefined) break
      const next = CancelMachine.step(config, state, event)
      state = next.state
      perform(next.actions)
      polls.push(`${state.polling}/${state.status}`)
    }
    return { state, trace, sockets, polls }
  }

  // libpq 18's PQcancelPoll results and statuses, poll by poll (fe-connect.c: WRITING/MADE after connect(), after a
  // handshake and after 'N' on the same socket; reading 'S' starts the handshake in the same poll)
  const W_MADE = "WRITING/MADE"
  const R_SSL = "READING/SSL_STARTUP"
  const W_SSL = "WRITING/SSL_STARTUP"
  const R_AWAIT = "READING/AWAITING_RESPONSE"
  const W_STARTED = "WRITING/STARTED"
  const FAILED = "FAILED/BAD"
  const libpqPolls = (setup: Setup, server: Server): ReadonlyArray<string> => {
    const send = [R_AWAIT, server.reply === "eof" ? "OK/OK" : FAILED]
    const plaintextOnly = setup.unix || setup.sslmode === "disable" || setup.sslmode === "allow"
    if (plaintextOnly) return [W_MADE, ...send]
    if (setup.sslnegotiation === "direct") {
      return server.ssl === "handshake-fails"
        ? [W_MADE, W_SSL, R_SSL, FAILED]
        : [W_MADE, W_SSL, R_SSL, W_MADE, ...send]
    }
    if (server.ssl === "S") return [W_MADE, R_SSL, R_SSL, W_MADE, ...send]
    if (server.ssl === "E") return [W_MADE, R_SSL, FAILED]
    const prefer = setup.sslmode === "prefer"
    if (server.ssl === "N") return prefer ? [W_MADE, R_SSL, W_MADE, ...send] : [W_MADE, R_SSL, FAILED]
    // a failed handshake: prefer retries in plaintext on a new socket (CONNECTION_FAILED ⇒ CONNECTION_NEEDED)
    return prefer ? [W_MADE, R_SSL, R_SSL, W_STARTED, W_MADE, ...send] : [W_MADE, R_SSL, R_SSL, FAILED]
  }

  it.prop(
    "matches the reference model of libpq's encryption negotiation",
    { setup: Arbitrary.schema(SetupSchema), server: Arbitrary.schema(ServerSchema) },
    ({ server, setup: raw }) => {
      const setup = { ...toSetup(raw), gssAvailable: false }
      const { polls, sockets, state, trace } = run(setup, server)
      if (setup.sslnegotiation === "direct" && !strongSsl(setup.sslmode) && !setup.legacy) {
        // a hand-built config option validation would have refused: the machine refuses it before connecting
        assert.strictEqual(state.status, "BAD")
        assert.strictEqual(sockets, 0)
        assert.include(state.error, "may not be used with sslnegotiation=direct")
        return
      }
      const gssRequired = setup.gssencmode === "require" && !setup.legacy
      const sent = trace.filter((t) => t.startsWith("CancelRequest"))
      if (gssRequired) {
        // no GSS credential: libpq fails before connecting
        assert.strictEqual(state.status, "BAD")
        assert.strictEqual(sockets, 0)
        assert.match(state.error, /GSSAPI encryption required but/)
        return
      }
      const plaintextOnly = setup.legacy || setup.unix || setup.sslmode === "disable" || setup.sslmode === "allow"
      if (plaintextOnly) {
        assert.deepStrictEqual(trace.filter((t) => t !== "Close"), ["Connect", "CancelRequest"])
      } else if (setup.sslnegotiation === "direct") {
        assert.strictEqual(trace[1], "StartTls")
        assert.notInclude(trace, "SSLRequest")
        if (server.ssl === "handshake-fails") {
          assert.deepStrictEqual(sent, [])
          assert.strictEqual(state.status, "BAD")
        } else assert.deepStrictEqual(sent, ["CancelRequest(tls)"])
      } else if (server.ssl === "S") {
        assert.deepStrictEqual(sent, ["CancelRequest(tls)"])
        assert.strictEqual(sockets, 1)
      } else if (server.ssl === "E") {
        assert.deepStrictEqual(sent, [])
        assert.include(state.error, "server sent an error response during SSL exchange")
      } else if (setup.sslmode === "prefer") {
        // 'N' ⇒ plaintext on the same socket; a failed handshake ⇒ plaintext on a new socket
        assert.deepStrictEqual(sent, ["CancelRequest"])
        assert.strictEqual(sockets, server.ssl === "N" ? 1 : 2)
      } else {
        assert.deepStrictEqual(sent, [])
        assert.strictEqual(state.status, "BAD")
        if (server.ssl === "N") assert.include(state.error, "server does not support SSL, but SSL was required")
      }
      // libpq's poll results, step for step (the legacy API has no poll loop)
      if (!setup.legacy) assert.deepStrictEqual(polls, libpqPolls(setup, server))
      if (sent.length > 0) {
        const legacyReplyOk = setup.legacy
        assert.strictEqual(state.status, server.reply === "eof" || legacyReplyOk ? "OK" : "BAD")
        if (state.status === "BAD") assert.include(state.error, "unexpected response from server")
      }
    },
    { arbitrary: { runs: 500 } }
  )

  it("prefixes errors with the host like libpq", () => {
    const config = tcpConfig("require")
    let state = CancelMachine.step(config, CancelMachine.initial, CancelMachine.Events.start).state
    state = CancelMachine.step(config, state, CancelMachine.Events.connected).state
    state = CancelMachine.step(config, state, CancelMachine.Events.poll).state
    state = CancelMachine.step(config, state, { _tag: "Data", bytes: bytes("N") }).state
    assert.strictEqual(
      state.error,
      "connection to server at \"db.example\" (127.0.0.1), port 5432 failed: server does not support SSL, but SSL was required\n"
    )
  })

  it("data pipelined after 'S' is refused (buffer stuffing)", () => {
    const config = tcpConfig("prefer")
    let state = CancelMachine.step(config, CancelMachine.initial, CancelMachine.Events.start).state
    state = CancelMachine.step(config, state, CancelMachine.Events.connected).state
    state = CancelMachine.step(config, state, CancelMachine.Events.poll).state
    const next = CancelMachine.step(config, state, { _tag: "Data", bytes: bytes("SX") })
    assert.strictEqual(next.state.status, "BAD")
    assert.include(next.state.error, "received unencrypted data after SSL response")
    assert.deepStrictEqual(next.actions, [])
  })

  it("poll before start is libpq's invalid state; start twice is refused", () => {
    const config = tcpConfig("disable")
    const polled = CancelMachine.step(config, CancelMachine.initial, CancelMachine.Events.poll).state
    assert.strictEqual(polled.status, "BAD")
    assert.include(polled.error, "invalid connection state, probably indicative of memory corruption")
    const started = CancelMachine.step(config, CancelMachine.initial, CancelMachine.Events.start)
    assert.isTrue(started.accepted)
    const again = CancelMachine.step(config, started.state, CancelMachine.Events.start)
    assert.isFalse(again.accepted)
    assert.strictEqual(again.state.status, "BAD")
    assert.include(again.state.error, "cancel request is already being sent on this connection")
  })

  it("never exposes the key: configs and steps print the CancelRequest as redacted", () => {
    const config = tcpConfig("disable")
    let state = CancelMachine.step(config, CancelMachine.initial, CancelMachine.Events.start).state
    state = CancelMachine.step(config, state, CancelMachine.Events.connected).state
    const sent = CancelMachine.step(config, state, CancelMachine.Events.poll)
    state = sent.state
    assert.strictEqual(sent.actions[0]?._tag, "Write")
    for (
      const text of [
        JSON.stringify(config),
        JSON.stringify(sent),
        Util.inspect(sent, { depth: 10 })
      ]
    ) {
      assert.notInclude(text, "222")
      assert.notInclude(text, "de ad be ef")
      assert.notInclude(text, "deadbeef")
    }
  })
})
