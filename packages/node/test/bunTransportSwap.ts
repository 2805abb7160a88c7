/**
 * `NodeTransport` with BunTransport in its place, for the conformance suites' second run on Bun
 * (packages/node/vitest.bun-transport.config.ts): every `NodeTransport.layer` the test files provide is then Bun's own
 * transport; the rest of the module (errorText, makeWith, …) stays Node's.
 */
import * as BunTransport from "@pqcancel/node/BunTransport"

export * from "@pqcancel/node/NodeTransport"
export const make = BunTransport.make
export const layer = BunTransport.layer
