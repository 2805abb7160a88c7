/**
 * Type-checks every ```ts example in the sources' JSDoc, in README.md and in the guides (every .md under docs/): each
 * block becomes a module under build/examples/ and `tsc` checks them all against the workspace packages. Also checks
 * that every module of the published packages opens with an overview marked `@module` (the API site shows it) and
 * that the README links every guide. Run by `pnpm check`.
 */
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Path from "node:path"

const root = Path.resolve(import.meta.dirname, "..")
const out = Path.join(root, "build", "examples")
Fs.rmSync(out, { recursive: true, force: true })
Fs.mkdirSync(out, { recursive: true })

const sources: Array<string> = ["README.md"]
// upstream-sql-pg.md quotes code of @effect/sql-pg's own sources, not examples that compile on their own
const notExamples = new Set(["upstream-sql-pg.md"])
for (const file of Fs.readdirSync(Path.join(root, "docs"), { recursive: true, encoding: "utf8" }).sort()) {
  if (!file.endsWith(".md") || notExamples.has(file) || file.split(Path.sep).includes("node_modules")) continue
  sources.push(Path.join("docs", file))
}
for (const pkg of Fs.readdirSync(Path.join(root, "packages"))) {
  const src = Path.join("packages", pkg, "src")
  for (const file of Fs.readdirSync(Path.join(root, src))) if (file.endsWith(".ts")) sources.push(Path.join(src, file))
}

// every module of the published packages opens with its overview, marked `@module` so that TypeDoc shows it (and
// its example) on the module's page of the API site (test-utils is private: not on the site)
const noOverview = sources.filter((source) => {
  if (!source.endsWith(".ts") || source.endsWith("index.ts") || source.includes("test-utils")) return false
  const overview = /^\/\*\*[\s\S]*?\*\//.exec(Fs.readFileSync(Path.join(root, source), "utf8"))?.[0]
  return overview?.includes("@module") !== true
})
if (noOverview.length > 0) {
  console.error(`examples: no overview comment with @module at the top of ${noOverview.join(", ")}`)
  process.exit(1)
}

// every guide is reachable from the README (the proposal to sql-pg is reached through the sql-pg guide)
const readme = Fs.readFileSync(Path.join(root, "README.md"), "utf8")
const unlinked = sources.filter((source) =>
  source.startsWith("docs") && !source.endsWith("upstream-sql-pg.md") && !readme.includes(`](${source})`)
)
if (unlinked.length > 0) {
  console.error(`examples: README.md links no guide ${unlinked.join(", ")} (add it to its Guides list)`)
  process.exit(1)
}

let count = 0
for (const source of sources) {
  const text = Fs.readFileSync(Path.join(root, source), "utf8")
  const blocks = source.endsWith(".md")
    ? [...text.matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => m[1]!)
    : [...text.matchAll(/```ts\n([\s\S]*?)\s*\* ```/g)].map((m) => m[1]!.replace(/^\s*\* ?/gm, ""))
  blocks.forEach((block, i) => {
    const name = `${source.replace(/[/.]/g, "_")}_${i}.ts`
    Fs.writeFileSync(Path.join(out, name), `// from ${source}\n${block}\nexport {}\n`)
    count++
  })
}
Fs.writeFileSync(
  Path.join(out, "tsconfig.json"),
  JSON.stringify({
    extends: "../../tsconfig.base.json",
    // the packages' ambient declarations (e.g. @pqcancel/cloudflare's `cloudflare:sockets`)
    include: ["*.ts", "../../packages/*/src/**/*.d.ts"],
    compilerOptions: {
      rootDir: ".",
      noEmit: true,
      composite: false,
      incremental: false,
      declaration: false,
      declarationMap: false,
      noUnusedLocals: false,
      allowImportingTsExtensions: true,
      types: ["node"]
    }
  })
)
const tsc = ChildProcess.spawnSync(Path.join(root, "node_modules", ".bin", "tsc"), ["-p", out], { stdio: "inherit" })
if (tsc.status !== 0) {
  console.error(`examples: type errors in ${count} examples (build/examples)`)
  process.exit(1)
}
console.log(`examples: ${count} examples type-check`)
