/**
 * The suites of the other runtimes (run by `.ci/run`, see docs/runtimes.md):
 *
 * - `bun`, `deno`: the conformance test files of `@pqcancel/node` below under vitest running on Bun (`bun --bun`,
 *   worker threads) or Deno (`deno run -A`, child processes), each starting its own embedded PostgreSQL from that
 *   runtime and stopping it; `Runtime.test.ts` fails unless the files really run on that runtime. On Bun twice:
 *   with NodeTransport, then with BunTransport in its place (packages/node/vitest.bun-transport.config.ts);
 * - `workerd`: `@pqcancel/cloudflare`'s suite (vitest on Node), which runs its Worker on workerd against an embedded
 *   PostgreSQL on loopback.
 *
 * Prints `<runtime>: N passed, N failed` and exits non-zero on a failure.
 *
 *   node scripts/runtime-tests.ts bun|deno|workerd
 */
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Path from "node:path"

const root = Path.resolve(import.meta.dirname, "..")
const bin = (name: string) => Path.join(root, "node_modules", ".bin", name)
const vitest = Path.join(root, "node_modules", "vitest", "vitest.mjs")

/** The conformance-critical files: sslmodes and the key never in plaintext, faults, timeouts, the adapters. */
export const conformanceFiles: ReadonlyArray<string> = [
  "Runtime",
  "CancelConnection",
  "CancelLimits",
  "ClientCert",
  "Faults",
  "PgAdapter",
  "PostgresJsAdapter",
  "SslMaterial",
  "SslModes",
  "SslModesNoTls"
].map((name) => `packages/node/test/${name}.test.ts`)

interface Pass {
  readonly command: string
  readonly args: ReadonlyArray<string>
  readonly env?: Record<string, string>
}

// the package's own vitest project only (not its second ones, e.g. the oldest drivers' aliased installs)
const nodeProject = ["--project", "@pqcancel/node"]
const bunVitest = [bin("bun"), ["--bun", vitest, "run", "--pool=threads"]] as const
const runtimes: Record<"bun" | "deno" | "workerd", ReadonlyArray<Pass>> = {
  bun: [
    // NodeTransport on Bun's node:net / node:tls, then BunTransport in its place (Bun.connect)
    { command: bunVitest[0], args: [...bunVitest[1], ...nodeProject, ...conformanceFiles] },
    {
      command: bunVitest[0],
      args: [...bunVitest[1], "--config", "packages/node/vitest.bun-transport.config.ts", ...conformanceFiles],
      env: { PQCANCEL_TRANSPORT: "bun" }
    }
  ],
  deno: [{
    command: bin("deno"),
    args: ["run", "-A", vitest, "run", "--pool=forks", ...nodeProject, ...conformanceFiles]
  }],
  workerd: [{
    command: process.execPath,
    args: [vitest, "run", "--config", "packages/cloudflare/vitest.workerd.config.ts"]
  }]
}

const name = process.argv[2]
if (name !== "bun" && name !== "deno" && name !== "workerd") {
  console.error("usage: node scripts/runtime-tests.ts bun|deno|workerd")
  process.exit(2)
}
let passed = 0
let failed = 0
runtimes[name].forEach((pass, index) => {
  const report = Path.join(root, "build", `${name}-results-${index}.json`)
  Fs.mkdirSync(Path.dirname(report), { recursive: true })
  Fs.rmSync(report, { force: true })
  const child = ChildProcess.spawnSync(
    pass.command,
    [...pass.args, "--reporter=default", "--reporter=json", `--outputFile.json=${report}`],
    {
      cwd: root,
      stdio: "inherit",
      env: { ...process.env, ...pass.env, PQCANCEL_RUNTIME: name },
      // bounded: a hung suite fails CI instead of stalling it
      timeout: 240_000,
      killSignal: "SIGKILL"
    }
  )
  let passFailed = 0
  if (Fs.existsSync(report)) {
    const results = JSON.parse(Fs.readFileSync(report, "utf8")) as {
      readonly numPassedTests: number
      readonly numFailedTests: number
    }
    passed += results.numPassedTests
    passFailed = results.numFailedTests
  }
  // a non-zero exit with no failed test (unhandled error, timeout, crash) counts as one failure
  if (child.status !== 0 && passFailed === 0) passFailed = 1
  if (child.error !== undefined) console.error(`${name}: ${child.error.message}`)
  failed += passFailed
})
console.log(`${name}: ${passed} passed, ${failed} failed`)
process.exit(failed === 0 ? 0 : 1)
