/**
 * `pnpm check:latest` (not part of CI, which stays reproducible on the lockfile): are the adapters still right on
 * today's newest effect, @effect/sql-pg, pg and postgres.js?
 *
 * 1. copies the repository's files (tracked and untracked, not ignored: your local changes included) into a temp
 *    directory;
 * 2. there, pins every workspace package.json's effect, @effect/platform-node, @effect/vitest, @effect/sql-pg, pg,
 *    @types/pg and postgres to the newest release on npm (`npm view NAME version`; the `npm:` aliases of the other
 *    tested versions stay), and runs `pnpm install` without the lockfile;
 * 3. runs the adapter suites of @pqcancel/node there (its test files named Pg*, PostgresJs*, SqlPg* and
 *    DriverVersions) against an embedded PostgreSQL, in the default vitest project (the newest drivers).
 *
 * Run it when a driver or Effect has a new release, and before a release of pqcancel; a failure names the
 * versions it ran against. `node scripts/check-latest.ts [--keep] [vitest filters…]` (`--keep` leaves the copy).
 */
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import { cleanEnv, run } from "./exec.ts"

const root = Path.resolve(import.meta.dirname, "..")
const args = process.argv.slice(2)
const keep = args.includes("--keep")
const filters = args.filter((a) => a !== "--keep")
const log = (line: string) => console.log(`check:latest: ${line}`)

/** The dependencies to move to their newest release (an alias `npm:NAME@…` of one of them too). */
const moving = (name: string) =>
  [
    "effect",
    "@effect/platform-node",
    "@effect/vitest",
    "@effect/sql-pg",
    "pg",
    "@types/pg",
    "postgres"
  ].includes(name)

/** The adapter suites: every test file of @pqcancel/node named after a driver (Pg*, PostgresJs*, SqlPg*). */
const adapterSuites = (dir: string) =>
  Fs.readdirSync(Path.join(dir, "packages", "node", "test"))
    .filter((f) => /^(Pg|PostgresJs|SqlPg|DriverVersions).*\.test\.ts$/.test(f))
    .map((f) => `packages/node/test/${f}`)

const newest = new Map<string, string>()
const newestOf = (name: string): string => {
  let version = newest.get(name)
  if (version === undefined) {
    version = run("npm", ["view", name, "version"], { cwd: root, env: cleanEnv(), quiet: true }).trim()
    newest.set(name, version)
  }
  return version
}

const copy = Fs.mkdtempSync(Path.join(Os.tmpdir(), "pqcancel-latest-"))
let failed = false
try {
  const files = run("git", ["ls-files", "-z", "--cached", "--others", "--exclude-standard"], {
    cwd: root,
    quiet: true
  }).split("\0").filter((f) => f !== "" && Fs.existsSync(Path.join(root, f)))
  for (const file of files) {
    Fs.mkdirSync(Path.dirname(Path.join(copy, file)), { recursive: true })
    Fs.copyFileSync(Path.join(root, file), Path.join(copy, file))
  }
  log(`copied ${files.length} files to ${copy}`)

  const changes = new Set<string>()
  for (const manifest of files.filter((f) => /^(package\.json|(packages\/[^/]+|docs)\/package\.json)$/.test(f))) {
    const path = Path.join(copy, manifest)
    const json = JSON.parse(Fs.readFileSync(path, "utf8")) as Record<string, Record<string, string> | undefined>
    for (const section of ["dependencies", "devDependencies"]) {
      const deps = json[section]
      if (deps === undefined) continue
      for (const [name, spec] of Object.entries(deps)) {
        // aliases (`npm:NAME@…`) pin the other versions the suites test (the oldest, postgres.js 4.1): they stay
        if (!moving(name) || spec.startsWith("workspace:") || spec.startsWith("npm:")) continue
        deps[name] = newestOf(name)
        if (deps[name] !== spec) changes.add(`${name} ${spec} → ${deps[name]}`)
      }
    }
    Fs.writeFileSync(path, `${JSON.stringify(json, null, 2)}\n`)
  }
  log(changes.size === 0 ? "the pins are the newest releases already" : [...changes].sort().join(", "))

  run("npx", ["-y", "pnpm@10", "install", "--no-frozen-lockfile"], {
    cwd: copy,
    env: cleanEnv(),
    quiet: true,
    timeoutMs: 600_000
  })
  log(`installed: ${[...newest].map(([name, version]) => `${name} ${version}`).join(", ")}`)
  run(
    "npx",
    [
      "-y",
      "pnpm@10",
      "vitest",
      "run",
      "--project",
      "@pqcancel/node",
      ...(filters.length > 0 ? filters : adapterSuites(copy))
    ],
    { cwd: copy, env: cleanEnv(), inherit: true, timeoutMs: 900_000 }
  )
  log(`the adapter suites pass on ${[...newest].map(([name, version]) => `${name} ${version}`).join(", ")}`)
} catch (error) {
  failed = true
  console.error(`check:latest FAILED: ${error instanceof Error ? error.message : String(error)}`)
  console.error(`(on ${[...newest].map(([name, version]) => `${name} ${version}`).join(", ")})`)
} finally {
  if (keep) log(`kept ${copy}`)
  else Fs.rmSync(copy, { recursive: true, force: true })
}
process.exitCode = failed ? 1 : 0
