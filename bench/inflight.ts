/**
 * Client memory per in-flight cancel, measured exactly: N cancels are sent to a black-hole postmaster (a separate
 * process, see blackhole.ts) that receives the CancelRequest and then never closes, so all N stay in flight. After
 * a full GC, (JS heap + external) and RSS are compared with the same figures before the cancels, divided by N.
 *
 * Systems whose cancel can be pointed at an arbitrary address: pqcancel (SessionInfo.address) and pg (the cancel
 * client's host/port, plaintext only). libpq and postgres.js cancel the address of their own session: n/a here (their
 * burst figure gives the RSS-based number).
 */
import { CancelConnection, CancelKey } from "@pqcancel/core"
import type { ConnectionOptions } from "@pqcancel/core"
import type { Transport } from "@pqcancel/core/Transport"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import type * as Scope from "effect/Scope"
import * as ChildProcess from "node:child_process"
import * as Path from "node:path"
import * as PerfHooks from "node:perf_hooks"
import * as Url from "node:url"
import type pg from "pg"
import type { SystemId } from "./cells.ts"
import type { BenchError } from "./node-systems.ts"
import { benchError, failure, pgCancel, startAndPoll } from "./node-systems.ts"
import { fullGc, jsMemory, procStatusKb } from "./stats.ts"

export interface InflightResult {
  readonly system: SystemId
  readonly transport: "tcp" | "tls"
  readonly n: number
  /** bytes of JS heap + external per in-flight cancel, after GC */
  readonly jsBytesPerCancel: number
  /** KiB of RSS per in-flight cancel, after GC */
  readonly rssKbPerCancel: number
  /** worst event-loop delay (ms, raw interval of a 1 ms timer) from firing all N until all N were held */
  readonly maxLoopDelay: number
  /** ms from firing until the black hole held all N CancelRequests */
  readonly fireToHeld: number
  readonly error: string | undefined
}

interface BlackHole {
  readonly port: number
  readonly waitHeld: (n: number) => Effect.Effect<void, BenchError>
  readonly release: Effect.Effect<void>
}

const script = Path.join(Path.dirname(Url.fileURLToPath(import.meta.url)), "blackhole.ts")

const startBlackHole = (tls: boolean): Effect.Effect<BlackHole, BenchError, Scope.Scope> =>
  Effect.gen(function*() {
    const child = yield* Effect.acquireRelease(
      Effect.sync(() =>
        ChildProcess.spawn(process.execPath, [script, ...(tls ? ["--tls"] : [])], {
          stdio: ["pipe", "pipe", "inherit"]
        })
      ),
      (child) => Effect.sync(() => child.kill("SIGKILL"))
    )
    let held = 0
    const listeners = new Set<() => void>()
    let portResolve: (port: number) => void = () => {}
    const port = new Promise<number>((resolve) => (portResolve = resolve))
    let buffer = ""
    child.stdout!.setEncoding("utf8")
    child.stdout!.on("data", (chunk: string) => {
      buffer += chunk
      for (let nl = buffer.indexOf("\n"); nl !== -1; nl = buffer.indexOf("\n")) {
        const [what, value] = buffer.slice(0, nl).split(" ")
        buffer = buffer.slice(nl + 1)
        if (what === "port") portResolve(Number(value))
        if (what === "held") held = Number(value)
        for (const listener of listeners) listener()
      }
    })
    const waitHeld = (n: number) =>
      Effect.callback<void>((resume) => {
        const check = () => {
          if (held >= n) {
            listeners.delete(check)
            resume(Effect.void)
          }
        }
        listeners.add(check)
        check()
        return Effect.sync(() => listeners.delete(check))
      }).pipe(
        Effect.timeoutOrElse({
          duration: "60 seconds",
          orElse: () => Effect.fail(failure(`black hole holds ${held} of ${n} cancels`))
        })
      )
    return {
      port: yield* Effect.promise(() => port),
      waitHeld,
      release: Effect.sync(() => child.stdin!.write("release\n"))
    }
  })

const options = (tls: boolean, port: number): ConnectionOptions.ConnectionOptions => ({
  hosts: [{ _tag: "Tcp", host: "127.0.0.1", hostaddr: undefined, port }],
  connectTimeout: undefined,
  keepalives: true,
  keepalivesIdle: undefined,
  keepalivesInterval: undefined,
  keepalivesCount: undefined,
  tcpUserTimeout: undefined,
  sslmode: tls ? "require" : "disable",
  sslnegotiation: "postgres",
  gssencmode: "prefer",
  sslrootcert: undefined,
  sslcert: undefined,
  sslkey: undefined,
  sslpassword: undefined,
  sslcrl: undefined,
  sslcrldir: undefined,
  sslsni: true,
  sslMinProtocolVersion: "TLSv1.2",
  sslMaxProtocolVersion: undefined,
  minProtocolVersion: "3.0",
  maxProtocolVersion: "3.2",
  requirepeer: undefined,
  krbsrvname: undefined
})

const measureOne = (system: SystemId, tls: boolean, n: number) =>
  Effect.scoped(Effect.gen(function*() {
    const hole = yield* startBlackHole(tls)
    const opts = options(tls, hole.port)
    // N sessions, each with its own key, as N in-flight cancels of N sessions are; made before the baseline, since
    // they are the sessions' state, not the cancels'
    const sessions: ReadonlyArray<CancelConnection.SessionInfo> = Array.from({ length: n }, (_, i) => ({
      options: opts,
      host: opts.hosts[0]!,
      address: { _tag: "Tcp", address: "127.0.0.1", port: hole.port, family: 4 },
      key: CancelKey.unsafeMake({ pid: 4242 + i, secret: new Uint8Array(32).fill(7), protocolVersion: "3.2" })
    }))
    // pg's cancel reads only activeQuery, processID and secretKey from the client it cancels
    const query = {}
    const fakeClient = { activeQuery: query, _getActiveQuery: () => query, processID: 4242, secretKey: 7 }
    const pgTarget = { host: "127.0.0.1", port: hole.port } satisfies pg.ClientConfig

    fullGc()
    const jsBefore = jsMemory()
    const rssBefore = procStatusKb("VmRSS")
    const fire: Effect.Effect<void, BenchError, Transport> = system === "pg"
      ? Effect.tryPromise({
        try: () => Promise.all(Array.from({ length: n }, () => pgCancel(fakeClient as unknown as pg.Client, pgTarget))),
        catch: benchError("pg")
      })
      : Effect.forEach(
        sessions,
        (session) =>
          system === "pqcancel-blocking"
            ? CancelConnection.cancel(session).pipe(Effect.mapError(benchError("pqcancel")))
            : startAndPoll(session),
        { concurrency: "unbounded", discard: true }
      )
    const histogram = PerfHooks.monitorEventLoopDelay({ resolution: 1 })
    histogram.enable()
    const t0 = performance.now()
    const fiber = yield* Effect.forkChild(Effect.ignore(fire))
    yield* hole.waitHeld(n)
    const fireToHeld = performance.now() - t0
    histogram.disable()
    fullGc()
    const jsDuring = jsMemory()
    const rssDuring = procStatusKb("VmRSS")
    yield* hole.release
    yield* Fiber.join(fiber).pipe(Effect.timeoutOption("30 seconds"))
    return {
      system,
      transport: tls ? "tls" as const : "tcp" as const,
      n,
      jsBytesPerCancel: (jsDuring - jsBefore) / n,
      rssKbPerCancel: (rssDuring - rssBefore) / n,
      maxLoopDelay: histogram.max / 1e6,
      fireToHeld,
      error: undefined
    }
  }))

export const runInflight = Effect.fnUntraced(function*(config: {
  readonly n: number
  readonly log: (line: string) => Effect.Effect<void>
}): Effect.fn.Return<Array<InflightResult>, never, Transport> {
  const results: Array<InflightResult> = []
  const plans: ReadonlyArray<[SystemId, boolean]> = [
    ["pqcancel-blocking", false],
    ["pqcancel-poll", false],
    ["pg", false],
    ["pqcancel-blocking", true],
    ["pqcancel-poll", true]
  ]
  for (const [system, tls] of plans) {
    const result = yield* Effect.result(measureOne(system, tls, config.n))
    if (result._tag === "Success") results.push(result.success)
    else {
      results.push({
        system,
        transport: tls ? "tls" : "tcp",
        n: config.n,
        jsBytesPerCancel: Number.NaN,
        rssKbPerCancel: Number.NaN,
        maxLoopDelay: Number.NaN,
        fireToHeld: Number.NaN,
        error: result.failure.message
      })
    }
    yield* config.log(`  in-flight ${system} ${tls ? "tls" : "tcp"} × ${config.n} done`)
  }
  return results
})
