/**
 * The runtime cells of the benchmark (run by bench/run.ts, or alone): for each runtime installed from npm (Node, Bun,
 * Deno), bench/runtime-ab.ts run BY that runtime measures pqcancel's one-shot cancel against the runtime's own
 * hand-written floors (its native socket API and its `node:net` / `node:tls`), TCP and TLS (verify-full), interleaved
 * against an idle backend of an embedded PostgreSQL 18 that the child starts and stops. Each child is bounded in time.
 * On workerd, the Workers tests' Worker (packages/cloudflare/test/worker.ts, `/bench`) times CloudflareTransport
 * against the same cancel written by hand on `cloudflare:sockets`, inside the Worker (its clock advances on I/O only,
 * which every cancel ends with).
 *
 *   node bench/runtimes.ts [--n 400]
 */
import * as EmbeddedPostgres from "@pqcancel/test-utils/EmbeddedPostgres"
import * as TestSession from "@pqcancel/test-utils/TestSession"
import * as Effect from "effect/Effect"
import * as ChildProcess from "node:child_process"
import * as Path from "node:path"
import * as Url from "node:url"
import * as Workerd from "../packages/cloudflare/test/workerd.ts"

/** One runtime × cell: median dispatch times (ms) of each system. */
export interface RuntimeCell {
  readonly runtime: "node" | "bun" | "deno" | "workerd"
  readonly cell: "tcp" | "vfull"
  readonly n: number
  readonly medians: {
    readonly pqcancel: number
    readonly nodeFloor?: number
    readonly nativeFloor?: number
    /** pqcancel on the runtime's own transport where there is one besides NodeTransport (BunTransport) */
    readonly pqcancelNative?: number
  }
}

const root = Path.resolve(Path.dirname(Url.fileURLToPath(import.meta.url)), "..")
const bin = (name: string) => Path.join(root, "node_modules", ".bin", name)
const script = Path.join(root, "bench", "runtime-ab.ts")

const commands = {
  node: [bin("node"), [script]],
  bun: [bin("bun"), [script]],
  deno: [bin("deno"), ["run", "-A", script]]
} as const

const hex = (bytes: Uint8Array) => Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")

// the workerd cells: an embedded PostgreSQL and workerd, both stopped with the Scope
const workerdCells = (n: number) =>
  Effect.gen(function*() {
    const cluster = yield* EmbeddedPostgres.make({ version: 18, settings: { log_min_messages: "log" } })
    const workerd = yield* Workerd.Workerd
    const session = yield* TestSession.connectTo(cluster, { transport: "tcp", tls: "disable", protocol: "3.2" })
    const cells: Array<RuntimeCell> = []
    for (const cell of ["tcp", "vfull"] as const) {
      const medians = yield* workerd.bench({
        conninfo: cell === "tcp"
          ? `host=127.0.0.1 port=${cluster.port} sslmode=disable`
          : `host=localhost hostaddr=127.0.0.1 port=${cluster.port} sslmode=verify-full sslrootcert=system`,
        address: session.remote,
        pid: session.backendKey.pid,
        secretHex: hex(session.backendKey.secret),
        protocolVersion: session.backendKey.protocolVersion,
        n,
        tls: cell === "vfull"
      })
      cells.push({ runtime: "workerd", cell, n, medians })
    }
    return cells
  }).pipe(Effect.provide(Workerd.layer), Effect.scoped)

/** Runs every runtime's cells; a runtime that fails is reported on stderr and left out. */
export const runRuntimes = (options: { readonly n: number }): Effect.Effect<Array<RuntimeCell>> =>
  Effect.gen(function*() {
    const cells = yield* Effect.sync(() => runChildren(options))
    const workerd = yield* workerdCells(options.n).pipe(
      Effect.timeout("3 minutes"),
      Effect.catchCause((cause) =>
        Effect.sync(() => {
          console.error(`runtime workerd failed: ${String(cause)}`)
          return []
        })
      )
    )
    return [...cells, ...workerd]
  })

const runChildren = (options: { readonly n: number }): Array<RuntimeCell> => {
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

/** A markdown table: medians and pqcancel's ratio against each floor (the native transport against the native one). */
export const renderRuntimes = (cells: ReadonlyArray<RuntimeCell>): string =>
  [
    "| runtime | cell | pqcancel | node:net/tls floor | vs node floor | pqcancel, native transport | native floor | vs native floor |",
    "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ...cells.map((c) => {
      const m = c.medians
      // on workerd the one transport is the native one
      const native = c.runtime === "workerd" ? m.pqcancel : m.pqcancelNative
      return `| ${c.runtime} | ${c.cell} | ${ms(c.runtime === "workerd" ? undefined : m.pqcancel)} | ${
        ms(m.nodeFloor)
      } | ${c.runtime === "workerd" ? "n/a" : ratio(m.pqcancel, m.nodeFloor)} | ${ms(native)} | ${
        ms(m.nativeFloor)
      } | ${native === undefined ? "n/a" : ratio(native, m.nativeFloor)} |`
    })
  ].join("\n")

if (process.argv[1] !== undefined && Url.pathToFileURL(process.argv[1]).href === import.meta.url) {
  const i = process.argv.indexOf("--n")
  const cells = await Effect.runPromise(runRuntimes({ n: i === -1 ? 400 : Number(process.argv[i + 1]) }))
  console.log(renderRuntimes(cells))
}
