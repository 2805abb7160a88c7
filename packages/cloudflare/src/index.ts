/**
 * pqcancel for Cloudflare Workers: the `Transport` Layer over `cloudflare:sockets`.
 *
 * @since 0.1.0
 */

/**
 * @since 0.1.0
 */
export * as CloudflareTransport from "./CloudflareTransport.ts"
