/**
 * The runtime guard of the other runtimes' suites (`node scripts/runtime-tests.ts bun|deno`, docs/runtimes.md): the
 * test files run there really run on that runtime, not on a Node that a wrapper fell back to.
 */
import { assert, it } from "@effect/vitest"
import { NodeTransport } from "@pqcancel/node"
import * as BunTransport from "@pqcancel/node/BunTransport"

const actual = "Bun" in globalThis ? "bun" : "Deno" in globalThis ? "deno" : "node"

it("the suite runs on the runtime it was started for", () => {
  assert.strictEqual(actual, process.env["PQCANCEL_RUNTIME"] ?? "node")
})

it("the transport the files provide is the one the run is for (NodeTransport, or BunTransport in its place)", () => {
  const swapped = process.env["PQCANCEL_TRANSPORT"] === "bun"
  assert.strictEqual(NodeTransport.layer === BunTransport.layer, swapped)
})
