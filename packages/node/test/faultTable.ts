/**
 * THE fault table of docs/reliability.md: per fault, what one cancel reports (`blocking`, the poll loop, `cancelAll`,
 * the legacy `PQcancel`) and what an interrupted statement does (its bound, the connection kept or retired). The
 * fault suite (FaultMatrix.test.ts) plays every row through a FaultProxy in front of PostgreSQL 18 and checks each
 * outcome against it; the guide's table must be {@link renderMarkdown}'s output.
 */
import type { FaultProxy } from "@pqcancel/test-utils"

/** How the cancel (and the session) reach the server */
export type Route = "tcp" | "tls" | "direct" | "unix"

/** What one cancel attempt reports: success, or its typed error with libpq's text (the `connection to server … failed:`
 * prefix left out) */
export type Outcome =
  | { readonly _tag: "ok" }
  | {
    readonly _tag: "CancelFailed" | "CancelTimeout"
    readonly transient: boolean
    readonly text: string
  }

/** When an interrupted statement's fiber ends, at the latest */
export type Bound = "cancelTimeout" | "cancelTimeout + drainTimeout"

/** What an interrupted statement does */
export interface Interrupt {
  readonly bound: Bound
  readonly connection: "kept" | "retired"
  /** why it was retired (`onUnsafe`'s reason, with the cancel's error) */
  readonly reason?: "CancelNotConfirmed: CancelTimeout" | "CancelNotConfirmed: CancelFailed" | "QueryDidNotEnd"
}

/** The legacy `PQcancel`'s result */
export type Legacy = { readonly ok: true } | { readonly ok: false; readonly text: string }

/** One value, or one per route where the routes differ */
export type PerRoute<A> = A | { readonly byRoute: { readonly [R in Route]?: A } }

export interface FaultRow {
  readonly id: string
  /** the fault, as the guide says it */
  readonly fault: string
  /** the proxy's fault for the n-th cancel connection (0 first); undefined for none */
  readonly cancel?: (attempt: number) => FaultProxy.Fault | undefined
  /** the proxy's fault for the session (interrupt tests: the session goes through the proxy too) */
  readonly session?: FaultProxy.Fault
  /** the proxy stops listening once the statement runs: every cancel connection is refused */
  readonly refuse?: boolean
  /** the session's connection is stalled both ways once the statement runs */
  readonly stall?: boolean
  /** the cancel's bound in the tests, when not the suite's */
  readonly cancelTimeoutMs?: number
  /** the routes it applies to (default all) */
  readonly routes?: ReadonlyArray<Route>
  /** one cancel attempt (`blocking`, the poll loop's end, `cancelAll`'s results) */
  readonly once: PerRoute<Outcome>
  /** the legacy `PQcancel` (plaintext by design; tcp and unix), where it differs from `once` */
  readonly legacy?: PerRoute<Legacy>
  /** an interrupted statement (`cancelOnInterrupt`, the adapters) */
  readonly interrupt: PerRoute<Interrupt>
}

/** A row's value on one route */
export const on = <A>(value: PerRoute<A>, route: Route): A =>
  typeof value === "object" && value !== null && "byRoute" in value
    ? (value as { readonly byRoute: { readonly [R in Route]?: A } }).byRoute[route]!
    : value as A

const OK: Outcome = { _tag: "ok" }
const kept: Interrupt = { bound: "cancelTimeout", connection: "kept" }
const SERVER_CLOSED = "server closed the connection unexpectedly\n" +
  "\tThis probably means the server terminated abnormally\n" +
  "\tbefore or while processing the request."
const failed = (text: string): Outcome => ({ _tag: "CancelFailed", transient: true, text })
const TIMED_OUT: Outcome = { _tag: "CancelTimeout", transient: true, text: "timeout expired" }
const TLS_RESET = "SSL SYSCALL error: Connection reset by peer"
const notConfirmed = (error: "CancelTimeout" | "CancelFailed"): Interrupt => ({
  bound: "cancelTimeout + drainTimeout",
  connection: "retired",
  reason: `CancelNotConfirmed: ${error}`
})
// a reset before the request is passed on: TCP and TLS by SSLRequest see the close, direct TLS the reset inside its
// handshake; a unix socket (no RST: closed) looks like a dispatched cancel, to libpq too
const resetAtConnect: Outcome | { readonly byRoute: { readonly [R in Route]?: Outcome } } = {
  byRoute: { tcp: failed(SERVER_CLOSED), tls: failed(SERVER_CLOSED), direct: failed(TLS_RESET), unix: OK }
}
// the server's close held back: over TLS its close_notify already ends the cancel; an interrupted statement's 57014
// confirms its cancel, so the held cancel connection is finished and the connection kept
const heldClose = {
  once: { byRoute: { tcp: TIMED_OUT, tls: OK, direct: OK, unix: TIMED_OUT } },
  interrupt: kept
} as const

export const rows: ReadonlyArray<FaultRow> = [
  { id: "none", fault: "none", once: OK, interrupt: kept },
  {
    id: "cancel-latency",
    fault: "cancel connection: 50 ms each way",
    cancel: () => ({ latencyMs: { up: 50, down: 50 } }),
    once: OK,
    interrupt: kept
  },
  {
    id: "cancel-slices",
    fault: "cancel connection: 1–5 byte pieces",
    cancel: () => ({ slice: true }),
    // a TLS handshake in 1–5 byte pieces, one per event-loop turn, is slow on a loaded machine
    cancelTimeoutMs: 5000,
    once: OK,
    interrupt: kept
  },
  {
    id: "cancel-blackhole",
    fault: "cancel connection: blackhole (read, never answered)",
    cancel: () => ({ blackhole: true }),
    once: TIMED_OUT,
    interrupt: notConfirmed("CancelTimeout")
  },
  {
    id: "cancel-reset-once",
    fault: "first cancel connection: reset (RST; a unix socket: closed) before the request is passed on",
    cancel: (n) => n === 0 ? { resetAfter: { up: 0 } } : undefined,
    once: resetAtConnect,
    // PQcancel counts a failed read after the request as sent (as libpq's)
    legacy: { ok: true },
    // the retry (TCP, TLS) or the repeated cancel (unix, after recancelInterval) gets through
    interrupt: kept
  },
  {
    id: "cancel-reset",
    fault: "every cancel connection: reset (RST; a unix socket: closed) before the request is passed on",
    cancel: () => ({ resetAfter: { up: 0 } }),
    once: resetAtConnect,
    legacy: { ok: true },
    interrupt: {
      byRoute: {
        tcp: notConfirmed("CancelFailed"),
        tls: notConfirmed("CancelFailed"),
        direct: notConfirmed("CancelFailed"),
        // every cancel looked dispatched; the statement ran on
        unix: { bound: "cancelTimeout + drainTimeout", connection: "retired", reason: "QueryDidNotEnd" }
      }
    }
  },
  {
    id: "tls-reset-once",
    fault: "first cancel connection: reset in the middle of the TLS handshake",
    routes: ["tls", "direct"],
    cancel: (n) => n === 0 ? { inHandshake: "reset" } : undefined,
    once: failed(TLS_RESET),
    interrupt: kept
  },
  {
    id: "tls-close-once",
    fault: "first cancel connection: closed in the middle of the TLS handshake",
    routes: ["tls", "direct"],
    cancel: (n) => n === 0 ? { inHandshake: "close" } : undefined,
    once: failed("SSL SYSCALL error: EOF detected"),
    interrupt: kept
  },
  {
    id: "held-close",
    fault: "cancel connection: the server's close held 5 s",
    cancel: () => ({ holdCloseMs: 5000 }),
    ...heldClose
  },
  {
    id: "never-closed",
    fault: "cancel connection: the server's close never passed on",
    cancel: () => ({ holdCloseMs: "never" }),
    ...heldClose
  },
  {
    id: "refused",
    fault: "connect refused (the listener closed)",
    refuse: true,
    once: {
      byRoute: {
        tcp: failed("Connection refused\n\tIs the server running on that host and accepting TCP/IP connections?"),
        tls: failed("Connection refused\n\tIs the server running on that host and accepting TCP/IP connections?"),
        direct: failed("Connection refused\n\tIs the server running on that host and accepting TCP/IP connections?"),
        unix: failed(
          "No such file or directory\n\tIs the server running locally and accepting connections on that socket?"
        )
      }
    },
    legacy: {
      byRoute: {
        tcp: { ok: false, text: "PQcancel() -- connect() failed: error 111" },
        unix: { ok: false, text: "PQcancel() -- connect() failed: error 2" }
      }
    },
    interrupt: notConfirmed("CancelFailed")
  },
  {
    id: "session-latency",
    fault: "session: 300 ms each way",
    session: { latencyMs: { up: 300, down: 300 } },
    once: OK,
    interrupt: kept
  },
  { id: "session-slices", fault: "session: 1–5 byte pieces", session: { slice: true }, once: OK, interrupt: kept },
  {
    id: "session-stalled",
    fault: "session: stalled both ways (half-open) while the statement runs",
    stall: true,
    once: OK,
    // the server cancels the statement, but its 57014 never arrives
    interrupt: { bound: "cancelTimeout + drainTimeout", connection: "retired", reason: "QueryDidNotEnd" }
  }
]

/** Where an adapter does not do what its row says (each one a test too, so a fix shows) */
export interface AdapterException {
  readonly adapter: string
  readonly row: string
  readonly routes: ReadonlyArray<Route>
  readonly interrupt: Interrupt
  readonly why: string
}

// none since PostgresJsAdapter runs on the adapter kit (the statement's 57014 confirms a cancel whose connection's
// close is held)
export const adapterExceptions: ReadonlyArray<AdapterException> = []

/** The interrupt row of `row` for `adapter` on `route`, its exception included */
export const interruptFor = (row: FaultRow, adapter: string, route: Route): Interrupt =>
  adapterExceptions.find((e) => e.adapter === adapter && e.row === row.id && e.routes.includes(route))?.interrupt ??
    on(row.interrupt, route)

const ROUTES: ReadonlyArray<Route> = ["tcp", "tls", "direct", "unix"]

/** One cell: the value, or per group of routes with the same value */
const cell = <A>(value: PerRoute<A> | undefined, show: (a: A) => string, routes: ReadonlyArray<Route>): string => {
  if (value === undefined) return "—"
  if (typeof value !== "object" || value === null || !("byRoute" in value)) return show(value as A)
  const groups = new Map<string, Array<Route>>()
  for (const route of routes) {
    const text = show(on(value, route))
    groups.set(text, [...(groups.get(text) ?? []), route])
  }
  if (groups.size === 1) return Array.from(groups.keys())[0]!
  return Array.from(groups, ([text, group]) => `${group.join(", ")}: ${text}`).join("<br>")
}

const errorOf = (o: Outcome) => o._tag === "ok" ? "— (dispatched)" : `${o._tag}${o.transient ? " (transient)" : ""}`
const textOf = (o: Outcome) => o._tag === "ok" ? "—" : `\`${o.text.replaceAll("\n\t", " ")}\``
const legacyOf = (l: Legacy) => l.ok ? "ok" : `\`${l.text.replaceAll("\n\t", " ")}\``

/** The guide's table */
export const renderMarkdown = (): string => {
  const lines = [
    "| fault | routes | interrupt ends within | connection | one cancel: typed error | libpq's text | `PQcancel` |",
    "| --- | --- | --- | --- | --- | --- | --- |"
  ]
  for (const row of rows) {
    const routes = row.routes ?? ROUTES
    const legacy: PerRoute<Legacy> = row.legacy ?? {
      byRoute: Object.fromEntries(
        routes.filter((r) => r === "tcp" || r === "unix").map((r) => {
          const o = on(row.once, r)
          return [r, o._tag === "ok" ? { ok: true } : { ok: false, text: o.text }]
        })
      )
    }
    const legacyRoutes = routes.filter((r) => r === "tcp" || r === "unix")
    lines.push(
      `| ${row.fault} | ${routes.join(", ")} | ${cell(row.interrupt, (i) => i.bound, routes)} | ${
        cell(row.interrupt, (i) => i.reason === undefined ? i.connection : `${i.connection} (${i.reason})`, routes)
      } | ${cell(row.once, errorOf, routes)} | ${cell(row.once, textOf, routes)} | ${
        legacyRoutes.length === 0 ? "—" : cell(legacy, legacyOf, legacyRoutes)
      } |`
    )
  }
  return lines.join("\n")
}

/** The guide's table of adapter exceptions */
export const renderExceptions = (): string =>
  [
    "| adapter | fault | routes | interrupt ends within | connection | why |",
    "| --- | --- | --- | --- | --- | --- |",
    ...adapterExceptions.map((e) =>
      `| ${e.adapter} | ${rows.find((r) => r.id === e.row)?.fault} | ${e.routes.join(", ")} | ${e.interrupt.bound} | ${
        e.interrupt.reason === undefined ? e.interrupt.connection : `${e.interrupt.connection} (${e.interrupt.reason})`
      } | ${e.why} |`
    )
  ].join("\n")
