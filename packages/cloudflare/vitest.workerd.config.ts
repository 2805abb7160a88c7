// The Workers suite: run by `node scripts/runtime-tests.ts workerd` (not by the root `pnpm test`, whose projects are
// the packages' vitest.config.ts), like the Bun and Deno suites
import { defineProject, mergeConfig } from "vitest/config"
import shared from "../../vitest.shared.ts"

export default mergeConfig(shared, defineProject({ test: { root: import.meta.dirname, name: "@pqcancel/cloudflare" } }))
