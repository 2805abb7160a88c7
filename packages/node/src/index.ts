/**
 * pqcancel for Node.js: the `Transport` Layer (net, tls, unix sockets) and driver adapters.
 *
 * @since 0.1.0
 */

/**
 * @since 0.1.0
 */
export * as NodeTransport from "./NodeTransport.ts"

/**
 * @since 0.1.0
 */
export * as PgAdapter from "./PgAdapter.ts"
