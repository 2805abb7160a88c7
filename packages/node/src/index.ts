/**
 * pqcancel for Node.js: the `Transport` Layer (net, tls, unix sockets). Driver adapters have their own entry points
 * (`@pqcancel/node/PgAdapter`, ...) so that importing this one never loads a driver you did not install.
 *
 * @since 0.1.0
 */

/**
 * @since 0.1.0
 */
export * as NodeTransport from "./NodeTransport.ts"
