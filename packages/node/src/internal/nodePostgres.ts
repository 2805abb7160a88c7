/**
 * node-postgres' private state, read in this one module (the `PgAdapter` driver port): a connected client's cancel
 * key (`processID`, `secretKey`), its `sslNegotiation` and socket, and — only after an interruption — its running
 * query and queues (`_activeQuery`, `_queryQueue`, `_sentQueryQueue` in pg ≥ 8.16; `activeQuery`, `queryQueue`
 * before; `_sentQueryQueue` exists since pipeline mode). Every field is checked for its type; anything else is a
 * drift, reported with the installed pg version, never a wrong key or a wrong statement cancelled.
 */
import * as Net from "node:net"
import type pg from "pg"
import pgPackage from "pg/package.json" with { type: "json" }

/** The installed node-postgres version, named in drift errors. */
export const pgVersion: string = (pgPackage as { readonly version?: unknown }).version as string

interface PgPrivate {
  readonly processID?: unknown
  readonly secretKey?: unknown
  readonly sslNegotiation?: unknown
  readonly _activeQuery?: unknown
  readonly activeQuery?: unknown
  readonly _queryQueue?: unknown
  readonly queryQueue?: unknown
  readonly _sentQueryQueue?: unknown
  readonly pipeline?: unknown
}

/** What a connected client tells about its session (read once per client). */
export interface ConnectionFacts {
  readonly processID: number
  readonly secretKey: number
  readonly stream: Net.Socket
}

const isInt32 = (n: unknown): n is number =>
  Number.isInteger(n) && (n as number) >= -0x80000000 && (n as number) <= 0x7fffffff

/**
 * The session facts of a client: `"not connected"` when it has no key or open socket yet (or any more), a drift
 * description when the fields are not what pg 8 keeps.
 */
export const readConnection = (
  client: pg.Client
): { readonly _tag: "Ok"; readonly facts: ConnectionFacts } | {
  readonly _tag: "NotConnected"
} | { readonly _tag: "Changed"; readonly what: string } => {
  const p = client as unknown as PgPrivate
  const stream: unknown = client.connection?.stream
  if (p.processID == null || p.secretKey == null) return { _tag: "NotConnected" }
  // a pooler's key may carry any int32 as its pid (PgBouncer's are random)
  if (!isInt32(p.processID)) return { _tag: "Changed", what: "processID is not a 32-bit pid" }
  if (!isInt32(p.secretKey)) return { _tag: "Changed", what: "secretKey is not a 32-bit protocol 3.0 cancel key" }
  if (!(stream instanceof Net.Socket)) {
    return stream === undefined || stream === null
      ? { _tag: "NotConnected" }
      : { _tag: "Changed", what: "connection.stream is not a net.Socket" }
  }
  if (stream.destroyed) return { _tag: "NotConnected" }
  const queue = "_activeQuery" in p ? p._queryQueue : p.queryQueue
  if (!Array.isArray(queue)) return { _tag: "Changed", what: "the client has no query queue (_queryQueue)" }
  if (p._sentQueryQueue !== undefined && !Array.isArray(p._sentQueryQueue)) {
    return { _tag: "Changed", what: "_sentQueryQueue is not an array" }
  }
  return { _tag: "Ok", facts: { processID: p.processID, secretKey: p.secretKey, stream } }
}

/** The client's `sslnegotiation` (pg ≥ 8.22 has direct TLS). */
export const sslNegotiationOf = (client: pg.Client): "direct" | "postgres" =>
  (client as unknown as PgPrivate).sslNegotiation === "direct" ? "direct" : "postgres"

/**
 * Where a query the adapter gave the client is (read after an interruption). `"withdrawn"` takes it out of the
 * client's queue (it is never written); a query written behind others (pipeline mode) is `"behind"`; a query with
 * others written behind it, or queued behind one issued outside the adapter, is never `"running"`.
 */
export const locateQuery = (client: pg.Client, query: unknown): "withdrawn" | "running" | "behind" | "elsewhere" => {
  const p = client as unknown as PgPrivate
  const underscored = "_activeQuery" in p // pg ≥ 8.16 warns on the old names
  const active = underscored ? p._activeQuery : p.activeQuery
  const sent = Array.isArray(p._sentQueryQueue) ? p._sentQueryQueue : []
  const stream: unknown = client.connection?.stream
  // a closed socket fails the query by itself: nothing to cancel
  if (!(stream instanceof Net.Socket) || stream.destroyed) return "elsewhere"
  if (active === query) return sent.length === 0 ? "running" : "elsewhere"
  // pipeline mode: written behind the running query, it runs once those ahead of it have ended
  if (sent.includes(query)) return "behind"
  const queue = underscored ? p._queryQueue : p.queryQueue
  const index = Array.isArray(queue) ? queue.indexOf(query) : -1
  if (index !== -1) {
    // still in node-postgres' queue (behind a query issued outside the adapter): it will never be written
    ;(queue as Array<unknown>).splice(index, 1)
    return "withdrawn"
  }
  return "elsewhere"
}

// pg < 8.21 has no `getTransactionStatus`: the session's transaction status from its ReadyForQuery messages, followed
// from a pool checkout on (one listener per client, never per query)
const followed = new WeakMap<pg.Client, { status: string | undefined }>()

/** On pg < 8.21, starts following the client's transaction status (a no-op where pg keeps it, or when followed). */
export const followTransactionStatus = (client: pg.Client): void => {
  if (typeof (client as { getTransactionStatus?: unknown }).getTransactionStatus === "function") return
  const connection = client.connection as unknown as { on?: unknown } | undefined
  if (followed.has(client) || typeof connection?.on !== "function") return
  const cell: { status: string | undefined } = { status: undefined }
  followed.set(client, cell)
  ;(connection.on as (event: string, listener: (message: { readonly status?: unknown }) => void) => void).call(
    connection,
    "readyForQuery",
    (message) => {
      cell.status = typeof message?.status === "string" ? message.status : undefined
    }
  )
}

/**
 * The client's transaction status from its last ReadyForQuery (`I` idle, `T` in a transaction, `E` in a failed
 * one): pg's own `getTransactionStatus()` (pg ≥ 8.21), else what {@link followTransactionStatus} saw; undefined when
 * unknown.
 */
export const transactionStatus = (client: pg.Client): string | undefined => {
  const own = (client as { getTransactionStatus?: unknown }).getTransactionStatus
  if (typeof own === "function") {
    const status: unknown = own.call(client)
    return typeof status === "string" ? status : undefined
  }
  return followed.get(client)?.status
}
