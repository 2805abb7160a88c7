// The conformance suites with BunTransport in NodeTransport's place (run on Bun by `node scripts/runtime-tests.ts
// bun`): `@pqcancel/node`'s index re-exports test/bunTransportSwap.ts as NodeTransport
import * as Path from "node:path"
import { defineProject, mergeConfig } from "vitest/config"
import shared from "../../vitest.shared.ts"

const index = Path.join(import.meta.dirname, "src", "index.ts")
const swap = Path.join(import.meta.dirname, "test", "bunTransportSwap.ts")

export default mergeConfig(
  shared,
  defineProject({
    plugins: [{
      name: "pqcancel-bun-transport",
      enforce: "pre",
      resolveId: (source: string, importer: string | undefined) =>
        source === "./NodeTransport.ts" && importer === index ? swap : null
    }],
    test: { root: import.meta.dirname, name: "@pqcancel/node (BunTransport)" }
  })
)
