/**
 * `@effect/sql-pg`'s private connection state, read in this one module (the `SqlPgAdapter` driver port). sql-pg
 * 4.0.5 to 4.1.x keep, per physical connection:
 * - `connection["~@effect/sql-pg/PgConnection/internals"].base`: the unpinned connection (a pinned view from
 *   `pin`/`reserve` points to it; the pool uses the same field as the item's identity);
 * - `base.session`: `{ socket, encrypted, processId, secretKey }`, built by `connect()` from BackendKeyData (3.0 keys:
 *   `secretKey` is the signed int32 sql-pg decodes) and the socket it finished the startup on (the `TLSSocket` after
 *   an SSLRequest upgrade, `encrypted` true only then);
 * - with `multiplex: true`: `base.pipelinePending` (statements queued, not yet written), `base.pipelineInFlight` from
 *   `base.pipelineHead` on (written, oldest first: the head is the one the server runs), each entry `{ deferred,
 *   abandoned }` (an abandoned pending entry is never written), and `base.owner`, the permit every submission takes
 *   to queue a statement (holding it stops new ones);
 * - `base.consumer`: the state machine of the statement on the wire (exclusive use), `base.deadWith`: set once the
 *   session died.
 * Every field is checked for its type (and the key against public facts); anything else is a drift, described for
 * the adapter's typed error, never a wrong key, address or statement.
 */
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import type * as Scope from "effect/Scope"
import type * as Semaphore from "effect/Semaphore"
import type { SqlError } from "effect/sql/SqlError"
import * as Net from "node:net"
import * as Tls from "node:tls"

const internalsKey = "~@effect/sql-pg/PgConnection/internals"

/** One statement of a multiplexed pipeline, as sql-pg keeps it (tagged by the adapter with the fiber that queued it) */
interface PipelineEntry {
  readonly deferred: Deferred.Deferred<unknown, SqlError>
  abandoned: boolean
  [fiberTag]?: Fiber.Fiber<unknown, unknown> | undefined
}

const fiberTag: unique symbol = Symbol.for("@pqcancel/node/SqlPgAdapter/fiber")

/** The unpinned connection object of one physical connection, as this module reads it */
export interface Base {
  readonly session: {
    readonly socket: Net.Socket
    readonly encrypted: boolean
    readonly processId: number
    readonly secretKey: number
  }
  readonly deadWith: unknown
  readonly consumer: unknown
  readonly multiplex: boolean
  readonly owner: Semaphore.Semaphore
  readonly pipelinePending: Array<PipelineEntry>
  readonly pipelineInFlight: Array<PipelineEntry>
  readonly pipelineHead: number
}

const isInt32 = (n: unknown): n is number =>
  Number.isInteger(n) && (n as number) >= -0x80000000 && (n as number) <= 0x7fffffff

const isObject = (u: unknown): u is Record<string, unknown> => typeof u === "object" && u !== null

/** The base connection of a connection (pinned or not); a string describing the drift when it is not found */
export const baseOf = (connection: object): Base | string => {
  const internals = (connection as Record<string, unknown>)[internalsKey]
  if (!isObject(internals)) return `no "${internalsKey}" on the connection`
  const base = internals.base
  if (!isObject(base)) return "the connection internals have no base connection"
  return base as unknown as Base
}

/**
 * Checks the fields this module reads on a base connection (once per physical connection), and tags the statements
 * a multiplexed one queues with the fiber that queued them (the one thing `locate` needs to find a statement): a
 * drift description, or undefined.
 */
export const checkBase = (base: Base, processId: number): string | undefined => {
  const session: unknown = base.session
  if (!isObject(session)) return "the base connection has no session"
  const { encrypted, socket } = session
  if (!isInt32(session.processId)) return "session.processId is not a 32-bit pid"
  if (session.processId !== processId) {
    return `session.processId ${session.processId} is not the connection's processId ${processId}`
  }
  if (!isInt32(session.secretKey)) return "session.secretKey is not a 32-bit protocol 3.0 cancel key"
  if (typeof encrypted !== "boolean") return "session.encrypted is not a boolean"
  if (!(socket instanceof Net.Socket)) return "session.socket is not a net.Socket (a custom stream?)"
  if (encrypted !== (socket instanceof Tls.TLSSocket)) {
    return `session.encrypted is ${encrypted} but the socket is ${encrypted ? "not " : ""}a TLS socket`
  }
  if (!("consumer" in base) || !("deadWith" in base)) return "the base connection has no consumer / deadWith"
  if (base.multiplex !== true) return undefined
  if (
    !Array.isArray(base.pipelinePending) || !Array.isArray(base.pipelineInFlight) ||
    typeof base.pipelineHead !== "number"
  ) {
    return "a multiplexed connection has no pipelinePending / pipelineInFlight / pipelineHead"
  }
  const owner = base.owner as Partial<Semaphore.Semaphore> | undefined
  if (typeof owner?.take !== "function" || typeof owner.release !== "function") {
    return "a multiplexed connection has no owner permit"
  }
  tagPending(base.pipelinePending)
  return undefined
}

// every statement queued on this pipeline remembers the fiber that queued it (sql-pg queues it in the caller's fiber)
const tagPending = (pending: Array<PipelineEntry>): void => {
  if (Object.prototype.hasOwnProperty.call(pending, "push")) return
  Object.defineProperty(pending, "push", {
    configurable: true,
    value(this: Array<PipelineEntry>, ...entries: Array<PipelineEntry>) {
      const fiber = Fiber.getCurrent()
      for (const entry of entries) {
        if (isObject(entry)) entry[fiberTag] = fiber
      }
      return Array.prototype.push.apply(this, entries)
    }
  })
}

const isDead = (base: Base): boolean => base.deadWith !== undefined || base.session.socket.destroyed

/**
 * Where the statement run by `fiber` is on a multiplexed connection. `"running"` only when it is the head and nothing
 * is written or queued behind it, and holds the owner permit (no statement is queued behind it) until the
 * interruption is over; with statements behind it a cancel could hit one of them: `"elsewhere"`.
 */
export const locateMultiplexed = (
  base: Base,
  fiber: Fiber.Fiber<unknown, unknown>
): "withdrawn" | "running" | "behind" | "elsewhere" | Effect.Effect<"running" | "elsewhere", never, Scope.Scope> => {
  if (isDead(base)) return "elsewhere" // it fails by itself
  const pending = base.pipelinePending
  for (const entry of pending) {
    if (entry[fiberTag] === fiber) {
      entry.abandoned = true // never written
      return "withdrawn"
    }
  }
  const inFlight = base.pipelineInFlight
  const head = base.pipelineHead
  let index = -1
  for (let i = head; i < inFlight.length; i++) {
    if (inFlight[i]![fiberTag] === fiber) {
      index = i
      break
    }
  }
  // not queued yet (waiting for the owner permit to queue it): interrupting its fiber withdraws it
  if (index === -1) return "withdrawn"
  if (index > head) return "behind"
  if (inFlight.length - 1 > head || pending.length > 0) return "elsewhere"
  // the head, alone: keep it alone until the interruption is over (a pin waiting for the pipeline to drain holds
  // the permit: its statement would follow at once, so no cancel then)
  if (holders.get(base) === fiber) return "running" // held since an earlier locate of this interruption
  return Effect.flatMap(
    base.owner.takeIfAvailable(1),
    (taken) => {
      if (!taken) return Effect.succeed("elsewhere" as const)
      holders.set(base, fiber)
      return Effect.as(
        Effect.addFinalizer(() =>
          Effect.suspend(() => {
            holders.delete(base)
            return base.owner.release(1)
          })
        ),
        "running" as const
      )
    }
  )
}

// the interrupted statement (its fiber) holding a connection's owner permit
const holders = new WeakMap<Base, Fiber.Fiber<unknown, unknown>>()

/**
 * Completes when the statement run by `fiber`, written behind others, may have become the head: the statement right
 * ahead of it ended (its Deferred; an abandoned one is never completed, then a short poll).
 */
export const awaitTurn = (base: Base, fiber: Fiber.Fiber<unknown, unknown>): Effect.Effect<void> =>
  Effect.suspend(() => {
    const inFlight = base.pipelineInFlight
    for (let i = base.pipelineHead + 1; i < inFlight.length; i++) {
      if (inFlight[i]![fiberTag] === fiber) {
        const ahead = inFlight[i - 1]!
        // its outcome is not ours to read: only that it ended
        if (!ahead.abandoned) return Effect.asVoid(Effect.exit(Deferred.await(ahead.deferred)))
        break
      }
    }
    return Effect.sleep(2)
  })

/**
 * After a pipelined statement's fiber was interrupted (sql-pg then abandons its entry: a pending one is never
 * written, a written one's answer is dropped): takes back a written one — its answer is awaited again — so the
 * interruption can cancel it and wait for its end. Undefined when nothing of it is left on the wire.
 */
export const reclaimPipelined = (base: Base, fiber: Fiber.Fiber<unknown, unknown>): {
  readonly poll: () => Exit.Exit<unknown, unknown> | undefined
  readonly await: Effect.Effect<Exit.Exit<unknown, unknown>>
  readonly abandon: Effect.Effect<void>
} | undefined => {
  const inFlight = base.pipelineInFlight
  let entry: PipelineEntry | undefined
  for (let i = base.pipelineHead; i < inFlight.length; i++) {
    if (inFlight[i]![fiberTag] === fiber) {
      entry = inFlight[i]
      break
    }
  }
  if (entry === undefined || Deferred.isDoneUnsafe(entry.deferred)) return undefined
  entry.abandoned = false // its answer completes its Deferred again
  const deferred = entry.deferred
  const reclaimed = entry
  let ended: Exit.Exit<unknown, unknown> | undefined
  return {
    poll: () => ended ?? (Deferred.isDoneUnsafe(deferred) ? Exit.void : undefined),
    await: Effect.tap(Effect.exit(Deferred.await(deferred)), (exit) =>
      Effect.sync(() => {
        ended = exit
      })),
    abandon: Effect.sync(() => {
      reclaimed.abandoned = true
    })
  }
}

/**
 * Where the statement is on a connection the adapter runs one statement at a time on (its own turn): written
 * (`consumer` set) ⇒ `"running"`; else it waits for sql-pg's owner permit ⇒ `"withdrawn"` (its fiber is interrupted
 * before it writes anything).
 */
export const locateExclusive = (base: Base): "withdrawn" | "running" | "elsewhere" =>
  isDead(base) ? "elsewhere" : base.consumer === undefined ? "withdrawn" : "running"
