/**
 * One way for the release scripts (pack-check, check-latest) to run a command: bounded, its output captured (shown
 * indented unless `quiet`, or passed through with `inherit`), and a non-zero exit thrown with the command's output.
 */
import * as ChildProcess from "node:child_process"

export interface RunOptions {
  readonly cwd: string
  readonly env?: NodeJS.ProcessEnv
  readonly quiet?: boolean
  /** the command's output goes straight to this process's stdout/stderr (nothing is returned) */
  readonly inherit?: boolean
  /** default 180 s */
  readonly timeoutMs?: number
}

export const run = (command: string, args: ReadonlyArray<string>, options: RunOptions): string => {
  const result = ChildProcess.spawnSync(command, args, {
    cwd: options.cwd,
    env: options.env ?? process.env,
    encoding: "utf8",
    timeout: options.timeoutMs ?? 180_000,
    maxBuffer: 64 * 1024 * 1024,
    stdio: options.inherit === true ? "inherit" : "pipe"
  })
  const output = `${result.stdout ?? ""}${result.stderr ?? ""}`
  if (result.status !== 0) {
    throw new Error(
      `${command} ${args.join(" ")} (in ${options.cwd}) failed with ${result.status ?? result.signal}` +
        `${result.error === undefined ? "" : ` (${result.error.message})`}:\n${output}`
    )
  }
  if (options.quiet !== true && output.trim() !== "") {
    process.stdout.write(`${output.trimEnd().replace(/^/gm, "    ")}\n`)
  }
  return output
}

/** The environment without the `npm_*` settings pnpm passes to the scripts it runs (for a plain npm or pnpm). */
export const cleanEnv = (): NodeJS.ProcessEnv =>
  Object.fromEntries(Object.entries(process.env).filter(([key]) => !/^npm_/i.test(key)))
