/**
 * The I/O driver of one cancel connection: it performs the {@link CancelMachine}'s actions through a
 * {@link Transport} connection and feeds the socket's outcomes back into the machine.
 *
 * Two ways to feed it:
 * - run mode (`blocking`, `cancel`): events are applied straight from the socket's callbacks until the machine is
 *   `OK` or `BAD` — no queue, no fiber hop per event;
 * - step mode (`start` / `poll`): events are buffered and each `poll` applies the next one.
 *
 * @internal
 */
import * as Effect from "effect/Effect"
import * as Redacted from "effect/Redacted"
import * as CancelMachine from "../CancelMachine.ts"
import type { ConnectionOptions } from "../ConnectionOptions.ts"
import type { Connection, Transport, TransportEvent } from "../Transport.ts"

// every JavaScript runtime has timers; core has no Node (or DOM) types, so declare the two it uses
declare const setTimeout: (callback: () => void, ms: number) => unknown
declare const clearTimeout: (handle: unknown) => void

/** setTimeout's largest delay; a longer deadline is no deadline */
const MAX_TIMER_MS = 2_147_483_647

// failures a new attempt may not meet: refused, reset, unreachable, closed before the response
const transientCodes = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "ECONNABORTED",
  "EPIPE",
  "ETIMEDOUT",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "EAGAIN",
  "EADDRNOTAVAIL",
  "ENOENT"
])

/**
 * Whether a failure caused by `event` may not happen again: refused, reset, closed early, timed out — also in the
 * middle of a TLS or GSS handshake (a reset or the server's close there is the network's, not the handshake's).
 * Certificate and TLS protocol failures, GSSAPI errors, encryption the server refuses, protocol errors and option
 * errors would happen again.
 *
 * @internal
 */
export const isTransientFailure = (event: CancelMachine.Event): boolean => {
  switch (event._tag) {
    case "ConnectFailed":
    case "IoError":
      return event.code !== undefined && transientCodes.has(event.code)
    case "TlsFailed":
    case "GssFailed":
      return event.code !== undefined && (event.code === "EOF" || transientCodes.has(event.code))
    case "Eof":
    case "Deadline":
      return true
    default:
      return false
  }
}

/** @internal */
export class Driver {
  state: CancelMachine.State
  connection: Connection | undefined = undefined
  /** bumped whenever the socket is closed, so events of a replaced socket are dropped */
  private generation = 0
  /** events received and not applied yet (step mode, or events reported while a step is being applied) */
  private readonly pending: Array<TransportEvent> = []
  private applying = false
  /** the last `run` ended by its deadline */
  timedOut = false
  /** the event that made the machine BAD means a new attempt may succeed (see {@link isTransientFailure}) */
  transient = false
  /** run mode: called once the machine is `OK` or `BAD` */
  private settle: (() => void) | undefined = undefined
  /** step mode: wakes the poll waiting for the next event */
  private wake: (() => void) | undefined = undefined

  readonly transport: Transport["Service"]
  readonly options: ConnectionOptions
  readonly config: CancelMachine.MachineConfig
  /** told about every status change (for the `changes` stream), if anyone listens */
  readonly onStatus: ((before: CancelMachine.Status) => void) | undefined

  constructor(
    transport: Transport["Service"],
    options: ConnectionOptions,
    config: CancelMachine.MachineConfig,
    state: CancelMachine.State,
    onStatus: ((before: CancelMachine.Status) => void) | undefined
  ) {
    this.transport = transport
    this.options = options
    this.config = config
    this.state = state
    this.onStatus = onStatus
  }

  /** step the pure machine with one event and perform its actions, synchronously */
  apply(event: CancelMachine.Event): CancelMachine.Step {
    const before = this.state.status
    const next = CancelMachine.step(this.config, this.state, event)
    if (next.state.status === "BAD" && before !== "BAD") this.transient = isTransientFailure(event)
    else if (event._tag === "Reset") this.transient = false
    this.state = next.state
    if (this.onStatus !== undefined && next.state.status !== before) this.onStatus(before)
    const actions = next.actions
    for (let i = 0; i < actions.length; i++) {
      this.perform(actions[i]!)
      // a transport that threw made the connection BAD (see fault): the rest of the step's actions are void
      if (this.state !== next.state) return { ...next, state: this.state }
    }
    return next
  }

  // the steps of a cancel, as the machine asks for them: connect → negotiate → send → (await the server's close,
  // which arrives as an Eof event) → close
  private perform(action: CancelMachine.Action): void {
    try {
      switch (action._tag) {
        case "Connect":
          return this.connect(action.address)
        case "Write":
          return action.kind === "CancelRequest" ? this.send(action.bytes) : this.negotiate(action)
        case "StartTls":
        case "StartGss":
          return this.negotiate(action)
        case "Close":
          return this.close()
      }
    } catch (error) {
      this.fault(error)
    }
  }

  /**
   * A transport method threw instead of reporting an event (a bug or a bad input it did not check). The request
   * was not sent and will not be by this socket: the connection is BAD with the error's text, never left waiting
   * (a timeout-less cancel would hang) and never counted as sent (the legacy machine takes an I/O error after the
   * request as success). Not transient: the same call would throw again.
   */
  private fault(error: unknown): void {
    const before = this.state.status
    this.close()
    this.transient = false
    const message = error instanceof Error ? error.message : String(error)
    this.state = CancelMachine.failedState(`could not send cancel packet: ${message}\n`)
    if (this.onStatus !== undefined && before !== "BAD") this.onStatus(before)
    this.settle?.()
  }

  // encryption: an SSLRequest or GSSENCRequest, then the TLS or GSS handshake on the same socket
  private negotiate(action: CancelMachine.Action): void {
    const connection = this.connection
    if (connection === undefined) return
    if (action._tag === "Write") connection.write(Redacted.value(action.bytes))
    else if (action._tag === "StartTls") connection.startTls(action.request)
    else if (action._tag === "StartGss") connection.startGss(action.request)
  }

  // the CancelRequest itself (inside the encryption the machine negotiated, or in clear where it allows)
  private send(packet: Redacted.Redacted<Uint8Array>): void {
    this.connection?.write(Redacted.value(packet))
  }

  private connect(address: CancelMachine.RemoteAddress): void {
    this.close()
    const generation = this.generation
    this.connection = this.transport.connect({ address, options: this.options }, (event) => {
      if (generation === this.generation) this.receive(event)
    })
  }

  /** close the socket (if any); what it reports from now on is ignored */
  close(): void {
    this.generation++
    this.pending.length = 0
    const connection = this.connection
    this.connection = undefined
    try {
      connection?.close()
    } catch {
      // a transport that throws on close has nothing left to release here
    }
  }

  private receive(event: TransportEvent): void {
    this.pending.push(event)
    if (this.settle !== undefined) this.drain()
    else if (this.wake !== undefined) this.wake()
  }

  // run mode: apply what arrived, in order, until the machine is done
  private drain(): void {
    if (this.applying) return
    this.applying = true
    try {
      while (this.settle !== undefined && this.pending.length > 0) {
        this.apply(this.pending.shift()!)
        // MADE (and direct TLS's SSL_STARTUP + WRITING) go on without I/O: libpq's next poll, at once
        while (CancelMachine.advancesOnPoll(this.state)) this.apply(CancelMachine.Events.poll)
        if (CancelMachine.isTerminal(this.state)) this.settle?.()
      }
    } finally {
      this.applying = false
    }
  }

  /**
   * Run mode: apply the socket's events as they arrive until the machine is `OK` or `BAD`, or `timeoutMs` passed
   * (then the machine gets its `Deadline` event), and resume with `done()`. `socket: "run"` — the run owns the
   * socket: closed when the run ends or is interrupted (the one-shot cancel); `"connection"` — left to the owner
   * (a cancel connection: a later `poll`, `reset` or its Scope continues from there).
   */
  run<E>(
    timeoutMs: number | undefined,
    socket: "run" | "connection",
    done: () => Effect.Effect<void, E>
  ): Effect.Effect<void, E> {
    return Effect.callback<void, E>((resume) => {
      if (!CancelMachine.isInFlight(this.state)) {
        if (socket === "run") this.close()
        return resume(done())
      }
      this.timedOut = false
      let timer: unknown
      this.settle = () => {
        this.settle = undefined
        if (timer !== undefined) clearTimeout(timer)
        if (socket === "run") this.close()
        resume(done())
      }
      if (timeoutMs !== undefined && timeoutMs <= MAX_TIMER_MS) {
        timer = setTimeout(() => {
          timer = undefined
          this.timedOut = true
          this.apply(CancelMachine.Events.deadline)
          this.settle?.()
        }, timeoutMs)
      }
      this.drain()
      if (this.settle === undefined) return
      return Effect.sync(() => {
        if (timer !== undefined) clearTimeout(timer)
        this.settle = undefined
        if (socket === "run") this.close()
      })
    })
  }

  /** Step mode: apply the next event of the socket (waiting for it), or a `Poll` when no socket is in flight. */
  poll(): Effect.Effect<CancelMachine.PollingStatus> {
    return Effect.suspend(() => this.pollNow())
  }

  private pollNow(): Effect.Effect<CancelMachine.PollingStatus> {
    // MADE (and direct TLS's SSL_STARTUP + WRITING) advance without I/O, as libpq finds the socket writable at once
    if (
      !CancelMachine.isInFlight(this.state) || this.connection === undefined ||
      CancelMachine.advancesOnPoll(this.state)
    ) {
      return Effect.succeed(this.apply(CancelMachine.Events.poll).state.polling)
    }
    if (this.pending.length > 0) return Effect.succeed(this.apply(this.pending.shift()!).state.polling)
    return Effect.callback<CancelMachine.PollingStatus>((resume) => {
      this.wake = () => {
        this.wake = undefined
        // the event stays buffered until applied, so an interruption in between loses nothing
        resume(this.poll())
      }
      return Effect.sync(() => {
        this.wake = undefined
      })
    })
  }
}
