/**
 * The runtime cells of the benchmark (run by bench/run.ts, or alone): for each runtime installed from npm (Node, Bun,
 * Deno), bench/runtime-ab.ts run BY that runtime measures pqcancel's one-shot cancel against the runtime's own
 * hand-written floors (its native socket API and its `node:net` / `node:tls`), TCP and TLS (verify-full), interleaved
 * against an idle backend of an embedded PostgreSQL 18 that the child starts and stops. Each child is bounded in time.
 *
 *   node bench/runtimes.ts [--n 400]
 */
import * as ChildProcess from "node:child_process"
import * as Path from "node:path"
import * as Url from "node:url"

/** One runtime × cell: median dispatch times (ms) of each system. */
export interface RuntimeCell {
  readonly runtime: "node" | "bun" | "deno"
  readonly cell: "tcp" | "vfull"
  readonly n: number
  readonly medians: { readonly pqcancel: number; readonly nodeFloor: number; readonly nativeFloor?: number }
}

const root = Path.resolve(Path.dirname(Url.fileURLToPath(import.meta.url)), "..")
const bin = (name: string) => Path.join(root, "node_modules", ".bin", name)
const script = Path.join(root, "bench", "runtime-ab.ts")

const commands = {
  node: [bin("node"), [script]],
  bun: [bin("bun"), [script]],
  deno: [bin("deno"), ["run", "-A", script]]
} as const

/** Runs every runtime's cells; a runtime that fails is reported on stderr and left out. */
export const runRuntimes = (options: { readonly n: number }): Array<RuntimeCell> => {
  const cells: Array<RuntimeCell> = []
  for (const [runtime, [command, args]] of Object.entries(commands)) {
    const child = ChildProcess.spawnSync(command, [...args, "--n", String(options.n)], {
      cwd: root,
      encoding: "utf8",
      timeout: 180_000,
      killSignal: "SIGKILL"
    })
    const lines = (child.stdout ?? "").split("\n").filter((line) => line.startsWith("{"))
    if (child.status !== 0 || lines.length === 0) {
      console.error(`runtime ${runtime} failed (${child.error?.message ?? `exit ${child.status}`}):\n${child.stderr}`)
      continue
    }
    for (const line of lines) cells.push(JSON.parse(line) as RuntimeCell)
  }
  return cells
}

const ms = (x: number | undefined) => x === undefined ? "n/a" : x.toFixed(3)
const ratio = (a: number, b: number | undefined) => b === undefined ? "n/a" : `${(a / b).toFixed(2)}×`

/** A markdown table: medians and pqcancel's ratio against each floor. */
export const renderRuntimes = (cells: ReadonlyArray<RuntimeCell>): string =>
  [
    "| runtime | cell | pqcancel | node:net/tls floor | native floor | vs node floor | vs native floor |",
    "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ...cells.map((c) =>
      `| ${c.runtime} | ${c.cell} | ${ms(c.medians.pqcancel)} | ${ms(c.medians.nodeFloor)} | ${
        ms(c.medians.nativeFloor)
      } | ${ratio(c.medians.pqcancel, c.medians.nodeFloor)} | ${ratio(c.medians.pqcancel, c.medians.nativeFloor)} |`
    )
  ].join("\n")

if (process.argv[1] !== undefined && Url.pathToFileURL(process.argv[1]).href === import.meta.url) {
  const i = process.argv.indexOf("--n")
  console.log(renderRuntimes(runRuntimes({ n: i === -1 ? 400 : Number(process.argv[i + 1]) })))
}
