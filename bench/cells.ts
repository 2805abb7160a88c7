/**
 * What is measured: the transport × protocol cells and the systems, with the support matrix ("n/a" cells).
 */
import { CancelKey, ConnectionOptions } from "@pqcancel/core"
import type { CancelConnection } from "@pqcancel/core"
import type { TestSession } from "@pqcancel/test-utils"
import type { Cluster } from "@pqcancel/test-utils/EmbeddedPostgres"
import * as Result from "effect/Result"

export type TransportName = "tcp" | "tls" | "vfull" | "direct" | "unix"
export type Protocol = "3.0" | "3.2"

export interface Cell {
  readonly id: string
  readonly transport: TransportName
  readonly protocol: Protocol
}

export const transportLabel: Record<TransportName, string> = {
  tcp: "TCP (sslmode=disable)",
  tls: "TLS via SSLRequest (sslmode=require)",
  vfull: "TLS via SSLRequest, sslmode=verify-full (CA file, host name check)",
  direct: "direct TLS (sslnegotiation=direct)",
  unix: "unix socket"
}

export const allCells: ReadonlyArray<Cell> = (["tcp", "tls", "vfull", "direct", "unix"] as const).flatMap((transport) =>
  (["3.0", "3.2"] as const).map((protocol) => ({ id: `${transport}/${protocol}`, transport, protocol }))
)

export type SystemId =
  | "pqcancel-blocking"
  | "pqcancel-poll"
  | "pqcancel-all"
  | "libpq-blocking"
  | "libpq-poll"
  | "libpq-legacy"
  | "pg"
  | "postgresjs"
  | "node-floor"
  | "node-naive"

export interface System {
  readonly id: SystemId
  readonly label: string
  readonly kind: "pqcancel" | "libpq" | "peer" | "reference"
  /** why a cell is n/a, or undefined when supported */
  readonly unsupported: (cell: Cell) => string | undefined
}

/** whether the cell's cancel travels over TLS */
export const encrypted = (cell: Cell): boolean =>
  cell.transport === "tls" || cell.transport === "vfull" || cell.transport === "direct"

/** how the cell negotiates TLS */
export const tlsMode = (cell: Cell): "disable" | "sslrequest" | "direct" =>
  cell.transport === "direct" ? "direct" : encrypted(cell) ? "sslrequest" : "disable"

/** the cell verifies the server (verify-full: the CA and the host name "localhost") */
export const verifyFull = (cell: Cell): boolean => cell.transport === "vfull"

export const systems: ReadonlyArray<System> = [
  { id: "pqcancel-blocking", label: "pqcancel blocking", kind: "pqcancel", unsupported: () => undefined },
  { id: "pqcancel-poll", label: "pqcancel start+poll", kind: "pqcancel", unsupported: () => undefined },
  {
    id: "pqcancel-all",
    label: "pqcancel cancelAll (concurrency 32)",
    kind: "pqcancel",
    unsupported: () => "bursts only"
  },
  { id: "libpq-blocking", label: "libpq PQcancelBlocking", kind: "libpq", unsupported: () => undefined },
  { id: "libpq-poll", label: "libpq PQcancelStart+Poll", kind: "libpq", unsupported: () => undefined },
  {
    id: "libpq-legacy",
    label: "libpq PQcancel (legacy)",
    kind: "libpq",
    unsupported: (cell) => encrypted(cell) ? "PQcancel never encrypts" : undefined
  },
  {
    id: "pg",
    label: "pg 8.23 client.cancel",
    kind: "peer",
    unsupported: (cell) =>
      cell.protocol === "3.2"
        ? "pg speaks protocol 3.0 only"
        : encrypted(cell)
        ? "pg sends its CancelRequest in plaintext"
        : undefined
  },
  {
    id: "postgresjs",
    label: "postgres.js 3.4 query.cancel",
    kind: "peer",
    unsupported: (cell) => cell.protocol === "3.2" ? "postgres.js speaks protocol 3.0 only" : undefined
  },
  {
    id: "node-floor",
    label: "Node floor (hand-written node:net/tls, tuned)",
    kind: "reference",
    unsupported: () => undefined
  },
  {
    id: "node-naive",
    label: "naive node:tls (new context per cancel, default groups)",
    kind: "reference",
    unsupported: (cell) => encrypted(cell) ? undefined : "the same as the Node floor without TLS"
  }
]

/** libpq conninfo of a cell (what the harness's sessions and thus their cancels use). */
export const libpqConninfo = (cluster: Cluster, cell: Cell, extra?: Record<string, string>): string =>
  cluster.conninfo(cell.transport === "unix" ? "unix" : "tcp", {
    sslmode: verifyFull(cell) ? "verify-full" : encrypted(cell) ? "require" : "disable",
    // verify-full checks the name "localhost" (the test certificate's) against a connection to 127.0.0.1
    ...(verifyFull(cell) ? { host: "localhost", hostaddr: "127.0.0.1", sslrootcert: cluster.caCertPath } : {}),
    ...(cell.transport === "direct" ? { sslnegotiation: "direct" } : {}),
    max_protocol_version: cell.protocol === "3.2" ? "latest" : "3.0",
    ...extra
  })

/**
 * The options pqcancel gets for a cell: parsed from the same conninfo as libpq's sessions (libpq's defaults plus the
 * cell's sslmode, sslnegotiation and protocol).
 */
export const pqcancelOptions = (cluster: Cluster, cell: Cell): ConnectionOptions.ConnectionOptions =>
  Result.getOrThrow(ConnectionOptions.fromStringResult(libpqConninfo(cluster, cell), {}))

/** What pqcancel needs to cancel a TestSession's query in a cell: the cell's options, the session's address and key */
export const pqcancelSession = (
  cluster: Cluster,
  cell: Cell,
  session: TestSession.TestSession
): CancelConnection.SessionInfo => {
  const options = pqcancelOptions(cluster, cell)
  return {
    options,
    host: options.hosts[0]!,
    address: session.remote,
    key: CancelKey.unsafeMake(session.backendKey)
  }
}
