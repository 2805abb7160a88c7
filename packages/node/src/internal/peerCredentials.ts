import type * as TransportNs from "@pqcancel/core/Transport"

/**
 * libpq's answer to `requirepeer` on a unix socket where the peer's credentials (SO_PEERCRED) cannot be read, as in
 * Node's and Bun's socket APIs: the connection is refused instead of trusted. `undefined` when the request does not
 * ask for a peer check.
 */
export const unverifiablePeer = (request: TransportNs.ConnectRequest): TransportNs.TransportEvent | undefined =>
  request.address._tag === "Unix" && request.options.requirepeer !== undefined
    ? { _tag: "PeerRejected", message: "requirepeer parameter is not supported on this platform" }
    : undefined
