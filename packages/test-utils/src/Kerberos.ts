/**
 * A throwaway Kerberos realm and a GSSAPI-enabled PostgreSQL for GSS encryption tests.
 *
 * {@link make} starts an MIT KDC (`krb5kdc` from the Debian package `krb5-kdc`) in a fresh temp directory: its own
 * `krb5.conf` / `kdc.conf`, a KDC database (`kdb5_util create -s`), the principals `postgres/localhost` and
 * `tester` (`kadmin.local`), a keytab for the server, the KDC on a free loopback port (TCP), and a credential cache
 * holding `tester`'s ticket (`kinit -k -t`). {@link layer} adds a PostgreSQL from the distribution (the npm builds lack
 * GSSAPI) with `krb_server_keyfile` and `hostgssenc` lines in pg_hba.conf, through `EmbeddedPostgres`, and points
 * `KRB5_CONFIG` / `KRB5CCNAME` of this process at the realm while the layer lives (the GSSAPI library reads them).
 *
 * Leak-proofing as for `EmbeddedPostgres`: the KDC runs under the same watchdog process, which stops it and removes
 * the directory when the Scope closes or this process dies.
 *
 * Where the tools are missing, {@link unavailableReason} says which, so a test can skip saying why.
 *
 * @example
 * ```ts
 * import { describe, it, layer } from "@effect/vitest"
 * import * as Effect from "effect/Effect"
 * import { EmbeddedPostgres, Kerberos } from "@pqcancel/test-utils"
 *
 * const missing = Kerberos.unavailableReason()
 * if (missing !== undefined) {
 *   describe.skip(`GSS (${missing})`, () => {})
 * } else {
 *   layer(Kerberos.layer, { excludeTestServices: true })("GSS", (it) => {
 *     it.effect("has a realm", () =>
 *       Effect.gen(function*() {
 *         const realm = yield* Kerberos.Kerberos
 *         const pg = yield* EmbeddedPostgres.EmbeddedPostgres
 *         yield* Effect.log(realm.servicePrincipal, pg.port)
 *       }))
 *   })
 * }
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
import * as Os from "node:os"
import * as Path from "node:path"
import * as EmbeddedPostgres from "./EmbeddedPostgres.ts"

/**
 * The realm could not be set up (a tool failed, the KDC did not start, kinit failed); `log` holds the output.
 *
 * @category errors
 * @since 0.1.0
 */
export class KerberosFailed
  extends Schema.TaggedError<KerberosFailed>("@pqcancel/test-utils/Kerberos/KerberosFailed")("KerberosFailed", {
    message: Schema.String,
    log: Schema.String
  })
{}

/**
 * A running realm.
 *
 * @category models
 * @since 0.1.0
 */
export interface Realm {
  /** `PQCANCEL.TEST` */
  readonly realm: string
  /** the KDC's TCP port on 127.0.0.1 */
  readonly kdcPort: number
  /** path of the realm's krb5.conf (what `KRB5_CONFIG` must name) */
  readonly krb5Config: string
  /** the server's keytab (readable by the server's user) */
  readonly serverKeytab: string
  /** `postgres/localhost@PQCANCEL.TEST` */
  readonly servicePrincipal: string
  /** `tester@PQCANCEL.TEST` */
  readonly userPrincipal: string
  /** `FILE:…` credential cache holding the user's ticket-granting ticket */
  readonly ccache: string
  /** `FILE:…` credential cache that does not exist: no credential */
  readonly emptyCcache: string
  /** the KDC's log so far */
  readonly logs: Effect.Effect<string>
}

/**
 * The realm of the current test file.
 *
 * @category services
 * @since 0.1.0
 */
export class Kerberos extends Context.Service<Kerberos, Realm>()("@pqcancel/test-utils/Kerberos") {}

const REALM = "PQCANCEL.TEST"

const sbinDirs = ["/usr/sbin", "/usr/local/sbin", "/sbin", "/usr/bin", "/usr/local/bin"]

const findTool = (name: string): string | undefined => {
  for (const dir of sbinDirs) {
    const path = Path.join(dir, name)
    if (Fs.existsSync(path)) return path
  }
  return undefined
}

/**
 * The newest distribution PostgreSQL server (`/usr/lib/postgresql/<major>/bin`), which Debian builds with GSSAPI.
 *
 * @category constructors
 * @since 0.1.0
 */
export const systemPostgres = (): { readonly initdb: string; readonly postgres: string } | undefined => {
  let majors: Array<number> = []
  try {
    majors = Fs.readdirSync("/usr/lib/postgresql").map(Number).filter((n) => Number.isInteger(n))
  } catch {
    return undefined
  }
  for (const major of majors.sort((a, b) => b - a)) {
    const bin = `/usr/lib/postgresql/${major}/bin`
    const initdb = Path.join(bin, "initdb")
    const postgres = Path.join(bin, "postgres")
    if (Fs.existsSync(initdb) && Fs.existsSync(postgres)) return { initdb, postgres }
  }
  return undefined
}

/**
 * Why a realm and a GSSAPI server cannot be started here (which tool is missing and which package has it), or
 * undefined when everything is installed.
 *
 * @category constructors
 * @since 0.1.0
 */
export const unavailableReason = (): string | undefined => {
  const missing: Array<string> = []
  for (
    const [tool, pkg] of [
      ["krb5kdc", "krb5-kdc"],
      ["kdb5_util", "krb5-kdc"],
      ["kadmin.local", "krb5-admin-server"],
      ["kinit", "krb5-user"]
    ] as const
  ) {
    if (findTool(tool) === undefined) missing.push(`${tool} (${pkg})`)
  }
  if (systemPostgres() === undefined) missing.push("/usr/lib/postgresql/*/bin/postgres (postgresql)")
  return missing.length === 0 ? undefined : `not installed: ${missing.join(", ")}`
}

const run = (file: string, args: ReadonlyArray<string>, env: Record<string, string>) =>
  Effect.callback<string, KerberosFailed>((resume) => {
    const child = ChildProcess.execFile(
      file,
      [...args],
      { env, timeout: 20_000, encoding: "utf8" },
      (error, stdout, stderr) => {
        resume(
          error === null
            ? Effect.succeed(stdout)
            : Effect.fail(
              new KerberosFailed({
                message: `${Path.basename(file)} ${args.join(" ")} failed: ${error.message}`,
                log: `${stdout}${stderr}`
              })
            )
        )
      }
    )
    return Effect.sync(() => child.kill("SIGKILL"))
  })

/**
 * Starts the KDC; it is stopped (and its directory removed) when the Scope closes.
 *
 * @category constructors
 * @since 0.1.0
 */
export const make: Effect.Effect<Realm, KerberosFailed, Scope.Scope> = Effect.suspend(() => startOnce).pipe(
  // the KDC's port was free when chosen but taken before krb5kdc bound it: once more with a fresh one
  Effect.retry({ times: 2, while: (error) => /Address already in use/.test(error.log) }),
  Effect.withSpan("Kerberos.make")
)

const startOnce: Effect.Effect<Realm, KerberosFailed, Scope.Scope> = Effect.gen(function*() {
  const reason = unavailableReason()
  if (reason !== undefined) return yield* new KerberosFailed({ message: reason, log: "" })
  const tool = (name: string) => findTool(name)!
  const ioError = (error: unknown) =>
    new KerberosFailed({ message: `cannot prepare the realm directory: ${String(error)}`, log: "" })
  const root = yield* Effect.try({ try: () => Fs.mkdtempSync(Path.join(Os.tmpdir(), "pqc-krb-")), catch: ioError })
  yield* Effect.addFinalizer(() => Effect.sync(() => Fs.rmSync(root, { recursive: true, force: true })))
  const file = (name: string) => Path.join(root, name)
  const port = yield* EmbeddedPostgres.freePort(false).pipe(
    Effect.mapError((e) => new KerberosFailed({ message: e.message, log: "" }))
  )
  yield* Effect.try({
    try: () => {
      // the server (as nobody when root) reads krb5.conf and its keytab from here
      Fs.chmodSync(root, 0o755)
      Fs.writeFileSync(
        file("krb5.conf"),
        [
          "[libdefaults]",
          `  default_realm = ${REALM}`,
          "  dns_lookup_kdc = false",
          "  dns_lookup_realm = false",
          "  dns_canonicalize_hostname = false",
          "  rdns = false",
          "  udp_preference_limit = 1",
          "  kdc_timeout = 5000",
          "  max_retries = 2",
          "[realms]",
          `  ${REALM} = {`,
          `    kdc = 127.0.0.1:${port}`,
          "  }",
          "[domain_realm]",
          `  localhost = ${REALM}`,
          ""
        ].join("\n"),
        { mode: 0o644 }
      )
      Fs.writeFileSync(
        file("kdc.conf"),
        [
          "[kdcdefaults]",
          `  kdc_listen = 127.0.0.1:${port}`,
          `  kdc_tcp_listen = 127.0.0.1:${port}`,
          "[realms]",
          `  ${REALM} = {`,
          `    database_name = ${file("principal")}`,
          `    key_stash_file = ${file("stash")}`,
          `    acl_file = ${file("kadm5.acl")}`,
          "  }",
          "[logging]",
          "  kdc = STDERR",
          ""
        ].join("\n")
      )
      Fs.writeFileSync(file("kadm5.acl"), "")
    },
    catch: ioError
  })
  const env: Record<string, string> = {
    ...EmbeddedPostgres.childEnv,
    KRB5_CONFIG: file("krb5.conf"),
    KRB5_KDC_PROFILE: file("kdc.conf"),
    KRB5CCNAME: `FILE:${file("ccache")}`
  }
  const kadmin = (name: string, query: string) => ({ name, file: tool("kadmin.local"), args: ["-q", query] })
  const watchdog = yield* Effect.acquireRelease(
    EmbeddedPostgres.spawnWatchdog({
      steps: [
        {
          name: "kdb5_util",
          file: tool("kdb5_util"),
          args: ["create", "-s", "-r", REALM, "-P", "pqcancel-master-key"]
        },
        kadmin("addprinc service", "addprinc -randkey postgres/localhost"),
        kadmin("addprinc user", "addprinc -randkey tester"),
        kadmin("ktadd service", `ktadd -k ${file("server.keytab")} postgres/localhost`),
        kadmin("ktadd user", `ktadd -k ${file("client.keytab")} tester`),
        { name: "krb5kdc", file: tool("krb5kdc"), args: ["-n", "-r", REALM, "-P", file("kdc.pid")] }
      ],
      env,
      cleanup: [root],
      killAfterMs: 5_000
    }).pipe(Effect.mapError((e) => new KerberosFailed({ message: e.message, log: e.log }))),
    (w) => EmbeddedPostgres.stopWatchdog(w, root)
  )
  const logText = () => watchdog.log.join("")
  const outcome = yield* EmbeddedPostgres.waitFor(watchdog, (): string | true | undefined => {
    for (const event of watchdog.events) {
      if (event.event === "exited" && (event.code !== 0 || event.name === "krb5kdc")) {
        return `${event.name} exited with ${event.code ?? event.signal}`
      }
      if (event.event === "spawnError") return `cannot run ${event.name}: ${event.message}`
    }
    if (watchdog.exited) return "the watchdog process exited"
    return logText().includes("commencing operation") ? true : undefined
  }).pipe(
    Effect.timeoutOrElse({
      duration: Duration.seconds(30),
      orElse: () => Effect.succeed("the KDC did not start in time")
    })
  )
  if (outcome !== true) return yield* new KerberosFailed({ message: outcome, log: logText() })

  // the user's ticket, as `kinit` leaves it for libpq
  yield* run(tool("kinit"), ["-k", "-t", file("client.keytab"), "tester"], env).pipe(
    Effect.mapError((e) => new KerberosFailed({ message: e.message, log: `${e.log}${logText()}` }))
  )
  yield* Effect.try({
    try: () => {
      const keytab = file("server.keytab")
      Fs.chmodSync(keytab, 0o600)
      if (process.getuid?.() === 0) Fs.chownSync(keytab, 65534, 65534)
    },
    catch: ioError
  })

  return {
    realm: REALM,
    kdcPort: port,
    krb5Config: file("krb5.conf"),
    serverKeytab: file("server.keytab"),
    servicePrincipal: `postgres/localhost@${REALM}`,
    userPrincipal: `tester@${REALM}`,
    ccache: `FILE:${file("ccache")}`,
    emptyCcache: `FILE:${file("no-such-ccache")}`,
    logs: Effect.sync(logText)
  } satisfies Realm
})

// this process's Kerberos environment points at the realm while the layer lives (the library reads it per call)
const withEnvironment = (realm: Realm): Effect.Effect<void, never, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.sync(() => {
      const saved = { KRB5_CONFIG: process.env["KRB5_CONFIG"], KRB5CCNAME: process.env["KRB5CCNAME"] }
      process.env["KRB5_CONFIG"] = realm.krb5Config
      process.env["KRB5CCNAME"] = realm.ccache
      return saved
    }),
    (saved) =>
      Effect.sync(() => {
        for (const [key, value] of Object.entries(saved)) {
          if (value === undefined) delete process.env[key]
          else process.env[key] = value
        }
      })
  ).pipe(Effect.asVoid)

/**
 * A realm ({@link Kerberos}) and a distribution PostgreSQL built with GSSAPI (`EmbeddedPostgres`) that accepts
 * GSS-encrypted connections (`hostgssenc … trust` before the usual lines, `krb_server_keyfile`), with this
 * process's `KRB5_CONFIG` and `KRB5CCNAME` set to the realm and the user's ticket while it lives.
 *
 * @category layers
 * @since 0.1.0
 */
export const layer: Layer.Layer<
  Kerberos | EmbeddedPostgres.EmbeddedPostgres,
  KerberosFailed | EmbeddedPostgres.EmbeddedPostgresError
> = Layer.effectContext(
  Effect.gen(function*() {
    const realm = yield* make
    yield* withEnvironment(realm)
    const binaries = systemPostgres()!
    const cluster = yield* EmbeddedPostgres.make({
      binaries,
      hbaLines: ["hostgssenc all all 127.0.0.1/32 trust", "hostgssenc all all ::1/128 trust"],
      env: { KRB5_CONFIG: realm.krb5Config },
      settings: { krb_server_keyfile: realm.serverKeytab }
    })
    return Context.make(Kerberos, realm).pipe(Context.add(EmbeddedPostgres.EmbeddedPostgres, cluster))
  })
)
