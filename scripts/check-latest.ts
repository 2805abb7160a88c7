/**
 * `pnpm check:latest` (not part of CI, which stays reproducible on the lockfile): are the adapters still right on
 * today's newest effect, @effect/sql-pg, pg and postgres.js?
 *
 * 1. copies the repository's files (tracked and untracked, not ignored: your local changes included) into a temp
 *    directory;
 * 2. there, pins every workspace package.json's effect, @effect/platform-node, @effect/vitest, @effect/sql-pg, pg,
 *    @types/pg and postgres (and an `npm:postgres@…` alias of postgres.js 4; not the `@effect/sql-pg-4-0` alias of
 *    the oldest supported version) to the newest release on npm (`npm view NAME version`), and runs `pnpm install`
 *    without the lockfile;
 * 3. runs the adapter suites of @pqcancel/node there (SqlPgAdapter, PgAdapter, PgPool, PgSharedClient, PgBouncer,
 *    PostgresJs*, DriverVersions) against an embedded PostgreSQL.
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

const adapterSuites = [
  "SqlPgAdapter",
  "PgAdapter",
  "PgPool",
  "PgSharedClient",
  "PgBouncer",
  "PostgresJsAdapter",
  "PostgresJsTls",
  "PostgresJsPgBouncer",
  "DriverVersions"
].map((name) => `packages/node/test/${name}.test.ts`)

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
        const alias = /^npm:((?:@[^/]+\/)?[^@]+)@(.+)$/.exec(spec)
        if (alias !== null) {
          // an alias of the oldest supported version stays (the newest is the package itself)
          if (!moving(alias[1]!) || name === "@effect/sql-pg-4-0") continue
          deps[name] = `npm:${alias[1]}@${newestOf(alias[1]!)}`
        } else if (moving(name) && !spec.startsWith("workspace:")) {
          deps[name] = newestOf(name)
        } else continue
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
      ...(filters.length > 0 ? filters : adapterSuites)
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
