/**
 * libpq-compatible connection options: parsing of keyword/value strings and `postgresql://` URIs, `PG*`
 * environment defaults, and the validation libpq's `pqConnectOptions2` performs, producing the cancel-relevant
 * {@link ConnectionOptions}. Error messages are libpq 18's texts (without the trailing newline).
 *
 * Precedence is libpq's: a value in the string > the environment variable > the built-in default.
 * The environment is always passed explicitly (core never reads `process.env`).
 *
 * Not supported: connection service files (`service=` / `PGSERVICE` fail with an `InvalidOption`), the password file
 * and `client_encoding=auto` (not needed to send a cancel request).
 *
 * @example
 * ```ts
 * import * as Effect from "effect/Effect"
 * import { ConnectionOptions } from "@pqcancel/core"
 *
 * const program = ConnectionOptions.fromString("postgresql://db1:5433,db2/app?sslmode=require", {
 *   PGCONNECT_TIMEOUT: "5"
 * }).pipe(Effect.map((options) => options.hosts.length)) // 2
 * ```
 *
 * @module
 * @since 0.1.0
 */
import * as Config from "effect/Config"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Effect from "effect/Effect"
import * as Base64 from "effect/encoding/Base64"
import * as Redacted from "effect/Redacted"
import * as Result from "effect/Result"
import { InvalidOption } from "./CancelError.ts"
import * as internal from "./internal/conninfo.ts"
import * as checks from "./internal/optionChecks.ts"

/**
 * `sslmode` values.
 *
 * @category models
 * @since 0.1.0
 */
export type SslMode = "disable" | "allow" | "prefer" | "require" | "verify-ca" | "verify-full"
/**
 * `sslnegotiation` values.
 *
 * @category models
 * @since 0.1.0
 */
export type SslNegotiation = "postgres" | "direct"
/**
 * `gssencmode` values.
 *
 * @category models
 * @since 0.1.0
 */
export type GssEncMode = "disable" | "prefer" | "require"
/**
 * `ssl_min_protocol_version` / `ssl_max_protocol_version` values (libpq accepts them case-insensitively; they are
 * normalized to this spelling).
 *
 * @category models
 * @since 0.1.0
 */
export type TlsVersion = "TLSv1" | "TLSv1.1" | "TLSv1.2" | "TLSv1.3"

/**
 * One host entry of a (possibly multi-host) connection string.
 *
 * @category models
 * @since 0.1.0
 */
export type HostEntry =
  | {
    readonly _tag: "Tcp"
    /** the host name as written (used for SNI, verify-full and messages); undefined when only hostaddr was given */
    readonly host: string | undefined
    /** the numeric address, when hostaddr was given */
    readonly hostaddr: string | undefined
    readonly port: number
  }
  | {
    readonly _tag: "Unix"
    /** the socket directory (host starting with "/" or "@" for the abstract namespace) */
    readonly directory: string
    readonly port: number
  }

/**
 * In-memory TLS material, as drivers take it (`ssl: { ca, cert, key }` with strings or Buffers, e.g. a CA read from
 * an environment variable). Certificates and CRLs are PEM text or bytes (a DER-encoded certificate is accepted too);
 * a list holds several. The private key and its passphrase are `Redacted`.
 *
 * Each field takes precedence over its file option: `ca` over `sslrootcert` (also over `sslrootcert=system`),
 * `cert` over `sslcert`, `key` over `sslkey`, `crl` over `sslcrl` (`sslcrldir` is still read), `passphrase` over
 * `sslpassword`. A `ca` counts as a root certificate being present, as libpq treats an existing `root.crt`: with
 * sslmode `prefer` or `require` the server's chain is then verified against it (verify-ca behaviour), and
 * verify-ca / verify-full need no root certificate file. A `cert` without a `key` falls back to the `sslkey` file
 * (libpq's `certificate present, but not private key file` when it is missing); a `key` without any certificate is
 * ignored, as libpq ignores `sslkey` without `sslcert`.
 *
 * @example
 * ```ts
 * import * as Effect from "effect/Effect"
 * import * as Redacted from "effect/Redacted"
 * import { ConnectionOptions } from "@pqcancel/core"
 *
 * declare const env: { readonly PG_CA: string; readonly PG_CERT: string; readonly PG_KEY: string }
 * const program = ConnectionOptions.fromString("host=db.internal sslmode=verify-full").pipe(
 *   Effect.map((options): ConnectionOptions.ConnectionOptions => ({
 *     ...options,
 *     sslMaterial: { ca: env.PG_CA, cert: env.PG_CERT, key: Redacted.make(env.PG_KEY) }
 *   }))
 * )
 * ```
 *
 * @category models
 * @since 0.1.0
 */
export interface SslMaterial {
  /** trusted root certificate(s); replaces `sslrootcert` */
  readonly ca?: string | Uint8Array | ReadonlyArray<string | Uint8Array>
  /** the client certificate (chain); replaces `sslcert` */
  readonly cert?: string | Uint8Array | ReadonlyArray<string | Uint8Array>
  /** the client private key (PEM); replaces `sslkey` */
  readonly key?: Redacted.Redacted<string | Uint8Array>
  /** certificate revocation list(s); replaces `sslcrl` */
  readonly crl?: string | Uint8Array | ReadonlyArray<string | Uint8Array>
  /** the passphrase of an encrypted `key`; replaces `sslpassword` */
  readonly passphrase?: Redacted.Redacted<string>
  /**
   * this is all the material the session had (a driver session the cancel is derived from): a root certificate or
   * client certificate left out here is not read from libpq's default files (`~/.postgresql/root.crt`,
   * `postgresql.crt`, `postgresql.key`), which the driver never read — only from a file option given explicitly
   */
  readonly onlyGiven?: boolean | undefined
}

/**
 * The validated, cancel-relevant connection options (libpq's after `pqConnectOptions2`).
 *
 * @category models
 * @since 0.1.0
 */
export interface ConnectionOptions {
  readonly hosts: ReadonlyArray<HostEntry>
  /** seconds; undefined = no timeout (libpq: <= 0 means none, 1 is raised to 2) */
  readonly connectTimeout: number | undefined
  readonly keepalives: boolean
  readonly keepalivesIdle: number | undefined
  readonly keepalivesInterval: number | undefined
  readonly keepalivesCount: number | undefined
  /** milliseconds */
  readonly tcpUserTimeout: number | undefined
  readonly sslmode: SslMode
  readonly sslnegotiation: SslNegotiation
  readonly gssencmode: GssEncMode
  /** a file path or "system" */
  readonly sslrootcert: string | undefined
  readonly sslcert: string | undefined
  readonly sslkey: string | undefined
  readonly sslpassword: Redacted.Redacted<string> | undefined
  readonly sslcrl: string | undefined
  readonly sslcrldir: string | undefined
  readonly sslsni: boolean
  readonly sslMinProtocolVersion: TlsVersion | undefined
  readonly sslMaxProtocolVersion: TlsVersion | undefined
  readonly minProtocolVersion: "3.0" | "3.2"
  readonly maxProtocolVersion: "3.0" | "3.2"
  readonly requirepeer: string | undefined
  readonly krbsrvname: string | undefined
  /**
   * In-memory TLS material (not a libpq keyword: set it on the resolved options); each field takes precedence over
   * its file option. See {@link SslMaterial}.
   */
  readonly sslMaterial?: SslMaterial | undefined
}

/**
 * Raw option strings keyed by libpq keyword (what the parsers return and {@link resolve} consumes).
 *
 * @category models
 * @since 0.1.0
 */
export type RawOptions = Readonly<Record<string, string>>

/**
 * An environment: variable name → value (`undefined` = not set). Pass `process.env` from a Node program.
 *
 * @category models
 * @since 0.1.0
 */
export type Env = Readonly<Record<string, string | undefined>>

/**
 * Every connection keyword libpq 18 accepts, in libpq's order (`requiressl` is also accepted by the parsers, as
 * libpq's deprecated alias of `sslmode`, but is not a keyword of its own).
 *
 * @category constants
 * @since 0.1.0
 */
export const keywords: ReadonlyArray<string> = internal.KEYWORDS.map((k) => k.keyword)

/**
 * The `PG*` environment variable of each keyword that has one.
 *
 * @category constants
 * @since 0.1.0
 */
export const environmentVariables: Readonly<Record<string, string>> = Object.fromEntries(
  internal.KEYWORDS.flatMap((k) => k.envvar === undefined ? [] : [[k.keyword, k.envvar]])
)

/**
 * libpq's built-in default socket directory on Linux (`DEFAULT_PGSOCKET_DIR`), used when no host is given.
 *
 * @category constants
 * @since 0.1.0
 */
export const DEFAULT_SOCKET_DIR = "/tmp"

/**
 * libpq's default port (`DEF_PGPORT`).
 *
 * @category constants
 * @since 0.1.0
 */
export const DEFAULT_PORT = 5432

/**
 * Parses a keyword/value connection string like libpq's `conninfo_parse` (no defaults applied):
 * `keyword = value` pairs separated by whitespace, single-quoted values, `\` escapes. Errors:
 * `missing "=" after "%s" in connection info string`, `unterminated quoted string in connection info string`,
 * `invalid connection option "%s"`. `requiressl=1` is stored as `sslmode=require` (any other value as `prefer`).
 *
 * @category parsing
 * @since 0.1.0
 */
export const parseConninfo: (conninfo: string) => Result.Result<RawOptions, InvalidOption> = internal.parseConninfo

/**
 * Parses a `postgresql://` or `postgres://` URI like libpq's `conninfo_uri_parse_options` (no defaults applied):
 * `user:password@`, comma-separated `host:port` lists, `[IPv6]` literals, percent-decoding (a decoded host starting
 * with `/` is a socket directory), `/dbname`, `?keyword=value&…` (`ssl=true` ⇒ `sslmode=require`).
 *
 * @category parsing
 * @since 0.1.0
 */
export const parseUri: (uri: string) => Result.Result<RawOptions, InvalidOption> = internal.parseUri

/**
 * Parses a connection string like `PQconnectdb`: a URI when it starts with `postgresql://` or `postgres://`, a
 * keyword/value string otherwise. No defaults are applied.
 *
 * @category parsing
 * @since 0.1.0
 */
export const parse: (s: string) => Result.Result<RawOptions, InvalidOption> = internal.parse

/**
 * Whether a string would be parsed as a URI by {@link parse}.
 *
 * @category parsing
 * @since 0.1.0
 */
export const isUri = (s: string): boolean => internal.uriPrefixLength(s) !== 0

/**
 * The options supplied by `PG*` environment variables (`PGHOST`, `PGPORT`, `PGSSLMODE`, … — see
 * {@link environmentVariables}); a variable set to "" counts as set, as in libpq. The deprecated `PGREQUIRESSL`
 * (value starting with "1") yields `sslmode=require` unless `PGSSLMODE` is set.
 *
 * @category defaults
 * @since 0.1.0
 */
export const fromEnv: (env: Env) => RawOptions = internal.fromEnv

/**
 * libpq's `conninfo_add_defaults`: every keyword without a value takes its environment variable, else its built-in
 * default (port 5432, sslmode prefer, sslnegotiation postgres, gssencmode prefer, sslsni 1,
 * ssl_min_protocol_version TLSv1.2, channel_binding prefer, target_session_attrs any, load_balance_hosts disable,
 * krbsrvname postgres, sslcompression 0, gssdelegation 0). When sslmode was not given anywhere and
 * `sslrootcert=system`, sslmode defaults to verify-full.
 *
 * The gssencmode default is "prefer", libpq's default when built with GSSAPI (a build without GSSAPI defaults to
 * "disable"); "prefer" falls back when no GSS credentials are available.
 *
 * @category defaults
 * @since 0.1.0
 */
export const withDefaults = (options: Readonly<Record<string, string | undefined>>, env: Env = {}): RawOptions =>
  internal.withDefaults(options, env)

// -----------------------------------------------------------------------------
// resolve (pqConnectOptions2)
// -----------------------------------------------------------------------------

const fail = (message: string) => Result.fail(new InvalidOption({ message }))

const invalidValue = (keyword: string, value: string) => fail(`invalid ${keyword} value: "${value}"`)

/** `count_comma_separated_elems` */
const countElems = (s: string): number => s.split(",").length

const INT_RE = /^[ \t\n\v\f\r]*([+-]?[0-9]+)[ \t\n\v\f\r]*$/

/** `pqParseIntParam`: strtol semantics (leading/trailing whitespace, optional sign), must fit a C int. */
const parseIntParam = (value: string, context: string): Result.Result<number, InvalidOption> => {
  const m = INT_RE.exec(value)
  if (m !== null) {
    const n = Number(m[1])
    if (n >= -2147483648 && n <= 2147483647) return Result.succeed(n === 0 ? 0 : n)
  }
  return fail(`invalid integer value "${value}" for connection option "${context}"`)
}

const TLS_VERSIONS: ReadonlyArray<TlsVersion> = checks.TLS_VERSIONS

const check = (message: string | undefined): Result.Result<void, InvalidOption> =>
  message === undefined ? Result.succeed(undefined) : fail(message)
const TARGET_SESSION_ATTRS: ReadonlyArray<string> = [
  "any",
  "read-write",
  "read-only",
  "primary",
  "standby",
  "prefer-standby"
]

/** `pqParseProtocolVersion` */
const parseProtocolVersion = (value: string, context: string): Result.Result<"3.0" | "3.2", InvalidOption> =>
  value === "latest" || value === "3.2"
    ? Result.succeed("3.2")
    : value === "3.0"
    ? Result.succeed("3.0")
    : fail(`invalid ${context} value: "${value}"`)

const AUTH_PASSWORD = 1
const AUTH_MD5 = 2
const AUTH_GSS = 4
const AUTH_GSS_CONT = 8
const AUTH_SSPI = 16
const AUTH_ALL = 0xff

/** The `require_auth` parsing of `pqConnectOptions2` (validation only; the result is not used by a cancel). */
const checkRequireAuth = (requireAuth: string): Result.Result<void, InvalidOption> => {
  let authRequired = true
  let methods = 0
  const mechs = new Set<string>()
  let negated = false
  const parts = requireAuth.split(",")
  for (let index = 0; index < parts.length; index++) {
    const part = parts[index]!
    let method = part
    if (method.startsWith("!")) {
      if (index === 0) {
        authRequired = false
        methods = AUTH_ALL
        mechs.add("scram-sha-256")
        mechs.add("oauth")
      } else if (!negated) {
        return fail(`negative require_auth method "${method}" cannot be mixed with non-negative methods`)
      }
      negated = true
      method = method.slice(1)
    } else if (negated) {
      return fail(`require_auth method "${method}" cannot be mixed with negative methods`)
    }
    const duplicate = fail(`require_auth method "${part}" is specified more than once`)
    let bits = 0
    let mech: string | undefined
    if (method === "password") bits = AUTH_PASSWORD
    else if (method === "md5") bits = AUTH_MD5
    else if (method === "gss") bits = AUTH_GSS | AUTH_GSS_CONT
    else if (method === "sspi") bits = AUTH_SSPI | AUTH_GSS_CONT
    else if (method === "scram-sha-256" || method === "oauth") mech = method
    else if (method === "none") {
      if (negated) {
        if (authRequired) return duplicate
        authRequired = true
      } else {
        if (!authRequired) return duplicate
        authRequired = false
      }
      continue
    } else {
      return invalidValue("require_auth", method)
    }
    if (mech !== undefined) {
      if (negated) {
        if (!mechs.has(mech)) return duplicate
        mechs.delete(mech)
      } else {
        if (mechs.has(mech)) return duplicate
        mechs.add(mech)
      }
    } else if (negated) {
      if ((methods & bits) === 0) return duplicate
      methods &= ~bits
    } else {
      if ((methods & bits) === bits) return duplicate
      methods |= bits
    }
  }
  return Result.succeed(undefined)
}

/** The SCRAM key checks of `pqConnectOptions2` (base64 of a 32-byte key). */
const checkScramKey = (value: string, which: "client" | "server"): Result.Result<void, InvalidOption> => {
  const decoded = Base64.decode(value.replace(/[ \t\n\r]/g, ""))
  if (Result.isFailure(decoded)) return fail(`invalid SCRAM ${which} key`)
  if (decoded.success.length !== 32) return fail(`invalid SCRAM ${which} key length: ${decoded.success.length}`)
  return Result.succeed(undefined)
}

/** Keeps string values, rejects unknown keywords, maps the deprecated `requiressl` like `conninfo_storeval`. */
const normalize = (
  record: Readonly<Record<string, string | undefined>>,
  skipEmpty: boolean
): Result.Result<Record<string, string>, InvalidOption> => {
  const out: Record<string, string> = {}
  for (const key of Object.keys(record)) {
    const value = record[key]
    if (typeof value !== "string" || (skipEmpty && value === "")) continue
    if (key === "requiressl") out.sslmode = value[0] === "1" ? "require" : "prefer"
    else if (internal.isKeyword(key)) out[key] = value
    else return fail(`invalid connection option "${key}"`)
  }
  return Result.succeed(out)
}

const nonEmpty = (s: string | undefined): string | undefined => s === undefined || s === "" ? undefined : s

/**
 * Validates raw options like libpq's `pqConnectOptions2` (plus the integer parsing libpq does when connecting) and
 * derives the cancel-relevant {@link ConnectionOptions}. Missing keywords take their built-in defaults (not the
 * environment: apply {@link withDefaults} first for that). Checks, in libpq's order and with its messages:
 *
 * - unknown keywords: `invalid connection option "%s"`; `service` (not supported here): an `InvalidOption`
 * - host / hostaddr / port lists: `could not match %d host names to %d hostaddr values`,
 *   `could not match %d port numbers to %d hosts`
 * - `require_auth`, `channel_binding`, `sslmode`, `sslnegotiation` (and `weak sslmode "%s" may not be used with
 *   sslnegotiation=direct …`), `sslrootcert=system` (`weak sslmode "%s" may not be used with sslrootcert=system …`),
 *   `ssl_min/max_protocol_version` (`invalid SSL protocol version range`), `sslcertmode`, `gssencmode`,
 *   `target_session_attrs`, `scram_client_key`/`scram_server_key`, `load_balance_hosts`,
 *   `min/max_protocol_version` (`"min_protocol_version" is greater than "max_protocol_version"`)
 * - then, as libpq does when it connects: ports (`invalid port number: "%s"`), `connect_timeout`, `keepalives*`,
 *   `tcp_user_timeout`: `invalid integer value "%s" for connection option "%s"`
 *
 * Each bullet is a named step below (`checkService`, `resolveHostLists`, `checkAuthentication`, `resolveTls`,
 * `resolveGssencmode`, `checkTargetSessionAttrs`, `checkScramKeys`, `checkLoadBalanceHosts`,
 * `resolveProtocolVersions`, `resolveHosts`, `resolveTcpOptions`); the first failing step's message is returned.
 *
 * Options used only for authentication or after it are validated as libpq does and otherwise ignored.
 * `gssencmode=require` is kept as is (libpq built without GSSAPI would reject it; the GSS capability check is the
 * transport's job).
 *
 * @category resolving
 * @since 0.1.0
 */
export const resolve = (raw: Readonly<Record<string, string | undefined>>): Result.Result<
  ConnectionOptions,
  InvalidOption
> =>
  Result.gen(function*() {
    const get = yield* lookupWithDefaults(raw)
    yield* checkService(get)
    const hostLists = yield* resolveHostLists(get)
    yield* checkAuthentication(get)
    const tls = yield* resolveTls(get)
    const gssencmode = yield* resolveGssencmode(get)
    yield* checkTargetSessionAttrs(get)
    yield* checkScramKeys(get)
    yield* checkLoadBalanceHosts(get)
    const protocol = yield* resolveProtocolVersions(get)
    const hosts = yield* resolveHosts(hostLists)
    const tcp = yield* resolveTcpOptions(get)
    const sslpassword = get("sslpassword")
    return {
      hosts,
      ...tcp,
      ...tls,
      gssencmode,
      sslcert: nonEmpty(get("sslcert")),
      sslkey: nonEmpty(get("sslkey")),
      sslpassword: sslpassword === undefined ? undefined : Redacted.make(sslpassword, { label: "sslpassword" }),
      sslcrl: nonEmpty(get("sslcrl")),
      sslcrldir: nonEmpty(get("sslcrldir")),
      sslsni: (get("sslsni") ?? "1")[0] === "1",
      ...protocol,
      requirepeer: nonEmpty(get("requirepeer")),
      krbsrvname: get("krbsrvname")
    }
  })

// The steps of `resolve`, in the order of libpq's `pqConnectOptions2` (then the integer parsing of connectDBStart).

/** A keyword's value after `conninfo_add_defaults` (undefined = not set and no default). */
type Lookup = (keyword: string) => string | undefined

/** Step 0: known keywords only (`requiressl` mapped), then the built-in defaults (not the environment). */
const lookupWithDefaults = (raw: Readonly<Record<string, string | undefined>>): Result.Result<Lookup, InvalidOption> =>
  Result.map(normalize(raw, false), (normalized) => {
    const o = internal.withDefaults(normalized, {})
    return (keyword) => Object.hasOwn(o, keyword) ? o[keyword] : undefined
  })

/** Step 1: `service` — libpq reads the service file first; not supported here. */
const checkService = (get: Lookup): Result.Result<void, InvalidOption> => {
  const service = get("service")
  return service === undefined ? Result.succeed(undefined) : fail(
    `connection service files are not supported (service "${service}"); pass the service's options explicitly`
  )
}

/** The comma-separated host, hostaddr and port lists, matched to one entry per host (libpq's `connhost`). */
interface HostLists {
  readonly count: number
  readonly hostnames: ReadonlyArray<string>
  readonly hostaddrs: ReadonlyArray<string>
  readonly ports: ReadonlyArray<string>
}

/**
 * Step 2: the `connhost` array — as many entries as hostaddr values (else host names, else 1):
 * `could not match %d host names to %d hostaddr values`, `could not match %d port numbers to %d hosts` (one port
 * applies to every host).
 */
const resolveHostLists = (get: Lookup): Result.Result<HostLists, InvalidOption> => {
  const pghost = nonEmpty(get("host"))
  const pghostaddr = nonEmpty(get("hostaddr"))
  const count = pghostaddr !== undefined
    ? countElems(pghostaddr)
    : pghost !== undefined
    ? countElems(pghost)
    : 1
  const hostaddrs = pghostaddr !== undefined ? pghostaddr.split(",") : []
  const hostnames = pghost !== undefined ? pghost.split(",") : []
  if (pghost !== undefined && hostnames.length !== count) {
    return fail(`could not match ${hostnames.length} host names to ${count} hostaddr values`)
  }
  const pgport = nonEmpty(get("port"))
  if (pgport === undefined) return Result.succeed({ count, hostnames, hostaddrs, ports: [] })
  const list = pgport.split(",")
  if (list.length === 1) {
    return Result.succeed({ count, hostnames, hostaddrs, ports: Array.from({ length: count }, () => list[0]!) })
  }
  if (list.length !== count) return fail(`could not match ${list.length} port numbers to ${count} hosts`)
  return Result.succeed({ count, hostnames, hostaddrs, ports: list })
}

/** Step 3: `require_auth` (method lists, negation, duplicates), then `channel_binding`. */
const checkAuthentication = (get: Lookup): Result.Result<void, InvalidOption> => {
  const requireAuth = get("require_auth")
  if (requireAuth !== undefined && requireAuth !== "") {
    const r = checkRequireAuth(requireAuth)
    if (Result.isFailure(r)) return r
  }
  const channelBinding = get("channel_binding")
  if (channelBinding !== undefined && !["disable", "prefer", "require"].includes(channelBinding)) {
    return invalidValue("channel_binding", channelBinding)
  }
  return Result.succeed(undefined)
}

/** What step 4 yields for the options. */
interface TlsOptions {
  readonly sslmode: SslMode
  readonly sslnegotiation: SslNegotiation
  readonly sslrootcert: string | undefined
  readonly sslMinProtocolVersion: TlsVersion | undefined
  readonly sslMaxProtocolVersion: TlsVersion | undefined
}

/**
 * Step 4: TLS — `sslmode`, `sslnegotiation` (direct only with require / verify-*), `sslrootcert=system` (only with
 * verify-full), `ssl_min/max_protocol_version` (known names, min ≤ max), `sslcertmode`. The value and combination
 * checks are shared with {@link validate} (internal/optionChecks.ts).
 */
const resolveTls = (get: Lookup): Result.Result<TlsOptions, InvalidOption> =>
  Result.gen(function*() {
    const sslmode = (get("sslmode") ?? "prefer") as SslMode
    yield* check(checks.checkSslmode(sslmode))
    const sslnegotiation = (get("sslnegotiation") ?? "postgres") as SslNegotiation
    yield* check(checks.checkSslNegotiation(sslmode, sslnegotiation))
    const sslrootcert = get("sslrootcert")
    yield* check(checks.checkSslrootcert(sslmode, sslrootcert))
    const sslMin = nonEmpty(get("ssl_min_protocol_version"))
    const sslMax = nonEmpty(get("ssl_max_protocol_version"))
    yield* check(checks.checkSslProtocolRange(sslMin, sslMax))
    const sslMinIndex = sslMin === undefined ? -1 : checks.tlsVersionIndex(sslMin)
    const sslMaxIndex = sslMax === undefined ? -1 : checks.tlsVersionIndex(sslMax)
    const sslcertmode = get("sslcertmode")
    if (sslcertmode !== undefined && !["disable", "allow", "require"].includes(sslcertmode)) {
      return yield* invalidValue("sslcertmode", sslcertmode)
    }
    return {
      sslmode,
      sslnegotiation,
      sslrootcert: nonEmpty(sslrootcert),
      sslMinProtocolVersion: sslMinIndex < 0 ? undefined : TLS_VERSIONS[sslMinIndex],
      sslMaxProtocolVersion: sslMaxIndex < 0 ? undefined : TLS_VERSIONS[sslMaxIndex]
    }
  })

/** Step 5: `gssencmode`. */
const resolveGssencmode = (get: Lookup): Result.Result<GssEncMode, InvalidOption> => {
  const gssencmode = (get("gssencmode") ?? "prefer") as GssEncMode
  return Result.map(check(checks.checkGssencmode(gssencmode)), () => gssencmode)
}

/** Step 6: `target_session_attrs`. */
const checkTargetSessionAttrs = (get: Lookup): Result.Result<void, InvalidOption> => {
  const targetSessionAttrs = get("target_session_attrs")
  return targetSessionAttrs !== undefined && !TARGET_SESSION_ATTRS.includes(targetSessionAttrs)
    ? invalidValue("target_session_attrs", targetSessionAttrs)
    : Result.succeed(undefined)
}

/** Step 7: `scram_client_key`, then `scram_server_key` (base64 of 32 bytes). */
const checkScramKeys = (get: Lookup): Result.Result<void, InvalidOption> => {
  const scramClientKey = nonEmpty(get("scram_client_key"))
  if (scramClientKey !== undefined) {
    const r = checkScramKey(scramClientKey, "client")
    if (Result.isFailure(r)) return r
  }
  const scramServerKey = nonEmpty(get("scram_server_key"))
  return scramServerKey === undefined ? Result.succeed(undefined) : checkScramKey(scramServerKey, "server")
}

/** Step 8: `load_balance_hosts`. */
const checkLoadBalanceHosts = (get: Lookup): Result.Result<void, InvalidOption> => {
  const loadBalanceHosts = get("load_balance_hosts")
  return loadBalanceHosts !== undefined && loadBalanceHosts !== "disable" && loadBalanceHosts !== "random"
    ? invalidValue("load_balance_hosts", loadBalanceHosts)
    : Result.succeed(undefined)
}

/**
 * Step 9: `min_protocol_version`, `max_protocol_version` (3.0, 3.2 or latest; max defaults to 3.2 when min is 3.2,
 * else 3.0), min ≤ max.
 */
const resolveProtocolVersions = (get: Lookup): Result.Result<
  { readonly minProtocolVersion: "3.0" | "3.2"; readonly maxProtocolVersion: "3.0" | "3.2" },
  InvalidOption
> =>
  Result.gen(function*() {
    const minRaw = get("min_protocol_version")
    const minProtocolVersion = minRaw === undefined
      ? "3.0" as const
      : yield* parseProtocolVersion(minRaw, "min_protocol_version")
    const maxRaw = get("max_protocol_version")
    const maxProtocolVersion = maxRaw === undefined
      ? minProtocolVersion
      : yield* parseProtocolVersion(maxRaw, "max_protocol_version")
    yield* check(checks.checkProtocolRange(minProtocolVersion, maxProtocolVersion))
    return { minProtocolVersion, maxProtocolVersion }
  })

/**
 * Step 10 (connect time): one {@link HostEntry} per `connhost` entry — the port as an integer in 1..65535
 * (`invalid integer value …`, `invalid port number: "%s"`); hostaddr makes it TCP, a host starting with `/` or `@`
 * a unix socket directory, no host the default socket directory.
 */
const resolveHosts = (lists: HostLists): Result.Result<Array<HostEntry>, InvalidOption> => {
  const hosts: Array<HostEntry> = []
  for (let i = 0; i < lists.count; i++) {
    const portString = lists.ports[i]
    let port = DEFAULT_PORT
    if (portString !== undefined && portString !== "") {
      const r = parseIntParam(portString, "port")
      if (Result.isFailure(r)) return Result.fail(r.failure)
      if (r.success < 1 || r.success > 65535) return fail(`invalid port number: "${portString}"`)
      port = r.success
    }
    const hostaddr = nonEmpty(lists.hostaddrs[i])
    const host = nonEmpty(lists.hostnames[i])
    if (hostaddr !== undefined) hosts.push({ _tag: "Tcp", host, hostaddr, port })
    else if (host !== undefined) {
      hosts.push(
        host[0] === "/" || host[0] === "@"
          ? { _tag: "Unix", directory: host, port }
          : { _tag: "Tcp", host, hostaddr: undefined, port }
      )
    } else hosts.push({ _tag: "Unix", directory: DEFAULT_SOCKET_DIR, port })
  }
  return Result.succeed(hosts)
}

/** What step 11 yields for the options. */
interface TcpOptions {
  readonly connectTimeout: number | undefined
  readonly keepalives: boolean
  readonly keepalivesIdle: number | undefined
  readonly keepalivesInterval: number | undefined
  readonly keepalivesCount: number | undefined
  readonly tcpUserTimeout: number | undefined
}

/**
 * Step 11 (connect time): `connect_timeout` (≤ 0 = none, 1 is raised to 2), `keepalives`, `keepalives_idle`,
 * `keepalives_interval`, `keepalives_count`, `tcp_user_timeout` — C ints (`invalid integer value "%s" for connection
 * option "%s"`), negative durations clamped to 0.
 */
const resolveTcpOptions = (get: Lookup): Result.Result<TcpOptions, InvalidOption> =>
  Result.gen(function*() {
    const optionalInt = (keyword: string): Result.Result<number | undefined, InvalidOption> => {
      const value = get(keyword)
      return value === undefined ? Result.succeed(undefined) : parseIntParam(value, keyword)
    }
    const nonNegative = (n: number | undefined): number | undefined => n === undefined ? undefined : Math.max(0, n)
    const timeout = yield* optionalInt("connect_timeout")
    const keepalives = yield* optionalInt("keepalives")
    const keepalivesIdle = yield* optionalInt("keepalives_idle")
    const keepalivesInterval = yield* optionalInt("keepalives_interval")
    const keepalivesCount = yield* optionalInt("keepalives_count")
    const tcpUserTimeout = yield* optionalInt("tcp_user_timeout")
    return {
      connectTimeout: timeout === undefined || timeout <= 0 ? undefined : timeout === 1 ? 2 : timeout,
      keepalives: keepalives === undefined || keepalives !== 0,
      keepalivesIdle: nonNegative(keepalivesIdle),
      keepalivesInterval: nonNegative(keepalivesInterval),
      keepalivesCount: nonNegative(keepalivesCount),
      tcpUserTimeout: nonNegative(tcpUserTimeout)
    }
  })

/**
 * Validates an options object however it was built (by hand, spread from parsed options, from another library),
 * with the same checks and messages {@link resolve} applies to parsed strings: `sslmode`, `sslnegotiation` (and
 * `weak sslmode "%s" may not be used with sslnegotiation=direct …`), `sslrootcert=system`, the SSL protocol version
 * range, `gssencmode`, `min/max_protocol_version`, then ports and the integer options. `CancelConnection.make` runs
 * it, so a hand-built object cannot bypass what the parser enforces.
 *
 * @example
 * ```ts
 * import * as Result from "effect/Result"
 * import { ConnectionOptions } from "@pqcancel/core"
 *
 * declare const parsed: ConnectionOptions.ConnectionOptions
 * const handBuilt = { ...parsed, sslmode: "prefer" as const, sslnegotiation: "direct" as const }
 * const checked = ConnectionOptions.validate(handBuilt)
 * // Result.isFailure(checked): weak sslmode "prefer" may not be used with sslnegotiation=direct (…)
 * Result.isFailure(checked)
 * ```
 *
 * @category resolving
 * @since 0.1.0
 */
export const validate = (options: ConnectionOptions): Result.Result<ConnectionOptions, InvalidOption> => {
  const message = checks.checkSslmode(options.sslmode) ??
    checks.checkSslNegotiation(options.sslmode, options.sslnegotiation) ??
    checks.checkSslrootcert(options.sslmode, options.sslrootcert) ??
    checks.checkSslProtocolRange(options.sslMinProtocolVersion, options.sslMaxProtocolVersion) ??
    checks.checkGssencmode(options.gssencmode) ??
    (checks.PROTOCOL_VERSIONS.includes(options.minProtocolVersion)
      ? undefined
      : checks.invalidValue("min_protocol_version", options.minProtocolVersion)) ??
    (checks.PROTOCOL_VERSIONS.includes(options.maxProtocolVersion)
      ? undefined
      : checks.invalidValue("max_protocol_version", options.maxProtocolVersion)) ??
    checks.checkProtocolRange(options.minProtocolVersion, options.maxProtocolVersion) ??
    checkHandBuiltNumbers(options)
  return message === undefined ? Result.succeed(options) : fail(message)
}

const isInt = (n: unknown, min: number): boolean => typeof n === "number" && Number.isInteger(n) && n >= min

// what resolve guarantees by construction for the numeric fields, checked on an object built by hand
const checkHandBuiltNumbers = (options: ConnectionOptions): string | undefined => {
  for (const host of Array.isArray(options.hosts) ? options.hosts : []) {
    if (!isInt(host.port, 1) || host.port > 65535) return `invalid port number: "${String(host.port)}"`
  }
  const integers: ReadonlyArray<readonly [string, number | undefined]> = [
    ["connect_timeout", options.connectTimeout],
    ["keepalives_idle", options.keepalivesIdle],
    ["keepalives_interval", options.keepalivesInterval],
    ["keepalives_count", options.keepalivesCount],
    ["tcp_user_timeout", options.tcpUserTimeout]
  ]
  for (const [keyword, value] of integers) {
    if (value !== undefined && !isInt(value, 0)) {
      return `invalid integer value "${String(value)}" for connection option "${keyword}"`
    }
  }
  return undefined
}

/**
 * Like `PQconnectdbParams` (without `expand_dbname`): keyword → value pairs, where `undefined` and "" mean "not
 * set"; unknown keywords fail with `invalid connection option "%s"`. Then environment defaults and {@link resolve}.
 *
 * @category constructors
 * @since 0.1.0
 */
export const fromParams = (
  params: Readonly<Record<string, string | undefined>>,
  env: Env = {}
): Result.Result<ConnectionOptions, InvalidOption> => {
  const options = normalize(params, true)
  return Result.isFailure(options) ? Result.fail(options.failure) : resolve(internal.withDefaults(options.success, env))
}

/**
 * {@link parse} + {@link withDefaults} (environment, then built-in defaults) + {@link resolve}, as a `Result`.
 *
 * @category constructors
 * @since 0.1.0
 */
export const fromStringResult = (s: string, env: Env = {}): Result.Result<ConnectionOptions, InvalidOption> =>
  Result.flatMap(internal.parse(s), (raw) => resolve(internal.withDefaults(raw, env)))

/**
 * Parses a connection string (URI or keyword/value), applies the given environment's `PG*` variables and libpq's
 * built-in defaults, and validates the result like libpq. Without `env`, no environment variables are used.
 *
 * @example
 * ```ts
 * import { ConnectionOptions } from "@pqcancel/core"
 * import * as Effect from "effect/Effect"
 *
 * const program = Effect.gen(function*() {
 *   // a keyword/value string or a URI, then the given PG* variables, then libpq's defaults
 *   const options = yield* ConnectionOptions.fromString("postgresql://db.internal:5433/app?sslmode=verify-full", {
 *     PGCONNECT_TIMEOUT: "5"
 *   })
 *   return [options.sslmode, options.connectTimeout] // ["verify-full", 5]
 * })
 * ```
 *
 * @category constructors
 * @since 0.1.0
 */
export const fromString = (s: string, env: Env = {}): Effect.Effect<ConnectionOptions, InvalidOption> =>
  Effect.suspend(() => Effect.fromResult(fromStringResult(s, env)))

// -----------------------------------------------------------------------------
// Effect Config
// -----------------------------------------------------------------------------

/** `PGSSLPASSWORD`: not a libpq variable (libpq reads `sslpassword` only from the connection string). */
const SSL_PASSWORD_VARIABLE = "PGSSLPASSWORD"

/** Every variable {@link config} reads; `PGSSLPASSWORD` as a `Redacted`. */
const configVariables: Config.Config<Env> = Config.all([
  ...internal.KEYWORDS.flatMap((k) =>
    k.envvar === undefined || k.keyword === "password"
      ? []
      : [Config.map(Config.option(Config.String(k.envvar)), (value) => [k.envvar!, value] as const)]
  ),
  Config.map(Config.option(Config.String("PGREQUIRESSL")), (value) => ["PGREQUIRESSL", value] as const)
]).pipe(
  Config.map((entries): Env => {
    const env: Record<string, string> = {}
    for (const [name, value] of entries) if (value._tag === "Some") env[name] = value.value
    return env
  })
)

/**
 * The options from Effect `Config`: the `PG*` variables (`PGHOST`, `PGPORT`, `PGSSLMODE`, `PGSSLROOTCERT`,
 * `PGCONNECT_TIMEOUT`, … — see {@link environmentVariables}) read through the current `ConfigProvider` (by default
 * the process environment), applied to `conninfo` (default "") exactly as {@link fromString} applies an `env`:
 * the same parser, precedence (string > variable > built-in default) and validation, so an invalid value fails with
 * libpq's message (as a `ConfigError` whose cause is the {@link InvalidOption}).
 *
 * Secrets stay `Redacted`: `PGSSLPASSWORD` (the client key's passphrase — an addition: libpq reads `sslpassword`
 * only from the connection string) is read with `Config.Redacted` and becomes `sslpassword`; `PGPASSWORD` is not
 * read at all (a cancel never authenticates). A `sslpassword` in `conninfo` wins over `PGSSLPASSWORD`.
 *
 * One difference from `fromString(conninfo, process.env)`: a variable set to "" is unset for a `ConfigProvider`
 * (libpq counts it as set, so `PGSSLMODE=""` fails there and takes the default here).
 *
 * @example
 * ```ts
 * import * as ConfigProvider from "effect/ConfigProvider"
 * import * as Effect from "effect/Effect"
 * import { ConnectionOptions } from "@pqcancel/core"
 *
 * const program = Effect.gen(function*() {
 *   const options = yield* ConnectionOptions.config("connect_timeout=5") // PGHOST, PGSSLMODE, … from the provider
 *   return options.sslmode // "verify-full"
 * }).pipe(
 *   Effect.provideService(
 *     ConfigProvider.ConfigProvider,
 *     ConfigProvider.fromEnv({ env: { PGHOST: "db.internal", PGSSLMODE: "verify-full" } })
 *   )
 * )
 * ```
 *
 * @category constructors
 * @since 0.1.0
 */
export const config = (conninfo: string = ""): Config.Config<ConnectionOptions> =>
  Config.all([configVariables, Config.option(Config.Redacted(SSL_PASSWORD_VARIABLE))]).pipe(
    Config.mapEffect(([env, sslPassword]) => {
      const result = Result.flatMap(internal.parse(conninfo), (raw) => {
        const defaulted = internal.withDefaults(raw, env)
        return Result.map(
          resolve(defaulted),
          (options): ConnectionOptions =>
            options.sslpassword !== undefined || sslPassword._tag === "None"
              ? options
              : { ...options, sslpassword: Redacted.make(Redacted.value(sslPassword.value), { label: "sslpassword" }) }
        )
      })
      return Result.isSuccess(result)
        ? Effect.succeed(result.success)
        : Effect.fail(
          new Config.ConfigError(
            new ConfigProvider.SourceError({ message: result.failure.message, cause: result.failure })
          )
        )
    })
  )
