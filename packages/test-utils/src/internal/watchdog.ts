/**
 * Watchdog process for `EmbeddedPostgres` (run as `node watchdog.ts '<json config>'`, not imported).
 *
 * It runs the configured steps in order (initdb, then the postmaster), each as a child whose stdout/stderr go to
 * the watchdog's stderr, and reports lifecycle events as JSON lines on stdout. It stops when its stdin reaches EOF
 * (the parent closed it, or the parent died — even by SIGKILL) or on SIGINT/SIGTERM/SIGHUP: the running step gets
 * SIGINT (postgres: fast shutdown), then SIGKILL after `killAfterMs`; when it has exited the `cleanup` paths are
 * removed and the watchdog exits. So no postgres process and no temp directory outlive the test process.
 *
 * Plain Node (no Effect, erasable TypeScript only) so that it starts fast and can run with type stripping.
 *
 * @since 0.1.0
 */
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"

/**
 * @since 0.1.0
 * @category models
 */
export interface WatchdogStep {
  readonly name: string
  readonly file: string
  readonly args: ReadonlyArray<string>
}

/**
 * @since 0.1.0
 * @category models
 */
export interface WatchdogConfig {
  readonly steps: ReadonlyArray<WatchdogStep>
  readonly uid?: number | undefined
  readonly gid?: number | undefined
  readonly env: Record<string, string>
  readonly cleanup: ReadonlyArray<string>
  readonly killAfterMs: number
}

/**
 * Events written as JSON lines on stdout.
 *
 * @since 0.1.0
 * @category models
 */
export type WatchdogEvent =
  | { readonly event: "spawned"; readonly name: string; readonly pid: number }
  | { readonly event: "exited"; readonly name: string; readonly code: number | null; readonly signal: string | null }
  | { readonly event: "spawnError"; readonly name: string; readonly message: string }
  | { readonly event: "cleaned" }

const main = (): void => {
  const config = JSON.parse(process.argv[2] ?? "{}") as WatchdogConfig
  let current: { readonly name: string; readonly child: ChildProcess.ChildProcess } | undefined = undefined
  let stopping = false
  let killTimer: ReturnType<typeof setTimeout> | undefined = undefined

  const emit = (event: WatchdogEvent): void => {
    try {
      process.stdout.write(`${JSON.stringify(event)}\n`)
    } catch {
      // parent gone
    }
  }
  process.stdout.on("error", () => {})
  process.stderr.on("error", () => {})

  const finish = (): void => {
    if (killTimer !== undefined) clearTimeout(killTimer)
    for (const path of config.cleanup) {
      try {
        Fs.rmSync(path, { recursive: true, force: true, maxRetries: 3 })
      } catch {
        // best effort
      }
    }
    emit({ event: "cleaned" })
    process.exit(0)
  }

  const stop = (): void => {
    if (stopping) return
    stopping = true
    const running = current
    if (running === undefined) {
      finish()
      return
    }
    running.child.kill("SIGINT")
    // oxlint-disable-next-line effecttsgo/global-timers -- plain Node script, no Effect runtime here
    killTimer = setTimeout(() => running.child.kill("SIGKILL"), config.killAfterMs)
  }

  const run = (index: number): void => {
    const step = config.steps[index]
    if (step === undefined || stopping) return
    const options: ChildProcess.SpawnOptions = {
      stdio: ["ignore", 2, 2],
      env: config.env,
      cwd: "/"
    }
    if (config.uid !== undefined) options.uid = config.uid
    if (config.gid !== undefined) options.gid = config.gid
    const child = ChildProcess.spawn(step.file, [...step.args], options)
    current = { name: step.name, child }
    child.once("error", (error) => {
      emit({ event: "spawnError", name: step.name, message: error.message })
    })
    if (child.pid !== undefined) emit({ event: "spawned", name: step.name, pid: child.pid })
    child.once("close", (code, signal) => {
      current = undefined
      emit({ event: "exited", name: step.name, code, signal })
      if (stopping) finish()
      else if (code === 0 && index + 1 < config.steps.length) run(index + 1)
    })
  }

  process.stdin.on("end", stop)
  process.stdin.on("close", stop)
  process.stdin.on("error", stop)
  process.stdin.resume()
  process.on("SIGINT", stop)
  process.on("SIGTERM", stop)
  process.on("SIGHUP", stop)
  run(0)
}

main()
