/**
 * Packaging check (run by `.ci/run`): what a user installs from npm works outside this workspace, at both ends of
 * every peer range and on every supported Node major.
 *
 * 1. builds @pqcancel/core and @pqcancel/node from scratch (JS + d.ts in dist/) and packs them with `pnpm pack`
 *    (which applies publishConfig: `exports` point at dist/, `workspace:^` becomes a version range);
 * 2. installs Node 22.12.0 (the oldest the engines admit) and the newest Node 26 from the npm `node` package; Node 24
 *    is the one running this script (the workspace's);
 * 3. **oldest**: a temp project outside the workspace with the oldest supported effect, then the two tarballs with a
 *    plain `npm install` (no flags: a peer range that excludes what is installed fails here as it would for a user),
 *    and no driver: runs `no-driver` and an import of `@pqcancel/node` with no driver installed; then the oldest
 *    supported drivers (`npm install @effect/sql-pg@4.0.5 pg@8.11.0 postgres@3.4.0`), and runs `pg`, `postgres` and
 *    `sql-pg`;
 * 4. **newest**: another project, first today's releases as a new user installs them (effect, @effect/sql-pg, pg,
 *    postgres), then the tarballs beside them with a plain `npm install`, and runs all the examples;
 * 5. every example is the README's runnable one (the ```ts block after `<!-- pack-check: NAME -->`), type-checked
 *    against the installed packages' d.ts, compiled to JS and run on Node 22, 24 and 26 against an embedded
 *    PostgreSQL 18 over TLS (verify-full).
 *
 * The projects' `.npmrc` turns off npm's audit and funding messages only (no resolution setting). Exits non-zero on
 * the first failure. `node scripts/pack-check.ts [--keep]` (`--keep` leaves the temp projects). The versions below
 * are the ones docs/supported-versions.md names; `pnpm check:latest` tries whatever is newest today.
 */
import { EmbeddedPostgres } from "@pqcancel/test-utils"
import * as Effect from "effect/Effect"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import { cleanEnv, run } from "./exec.ts"

/** Node majors from the npm `node` package (24: the Node running this script). */
const NODES = { "Node 22": "22.12.0", "Node 26": "26.10.0" } as const

/** The two ends of every peer range (`NEWEST`: the newest releases when this was last updated). */
const OLDEST = { effect: "4.1.0", "@effect/sql-pg": "4.0.5", pg: "8.11.0", postgres: "3.4.0" } as const
const NEWEST = { effect: "4.1.5", "@effect/sql-pg": "4.1.5", pg: "8.23.1", postgres: "4.2.0" } as const
type Drivers = typeof OLDEST | typeof NEWEST

const root = Path.resolve(import.meta.dirname, "..")
const keep = process.argv.includes("--keep")
const started = performance.now()

const log = (line: string) => console.log(`pack-check ${((performance.now() - started) / 1000).toFixed(1)}s: ${line}`)

/** The README's runnable examples: the ```ts block after each `<!-- pack-check: NAME -->` marker. */
const readmeExamples = (): ReadonlyMap<string, string> => {
  const text = Fs.readFileSync(Path.join(root, "README.md"), "utf8")
  const examples = new Map<string, string>()
  for (const match of text.matchAll(/<!-- pack-check: ([\w-]+) -->\s*```ts\n([\s\S]*?)```/g)) {
    examples.set(match[1]!, match[2]!)
  }
  for (const name of ["no-driver", "pg", "postgres", "sql-pg"]) {
    if (!examples.has(name)) throw new Error(`README.md has no example marked <!-- pack-check: ${name} -->`)
  }
  return examples
}

// ---------------------------------------------------------------------------------------------------------------------

const buildAndPack = (into: string): ReadonlyArray<string> => {
  for (const pkg of ["core", "node"]) {
    Fs.rmSync(Path.join(root, "packages", pkg, "dist"), { recursive: true, force: true })
    Fs.rmSync(Path.join(root, "packages", pkg, "tsconfig.tsbuildinfo"), { force: true })
  }
  run(Path.join(root, "node_modules", ".bin", "tsc"), ["-b", "tsconfig.packages.json"], { cwd: root })
  return ["core", "node"].map((pkg) => {
    const output = run("pnpm", ["pack", "--pack-destination", into], {
      cwd: Path.join(root, "packages", pkg),
      quiet: true
    })
    const tarball = output.trim().split("\n").map((l) => l.trim()).find((l) => l.endsWith(".tgz"))
    if (tarball === undefined) throw new Error(`pnpm pack printed no tarball:\n${output}`)
    const path = Path.isAbsolute(tarball) ? tarball : Path.join(into, Path.basename(tarball))
    const listing = run("tar", ["-tzf", path], { cwd: into, quiet: true })
    for (const needed of ["package/dist/index.js", "package/dist/index.d.ts", "package/LICENSE", "package/README.md"]) {
      if (!listing.split("\n").includes(needed)) throw new Error(`${Path.basename(path)} lacks ${needed}`)
    }
    const manifest = JSON.parse(run("tar", ["-xzOf", path, "package/package.json"], { cwd: into, quiet: true })) as {
      readonly exports: Record<string, unknown>
      readonly dependencies?: Record<string, string>
      readonly peerDependencies?: Record<string, string>
      readonly engines?: Record<string, string>
    }
    if (manifest.exports["."] !== "./dist/index.js") throw new Error(`${path}: exports not from publishConfig`)
    if (Object.values(manifest.peerDependencies ?? {}).some((range) => range.startsWith("workspace:"))) {
      throw new Error(`${path}: a workspace: range was published`)
    }
    if (manifest.engines?.["node"] === undefined) throw new Error(`${path}: no engines.node`)
    log(`packed ${Path.basename(path)} (dependencies: ${JSON.stringify(manifest.dependencies ?? {})})`)
    return path
  })
}

const npmEnv = cleanEnv()

/** A plain `npm install` (no flags, no npm settings from pnpm's environment), as a user runs it. */
const npmInstall = (project: string, specs: ReadonlyArray<string>) =>
  run("npm", ["install", ...specs], { cwd: project, env: npmEnv })

/** A directory with a package.json (and an .npmrc that silences audit and funding only). */
const makeProject = (dir: string) => {
  Fs.mkdirSync(Path.join(dir, "src"), { recursive: true })
  Fs.writeFileSync(
    Path.join(dir, "package.json"),
    JSON.stringify({ name: Path.basename(dir), private: true, type: "module" }, null, 2)
  )
  Fs.writeFileSync(Path.join(dir, ".npmrc"), "audit=false\nfund=false\nupdate-notifier=false\n")
  return dir
}

const installedVersion = (project: string, name: string): string | undefined => {
  const manifest = Path.join(project, "node_modules", name, "package.json")
  return Fs.existsSync(manifest)
    ? (JSON.parse(Fs.readFileSync(manifest, "utf8")) as { readonly version: string }).version
    : undefined
}

/** Fails unless npm installed exactly the requested versions (not a deduplicated or hoisted other one). */
const expectInstalled = (project: string, versions: Readonly<Record<string, string>>) => {
  for (const [name, version] of Object.entries(versions)) {
    const installed = installedVersion(project, name)
    if (installed !== version) throw new Error(`${project}: ${name} ${installed ?? "missing"}, expected ${version}`)
  }
  log(`${Path.basename(project)}: ${Object.entries(versions).map(([name, v]) => `${name} ${v}`).join(", ")}`)
}

/** Type-checks the examples against the installed packages and compiles them to `out/*.js`. */
const compile = (project: string, names: ReadonlyArray<string>) => {
  Fs.writeFileSync(
    Path.join(project, "tsconfig.json"),
    JSON.stringify({
      compilerOptions: {
        target: "ES2022",
        module: "NodeNext",
        moduleResolution: "NodeNext",
        strict: true,
        exactOptionalPropertyTypes: true,
        skipLibCheck: true,
        types: ["node"],
        outDir: "out",
        rootDir: "src"
      },
      files: names.map((name) => `src/${name}.ts`)
    })
  )
  run(Path.join(root, "node_modules", ".bin", "tsc"), ["-p", "tsconfig.json"], { cwd: project })
}

const driverSpecs = (drivers: Drivers) => [
  `@effect/sql-pg@${drivers["@effect/sql-pg"]}`,
  `pg@${drivers.pg}`,
  `postgres@${drivers.postgres}`,
  "@types/pg@8"
]
const driverExamples = ["pg", "postgres", "sql-pg"] as const
const expected = /cancelled on the server: true, same session usable: true/

const main = Effect.gen(function*() {
  const work = Fs.mkdtempSync(Path.join(Os.tmpdir(), "pqcancel-pack-"))
  yield* Effect.addFinalizer(() =>
    Effect.sync(() => (keep ? log(`kept ${work}`) : Fs.rmSync(work, { recursive: true, force: true })))
  )
  const tarballs = buildAndPack(work)
  const examples = readmeExamples()

  const nodes: Array<readonly [string, string]> = [["Node 24", process.execPath]]
  for (const [label, version] of Object.entries(NODES)) {
    const dir = makeProject(Path.join(work, `node-${version}`))
    npmInstall(dir, [`node@${version}`])
    nodes.push([label, Path.join(dir, "node_modules", "node", "bin", "node")])
  }
  nodes.sort(([a], [b]) => a.localeCompare(b))
  for (const [label, binary] of nodes) {
    log(`${label}: ${run(binary, ["--version"], { cwd: work, quiet: true }).trim()}`)
  }

  const writeExamples = (project: string) => {
    for (const [name, code] of examples) Fs.writeFileSync(Path.join(project, "src", `${name}.ts`), code)
    Fs.writeFileSync(
      Path.join(project, "src", "no-driver-import.ts"),
      [
        "// importing @pqcancel/node never loads a driver; an adapter's entry point needs its driver",
        "import { NodeTransport } from \"@pqcancel/node\"",
        "if (typeof NodeTransport.layer !== \"object\") throw new Error(\"no NodeTransport.layer\")",
        "const error = await import(\"@pqcancel/node/PgAdapter\").then(() => undefined, (e: { code?: string }) => e)",
        "if (error?.code !== \"ERR_MODULE_NOT_FOUND\") throw new Error(`PgAdapter without pg: ${String(error)}`)",
        "console.log(\"@pqcancel/node imported without any driver\")",
        ""
      ].join("\n")
    )
  }

  const cluster = yield* EmbeddedPostgres.make({ version: 18 })
  const env: NodeJS.ProcessEnv = {
    PATH: process.env["PATH"],
    PGHOST: "localhost",
    PGHOSTADDR: "127.0.0.1",
    PGPORT: String(cluster.port),
    PGUSER: "postgres",
    PGDATABASE: "postgres",
    PGSSLMODE: "verify-full",
    PGSSLROOTCERT: cluster.caCertPath,
    PGCONNECT_TIMEOUT: "10",
    // node-postgres (ssl: true with PGSSLMODE=verify-full) trusts Node's CA store
    NODE_EXTRA_CA_CERTS: cluster.caCertPath,
    DATABASE_URL: `postgres://postgres@localhost:${cluster.port}/postgres?sslmode=verify-full` +
      `&sslrootcert=${encodeURIComponent(cluster.caCertPath)}`
  }
  const runExample = (project: string, name: string, expect: RegExp) => {
    for (const [label, binary] of nodes) {
      const output = run(binary, [Path.join("out", `${name}.js`)], { cwd: project, env, quiet: true })
      if (!expect.test(output)) throw new Error(`${name} on ${label}: unexpected output:\n${output}`)
      log(`${Path.basename(project)}: ${name} on ${label}: ok (${output.trim().split("\n").at(-1)?.trim()})`)
    }
  }

  // oldest: effect first, the tarballs beside it without any driver, then the oldest drivers
  const oldest = makeProject(Path.join(work, "oldest"))
  npmInstall(oldest, [`effect@${OLDEST.effect}`, "@types/node@22"])
  npmInstall(oldest, tarballs)
  expectInstalled(oldest, { effect: OLDEST.effect })
  if (Fs.existsSync(Path.join(oldest, "node_modules", "pg"))) throw new Error("pg was installed without asking")
  const scope = Path.join(oldest, "node_modules", "@effect")
  const installed = Fs.existsSync(scope) ? Fs.readdirSync(scope) : []
  if (installed.length > 0) throw new Error(`@pqcancel/node pulled in @effect/${installed.join(", @effect/")}`)
  writeExamples(oldest)
  compile(oldest, ["no-driver", "no-driver-import"])
  runExample(oldest, "no-driver-import", /imported without any driver/)
  runExample(oldest, "no-driver", /cancel request dispatched/)
  npmInstall(oldest, driverSpecs(OLDEST))
  expectInstalled(oldest, OLDEST)
  compile(oldest, driverExamples)
  for (const name of driverExamples) runExample(oldest, name, expected)

  // newest: today's releases as a new user installs them, then the tarballs beside them
  const newest = makeProject(Path.join(work, "newest"))
  npmInstall(newest, [`effect@${NEWEST.effect}`, ...driverSpecs(NEWEST), "@types/node@24"])
  npmInstall(newest, tarballs)
  expectInstalled(newest, NEWEST)
  writeExamples(newest)
  compile(newest, ["no-driver", ...driverExamples])
  for (const name of driverExamples) runExample(newest, name, expected)
  runExample(newest, "no-driver", /cancel request dispatched/)
  log(`the packed packages work on ${nodes.map(([label]) => label).join(", ")} with the oldest and newest peers`)
})

Effect.runPromise(Effect.scoped(main)).catch((error: unknown) => {
  console.error(`pack-check FAILED: ${error instanceof Error ? error.message : String(error)}`)
  process.exitCode = 1
})
