/**
 * Packaging check (run by `.ci/run`): what a user installs from npm works outside this workspace.
 *
 * 1. builds @pqcancel/core and @pqcancel/node from scratch (JS + d.ts in dist/) and packs them with `pnpm pack`
 *    (which applies publishConfig: `exports` point at dist/, `workspace:^` becomes a version range);
 * 2. installs the two tarballs with npm into a temp project outside the workspace, with the lowest supported
 *    Effect and Node 22 from the npm `node` package — and no driver;
 * 3. type-checks the README's runnable examples (the blocks after `<!-- pack-check: NAME -->`) against the installed
 *    packages' d.ts and compiles them to JS;
 * 4. starts an embedded PostgreSQL 18 and runs them with Node 22 and with Node 24: first `no-driver` (and an import
 *    of `@pqcancel/node` with no driver installed), then, after `npm install pg@<lowest>`, `pg`, then again with the
 *    newest pg 8; then `postgres` with postgres.js 3.4.0 and the newest 3.x; then `sql-pg` with @effect/sql-pg.
 *
 * Exits non-zero on the first failure. `node scripts/pack-check.ts [--keep]` (`--keep` leaves the temp project).
 */
import { EmbeddedPostgres } from "@pqcancel/test-utils"
import * as Effect from "effect/Effect"
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"

/** Lowest versions the peer ranges promise, and the Node versions the engines promise. */
const NODE_22 = "22.12.0"
const EFFECT_LOWEST = "4.1.0"
const PG_LOWEST = "8.11.0"
const PG_NEWEST = "^8"
const POSTGRES_LOWEST = "3.4.0"
const POSTGRES_NEWEST = "^3"
const SQL_PG = "4.0.5"

const root = Path.resolve(import.meta.dirname, "..")
const keep = process.argv.includes("--keep")
const started = performance.now()

const log = (line: string) => console.log(`pack-check ${((performance.now() - started) / 1000).toFixed(1)}s: ${line}`)

const run = (
  command: string,
  args: ReadonlyArray<string>,
  options: { readonly cwd: string; readonly env?: NodeJS.ProcessEnv; readonly quiet?: boolean }
): string => {
  const result = ChildProcess.spawnSync(command, args, {
    cwd: options.cwd,
    env: options.env ?? process.env,
    encoding: "utf8",
    timeout: 180_000,
    maxBuffer: 64 * 1024 * 1024
  })
  const output = `${result.stdout ?? ""}${result.stderr ?? ""}`
  if (result.status !== 0) {
    throw new Error(
      `${command} ${args.join(" ")} (in ${options.cwd}) failed with ${result.status ?? result.signal}` +
        `${result.error === undefined ? "" : ` (${result.error.message})`}:\n${output}`
    )
  }
  if (options.quiet !== true && output.trim() !== "") process.stdout.write(output.replace(/^/gm, "    "))
  return output
}

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

const npmInstall = (project: string, specs: ReadonlyArray<string>) =>
  run("npm", ["install", "--no-audit", "--no-fund", "--prefer-offline", "--loglevel=error", ...specs], {
    cwd: project,
    quiet: true
  })

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

const main = Effect.gen(function*() {
  const work = Fs.mkdtempSync(Path.join(Os.tmpdir(), "pqcancel-pack-"))
  yield* Effect.addFinalizer(() =>
    Effect.sync(() => (keep ? log(`kept ${work}`) : Fs.rmSync(work, { recursive: true, force: true })))
  )
  const tarballs = buildAndPack(work)

  const project = Path.join(work, "project")
  Fs.mkdirSync(Path.join(project, "src"), { recursive: true })
  Fs.writeFileSync(
    Path.join(project, "package.json"),
    JSON.stringify({ name: "pack-check", private: true, type: "module" }, null, 2)
  )
  npmInstall(project, [...tarballs, `effect@${EFFECT_LOWEST}`, `node@${NODE_22}`, "@types/node@22"])
  const node22 = Path.join(project, "node_modules", "node", "bin", "node")
  const nodes: ReadonlyArray<readonly [string, string]> = [["Node 22", node22], ["Node 24", process.execPath]]
  for (const [label, binary] of nodes) {
    log(`${label}: ${run(binary, ["--version"], { cwd: project, quiet: true }).trim()}`)
  }
  if (Fs.existsSync(Path.join(project, "node_modules", "pg"))) throw new Error("pg was installed without asking")
  const scope = Path.join(project, "node_modules", "@effect")
  const installed = Fs.existsSync(scope) ? Fs.readdirSync(scope) : []
  if (installed.length > 0) throw new Error(`@pqcancel/node pulled in @effect/${installed.join(", @effect/")}`)

  const examples = readmeExamples()
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
  compile(project, ["no-driver", "no-driver-import"])

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
  const runExample = (name: string, expect: RegExp) => {
    for (const [label, binary] of nodes) {
      const output = run(binary, [Path.join("out", `${name}.js`)], { cwd: project, env, quiet: true })
      if (!expect.test(output)) throw new Error(`${name} on ${label}: unexpected output:\n${output}`)
      log(`${name} on ${label}: ok (${output.trim().split("\n").at(-1)?.trim()})`)
    }
  }
  runExample("no-driver-import", /imported without any driver/)
  runExample("no-driver", /cancel request dispatched/)

  for (const pg of [PG_LOWEST, PG_NEWEST]) {
    npmInstall(project, [`pg@${pg}`, "@types/pg@8"])
    const version = (JSON.parse(Fs.readFileSync(Path.join(project, "node_modules", "pg", "package.json"), "utf8")) as {
      readonly version: string
    }).version
    log(`pg ${version}`)
    compile(project, ["pg"])
    runExample("pg", /cancelled on the server: true, same session usable: true/)
  }
  for (const version of [POSTGRES_LOWEST, POSTGRES_NEWEST]) {
    npmInstall(project, [`postgres@${version}`])
    const installed = (JSON.parse(
      Fs.readFileSync(Path.join(project, "node_modules", "postgres", "package.json"), "utf8")
    ) as { readonly version: string }).version
    log(`postgres ${installed}`)
    compile(project, ["postgres"])
    runExample("postgres", /cancelled on the server: true, same session usable: true/)
  }
  npmInstall(project, [`@effect/sql-pg@${SQL_PG}`])
  log(`@effect/sql-pg ${SQL_PG}`)
  compile(project, ["sql-pg"])
  runExample("sql-pg", /cancelled on the server: true, same session usable: true/)
  log("the packed packages work on Node 22 and 24")
})

Effect.runPromise(Effect.scoped(main)).catch((error: unknown) => {
  console.error(`pack-check FAILED: ${error instanceof Error ? error.message : String(error)}`)
  process.exitCode = 1
})
