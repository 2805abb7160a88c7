/**
 * workerd (the npm package's binary) serving test/worker.ts, bundled by Bun, for the Workers tests. Two Workers, the
 * same code with a different platform trust (the `globalOutbound` network service their sockets go through, on
 * loopback only):
 *
 * - `public`: the platform's own trusted roots, which do not hold the test CA: the embedded PostgreSQL's certificate
 *   is a private one, as on Cloudflare;
 * - `trusting`: the test CA added to the platform's roots, standing in for a server with a publicly trusted
 *   certificate (what `sslrootcert=system` verifies against on Cloudflare).
 *
 * workerd runs under a shell that kills it when its stdin closes, so it dies with the test process too; the Scope
 * closes that stdin and waits for the exit (SIGKILL after 5 s).
 */
import { EmbeddedPostgres } from "@pqcancel/test-utils"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Os from "node:os"
import * as Path from "node:path"
import type { BenchBody, CancelBody, CancelOutcome } from "./worker.ts"

const root = Path.resolve(import.meta.dirname, "..", "..", "..")
const bin = (...path: Array<string>) => Path.join(root, "node_modules", ...path)

/** The running workerd: `cancel` posts one cancel to a Worker, `bench` a bench cell (bench/runtimes.ts). */
export class Workerd extends Context.Service<Workerd, {
  readonly cancel: (worker: "public" | "trusting", body: CancelBody) => Effect.Effect<CancelOutcome>
  readonly bench: (body: BenchBody) => Effect.Effect<{ readonly pqcancel: number; readonly nativeFloor: number }>
}>()("test/Workerd") {}

const freePort = Effect.callback<number>((resume) => {
  const server = Net.createServer()
  server.listen(0, "127.0.0.1", () => {
    const port = (server.address() as Net.AddressInfo).port
    server.close(() => resume(Effect.succeed(port)))
  })
})

const config = (ports: { readonly public: number; readonly trusting: number }) => `
using Workerd = import "/workerd/workerd.capnp";
const config :Workerd.Config = (
  services = [
    (name = "public", worker = (
      modules = [(name = "worker.js", esModule = embed "worker.js")],
      compatibilityDate = "2026-11-01",
      globalOutbound = "loopback-public")),
    (name = "trusting", worker = (
      modules = [(name = "worker.js", esModule = embed "worker.js")],
      compatibilityDate = "2026-11-01",
      globalOutbound = "loopback-trusting")),
    (name = "loopback-public", network = (allow = ["local"], tlsOptions = (trustBrowserCas = true))),
    (name = "loopback-trusting", network = (allow = ["local"],
      tlsOptions = (trustedCertificates = [embed "ca.crt"]))),
  ],
  sockets = [
    (name = "public", address = "127.0.0.1:${ports.public}", http = (), service = "public"),
    (name = "trusting", address = "127.0.0.1:${ports.trusting}", http = (), service = "trusting"),
  ],
);
`

const start = Effect.gen(function*() {
  const dir = yield* Effect.acquireRelease(
    Effect.sync(() => Fs.mkdtempSync(Path.join(Os.tmpdir(), "pqcancel-workerd-"))),
    (dir) => Effect.sync(() => Fs.rmSync(dir, { recursive: true, force: true }))
  )
  // one ES module for workerd, cloudflare:sockets left to it
  const bundle = ChildProcess.spawnSync(bin(".bin", "bun"), [
    "build",
    Path.join(import.meta.dirname, "worker.ts"),
    "--target=browser",
    "--format=esm",
    "--external",
    "cloudflare:sockets",
    "--outfile",
    Path.join(dir, "worker.js")
  ], { encoding: "utf8", timeout: 60_000 })
  if (bundle.status !== 0) return yield* Effect.die(new Error(`bun build failed: ${bundle.stderr}`))
  Fs.copyFileSync(EmbeddedPostgres.fixturePath("ca.crt"), Path.join(dir, "ca.crt"))
  const ports = { public: yield* freePort, trusting: yield* freePort }
  Fs.writeFileSync(Path.join(dir, "config.capnp"), config(ports))

  const child = yield* Effect.acquireRelease(
    Effect.sync(() =>
      ChildProcess.spawn(
        "/bin/sh",
        [
          "-c",
          "\"$0\" serve config.capnp & child=$!; trap 'kill -9 $child 2>/dev/null' EXIT; read -r _",
          bin(
            "workerd",
            "bin",
            "workerd"
          )
        ],
        { cwd: dir, stdio: ["pipe", "pipe", "pipe"] }
      )
    ),
    (child) =>
      Effect.callback<void>((resume) => {
        if (child.exitCode !== null || child.signalCode !== null) return resume(Effect.void)
        // oxlint-disable-next-line effecttsgo/global-timers -- a kill deadline inside a callback's own cleanup
        const timer = setTimeout(() => child.kill("SIGKILL"), 5000)
        child.once("exit", () => {
          clearTimeout(timer)
          resume(Effect.void)
        })
        child.stdin.end()
      })
  )
  // ready when workerd says it listens on both sockets (or fail with what it printed)
  yield* Effect.callback<void>((resume) => {
    let output = ""
    const onData = (chunk: Buffer) => {
      output += chunk.toString("utf8")
      if ((output.match(/Listening on/g) ?? []).length >= 2) resume(Effect.void)
    }
    child.stdout.on("data", onData)
    child.stderr.on("data", onData)
    child.once("exit", () => resume(Effect.die(`workerd exited:\n${output}`)))
  }).pipe(Effect.timeout("30 seconds"), Effect.orDie)

  const post = <A>(worker: "public" | "trusting", path: string, body: CancelBody, timeout: number) =>
    Effect.promise(async () => {
      const response = await fetch(`http://127.0.0.1:${ports[worker]}${path}`, {
        method: "POST",
        body: JSON.stringify(body),
        signal: AbortSignal.timeout(timeout)
      })
      const text = await response.text()
      if (!response.ok) throw new Error(`the Worker answered ${response.status}: ${text}`)
      return JSON.parse(text) as A
    })
  return Workerd.of({
    cancel: (worker, body) => post<CancelOutcome>(worker, "/", body, 30_000),
    bench: (body) => post("trusting", "/bench", body, 120_000)
  })
})

/** workerd with the two Workers, for the file's Scope. */
export const layer: Layer.Layer<Workerd> = Layer.effect(Workerd, start)
