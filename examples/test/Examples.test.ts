/**
 * Every program in examples/ runs to completion against one embedded PostgreSQL 18 (given to each as
 * DATABASE_URL + PGSSLROOTCERT, so they start no server of their own), exits 0 within a bound, and prints what it
 * claims. The programs check their own outcome too (each dies with a message when the query was not cancelled).
 */
import { assert, layer } from "@effect/vitest"
import { EmbeddedPostgres } from "@pqcancel/test-utils"
import * as Effect from "effect/Effect"
import * as ChildProcess from "node:child_process"
import * as Path from "node:path"

const examples: ReadonlyArray<readonly [file: string, expected: ReadonlyArray<RegExp>]> = [
  ["http-abort.ts", [/gave up after 200 ms: AbortError/, /the same pooled connection, free again/]],
  ["pg-pool-service.ts", [
    /request 1 \(500 millis\): TimeoutError/,
    /request 2 \(10 seconds\): answered/,
    /still running on the server: 0/
  ]],
  ["postgres-js-transaction-timeout.ts", [/transfer: timed out/, /balances: 1=100, 2=0/, /still running.*: 0/]],
  ["cancel-from-another-process.ts", [/"secret":"<redacted[^"]*>"/, /cancel dispatched to backend/, /SQLSTATE 57014/]],
  ["metrics.ts", [/pqcancel\.cancels \{transport=tcp sslmode=verify-full outcome=dispatched\}: count [1-3]\n/]],
  ["opentelemetry.ts", [/name: 'pqcancel\.cancel'/, /'db\.postgresql\.backend_pid': \d+/, /name: 'pqcancel\.cancels'/]]
]

interface Run {
  readonly code: number | null
  readonly signal: NodeJS.Signals | null
  readonly output: string
}

/** Runs one example with Node (this process's binary), bounded; the child is killed if the test is interrupted. */
const runExample = (file: string, env: NodeJS.ProcessEnv) =>
  Effect.callback<Run>((resume) => {
    let output = ""
    const child = ChildProcess.spawn(process.execPath, [Path.join(import.meta.dirname, "..", file)], {
      env,
      stdio: ["ignore", "pipe", "pipe"]
    })
    child.stdout.on("data", (chunk: Buffer) => (output += chunk.toString()))
    child.stderr.on("data", (chunk: Buffer) => (output += chunk.toString()))
    child.on("close", (code, signal) => resume(Effect.succeed({ code, signal, output })))
    child.on("error", (error) => resume(Effect.die(error)))
    return Effect.sync(() => child.kill("SIGKILL"))
  }).pipe(Effect.timeout("90 seconds"))

layer(EmbeddedPostgres.layer18, { excludeTestServices: true, timeout: "60 seconds" })("examples/", (it) => {
  for (const [file, expected] of examples) {
    it.effect(file, () =>
      Effect.gen(function*() {
        const cluster = yield* EmbeddedPostgres.EmbeddedPostgres
        const run = yield* runExample(file, {
          PATH: process.env["PATH"],
          DATABASE_URL: `postgres://postgres@localhost:${cluster.port}/postgres`,
          PGSSLROOTCERT: cluster.caCertPath
        })
        assert.strictEqual(run.code, 0, `${file} exited with ${run.code ?? run.signal}:\n${run.output}`)
        for (const line of expected) assert.match(run.output, line, `${file} printed:\n${run.output}`)
        assert.notMatch(run.output, /"secret":"(?!<redacted)/, "no key material in the output")
      }), { timeout: 120_000 })
  }
})
