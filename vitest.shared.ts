import * as path from "node:path"
import type { ViteUserConfig } from "vitest/config"

// Merged into every package's vitest.config.ts
const config: ViteUserConfig = {
  test: {
    include: ["test/**/*.test.ts"],
    exclude: ["**/node_modules/**", "**/dist/**"],
    setupFiles: [path.join(import.meta.dirname, "vitest.setup.ts")],
    sequence: { concurrent: true },
    testTimeout: 30_000,
    hookTimeout: 60_000,
    passWithNoTests: true
  }
}

export default config
