/**
 * libpq's connection-string parsers (`conninfo_parse`, `conninfo_uri_parse_options`, `conninfo_uri_parse_params`,
 * `conninfo_uri_decode`, `conninfo_storeval`) and option defaults (`conninfo_add_defaults`), ported from
 * PostgreSQL 18's `fe-connect.c`.
 *
 * @internal
 */
import * as Result from "effect/Result"
import { InvalidOption } from "../CancelError.ts"
import { utf8Decode, utf8Length } from "./conninfoText.ts"

/** @internal */
export interface KeywordInfo {
  readonly keyword: string
  readonly envvar: string | undefined
  readonly compiled: string | undefined
}

const kw = (keyword: string, envvar?: string, compiled?: string): KeywordInfo => ({ keyword, envvar, compiled })

/**
 * libpq 18's `PQconninfoOptions[]`, in libpq's order (which is also the order `conninfo_add_defaults` visits them).
 * Compiled-in defaults are those of a Linux build with OpenSSL and GSSAPI.
 *
 * @internal
 */
export const KEYWORDS: ReadonlyArray<KeywordInfo> = [
  kw("service", "PGSERVICE"),
  kw("user", "PGUSER"),
  kw("password", "PGPASSWORD"),
  kw("passfile", "PGPASSFILE"),
  kw("channel_binding", "PGCHANNELBINDING", "prefer"),
  kw("connect_timeout", "PGCONNECT_TIMEOUT"),
  kw("dbname", "PGDATABASE"),
  kw("host", "PGHOST"),
  kw("hostaddr", "PGHOSTADDR"),
  kw("port", "PGPORT", "5432"),
  kw("client_encoding", "PGCLIENTENCODING"),
  kw("options", "PGOPTIONS", ""),
  kw("application_name", "PGAPPNAME"),
  kw("fallback_application_name"),
  kw("keepalives"),
  kw("keepalives_idle"),
  kw("keepalives_interval"),
  kw("keepalives_count"),
  kw("tcp_user_timeout"),
  kw("sslmode", "PGSSLMODE", "prefer"),
  kw("sslnegotiation", "PGSSLNEGOTIATION", "postgres"),
  kw("sslcompression", "PGSSLCOMPRESSION", "0"),
  kw("sslcert", "PGSSLCERT"),
  kw("sslkey", "PGSSLKEY"),
  kw("sslkeylogfile"),
  kw("sslcertmode", "PGSSLCERTMODE"),
  kw("sslpassword"),
  kw("sslrootcert", "PGSSLROOTCERT"),
  kw("sslcrl", "PGSSLCRL"),
  kw("sslcrldir", "PGSSLCRLDIR"),
  kw("sslsni", "PGSSLSNI", "1"),
  kw("requirepeer", "PGREQUIREPEER"),
  kw("require_auth", "PGREQUIREAUTH"),
  kw("min_protocol_version", "PGMINPROTOCOLVERSION"),
  kw("max_protocol_version", "PGMAXPROTOCOLVERSION"),
  kw("ssl_min_protocol_version", "PGSSLMINPROTOCOLVERSION", "TLSv1.2"),
  kw("ssl_max_protocol_version", "PGSSLMAXPROTOCOLVERSION"),
  kw("gssencmode", "PGGSSENCMODE", "prefer"),
  kw("krbsrvname", "PGKRBSRVNAME", "postgres"),
  kw("gsslib", "PGGSSLIB"),
  kw("gssdelegation", "PGGSSDELEGATION", "0"),
  kw("replication"),
  kw("target_session_attrs", "PGTARGETSESSIONATTRS", "any"),
  kw("load_balance_hosts", "PGLOADBALANCEHOSTS", "disable"),
  kw("scram_client_key"),
  kw("scram_server_key"),
  kw("oauth_issuer"),
  kw("oauth_client_id"),
  kw("oauth_client_secret"),
  kw("oauth_scope")
]

const KEYWORD_SET: ReadonlySet<string> = new Set(KEYWORDS.map((k) => k.keyword))

/** @internal */
export const isKeyword = (keyword: string): boolean => KEYWORD_SET.has(keyword)

/** @internal */
export type Options = Record<string, string>

const invalid = (message: string): InvalidOption => new InvalidOption({ message })

/** C's `isspace` in the C locale. */
const isSpace = (c: string | undefined): boolean =>
  c === " " || c === "\t" || c === "\n" || c === "\v" || c === "\f" || c === "\r"

const NUL_MESSAGE = "connection string must not contain a NUL character"

/**
 * `conninfo_uri_decode`: percent-decoding; `%00` and malformed escapes are errors (messages quote the raw input).
 * Decoded bytes are interpreted as UTF-8 (invalid sequences become U+FFFD).
 *
 * @internal
 */
export const uriDecode = (str: string): Result.Result<string, InvalidOption> => {
  let out = ""
  let bytes: Array<number> = []
  const flush = () => {
    if (bytes.length > 0) {
      out += utf8Decode(bytes)
      bytes = []
    }
  }
  let i = 0
  while (i < str.length) {
    const c = str[i]!
    if (c !== "%") {
      flush()
      out += c
      i++
      continue
    }
    const hi = hexDigit(str[i + 1])
    const lo = hi < 0 ? -1 : hexDigit(str[i + 2])
    if (hi < 0 || lo < 0) return Result.fail(invalid(`invalid percent-encoded token: "${str}"`))
    const v = (hi << 4) | lo
    if (v === 0) return Result.fail(invalid(`forbidden value %00 in percent-encoded value: "${str}"`))
    bytes.push(v)
    i += 3
  }
  flush()
  return Result.succeed(out)
}

const hexDigit = (c: string | undefined): number => {
  if (c === undefined) return -1
  const code = c.charCodeAt(0)
  if (code >= 0x30 && code <= 0x39) return code - 0x30
  if (code >= 0x41 && code <= 0x46) return code - 0x41 + 10
  if (code >= 0x61 && code <= 0x66) return code - 0x61 + 10
  return -1
}

/**
 * `conninfo_storeval`: maps the deprecated `requiressl` to `sslmode` (value starting with "1" ⇒ "require", else
 * "prefer"), rejects unknown keywords (unless `ignoreMissing`, then returns `false` with no error) and optionally
 * percent-decodes the value. Later values overwrite earlier ones.
 */
const storeval = (
  options: Options,
  keyword: string,
  value: string,
  ignoreMissing: boolean,
  decode: boolean
): Result.Result<boolean, InvalidOption> => {
  if (keyword === "requiressl") {
    keyword = "sslmode"
    value = value[0] === "1" ? "require" : "prefer"
  }
  if (!KEYWORD_SET.has(keyword)) {
    return ignoreMissing ? Result.succeed(false) : Result.fail(invalid(`invalid connection option "${keyword}"`))
  }
  if (decode) {
    const decoded = uriDecode(value)
    if (Result.isFailure(decoded)) return Result.fail(decoded.failure)
    value = decoded.success
  }
  options[keyword] = value
  return Result.succeed(true)
}

/**
 * `conninfo_parse` without defaults: `keyword = value` pairs separated by whitespace; values may be single-quoted;
 * a backslash escapes the next character (in quoted and unquoted values).
 *
 * @internal
 */
export const parseConninfo = (conninfo: string): Result.Result<Options, InvalidOption> => {
  if (conninfo.includes("\0")) return Result.fail(invalid(NUL_MESSAGE))
  const options: Options = {}
  const n = conninfo.length
  let cp = 0
  while (cp < n) {
    // Skip blanks before the parameter name
    if (isSpace(conninfo[cp])) {
      cp++
      continue
    }
    // Get the parameter name
    const nameStart = cp
    let nameEnd = -1
    while (cp < n) {
      const c = conninfo[cp]
      if (c === "=") break
      if (isSpace(c)) {
        nameEnd = cp
        cp++
        while (cp < n && isSpace(conninfo[cp])) cp++
        break
      }
      cp++
    }
    if (nameEnd < 0) nameEnd = cp
    const pname = conninfo.slice(nameStart, nameEnd)
    // Check that there is a following '='
    if (conninfo[cp] !== "=") {
      return Result.fail(invalid(`missing "=" after "${pname}" in connection info string`))
    }
    cp++
    // Skip blanks after the '='
    while (cp < n && isSpace(conninfo[cp])) cp++
    // Get the parameter value
    let pval = ""
    if (conninfo[cp] !== "'") {
      while (cp < n) {
        const c = conninfo[cp]!
        if (isSpace(c)) {
          cp++
          break
        }
        if (c === "\\") {
          cp++
          if (cp < n) pval += conninfo[cp++]
        } else {
          pval += c
          cp++
        }
      }
    } else {
      cp++
      for (;;) {
        if (cp >= n) return Result.fail(invalid("unterminated quoted string in connection info string"))
        const c = conninfo[cp]!
        if (c === "\\") {
          cp++
          if (cp < n) pval += conninfo[cp++]
          continue
        }
        if (c === "'") {
          cp++
          break
        }
        pval += c
        cp++
      }
    }
    const stored = storeval(options, pname, pval, false, false)
    if (Result.isFailure(stored)) return Result.fail(stored.failure)
  }
  return Result.succeed(options)
}

/**
 * `uri_prefix_length`: 13 for `postgresql://`, 11 for `postgres://` (case-sensitive), else 0.
 *
 * @internal
 */
export const uriPrefixLength = (s: string): number =>
  s.startsWith("postgresql://") ? 13 : s.startsWith("postgres://") ? 11 : 0

const isHostTerminator = (c: string | undefined): boolean => c === ":" || c === "/" || c === "?" || c === ","

/**
 * `conninfo_uri_parse_options` without defaults.
 *
 * @internal
 */
export const parseUri = (uri: string): Result.Result<Options, InvalidOption> => {
  if (uri.includes("\0")) return Result.fail(invalid(NUL_MESSAGE))
  const prefixLen = uriPrefixLength(uri)
  if (prefixLen === 0) {
    return Result.fail(invalid(`invalid URI propagated to internal parser routine: "${uri}"`))
  }
  const options: Options = {}
  const n = uri.length
  const store = (keyword: string, value: string): InvalidOption | undefined => {
    const r = storeval(options, keyword, value, false, true)
    return Result.isFailure(r) ? r.failure : undefined
  }
  const start = prefixLen
  let p = start

  // Look ahead for possible user credentials designator
  while (p < n && uri[p] !== "@" && uri[p] !== "/") p++
  if (uri[p] === "@") {
    let e = start
    while (uri[e] !== ":" && uri[e] !== "@") e++
    const user = uri.slice(start, e)
    if (user.length > 0) {
      const err = store("user", user)
      if (err) return Result.fail(err)
    }
    if (uri[e] === ":") {
      const pwStart = e + 1
      e = pwStart
      while (uri[e] !== "@") e++
      const password = uri.slice(pwStart, e)
      if (password.length > 0) {
        const err = store("password", password)
        if (err) return Result.fail(err)
      }
    }
    p = e + 1
  } else {
    p = start
  }

  // host[:port] list, comma separated
  let hostbuf = ""
  let portbuf = ""
  let prevchar: string | undefined
  for (;;) {
    let host: string
    if (uri[p] === "[") {
      const hostStart = ++p
      while (p < n && uri[p] !== "]") p++
      if (p >= n) {
        return Result.fail(
          invalid(`end of string reached when looking for matching "]" in IPv6 host address in URI: "${uri}"`)
        )
      }
      if (p === hostStart) return Result.fail(invalid(`IPv6 host address may not be empty in URI: "${uri}"`))
      host = uri.slice(hostStart, p)
      p++
      if (p < n && !isHostTerminator(uri[p])) {
        const ch = String.fromCodePoint(uri.codePointAt(p)!)
        const position = utf8Length(uri.slice(0, p)) + 1
        return Result.fail(
          invalid(`unexpected character "${ch}" at position ${position} in URI (expected ":" or "/"): "${uri}"`)
        )
      }
    } else {
      const hostStart = p
      while (p < n && !isHostTerminator(uri[p])) p++
      host = uri.slice(hostStart, p)
    }
    prevchar = uri[p]
    hostbuf += host
    if (prevchar === ":") {
      const portStart = ++p
      while (p < n && uri[p] !== "/" && uri[p] !== "?" && uri[p] !== ",") p++
      prevchar = uri[p]
      portbuf += uri.slice(portStart, p)
    }
    if (prevchar !== ",") break
    p++
    hostbuf += ","
    portbuf += ","
  }
  if (hostbuf.length > 0) {
    const err = store("host", hostbuf)
    if (err) return Result.fail(err)
  }
  if (portbuf.length > 0) {
    const err = store("port", portbuf)
    if (err) return Result.fail(err)
  }

  if (prevchar !== undefined && prevchar !== "?") {
    const dbStart = ++p
    while (p < n && uri[p] !== "?") p++
    prevchar = uri[p]
    const dbname = uri.slice(dbStart, p)
    // an empty dbname is not stored, so $PGDATABASE still applies
    if (dbname.length > 0) {
      const err = store("dbname", dbname)
      if (err) return Result.fail(err)
    }
  }

  if (prevchar !== undefined) {
    const err = parseUriParams(uri.slice(p + 1), options)
    if (err) return Result.fail(err)
  }
  return Result.succeed(options)
}

/** `conninfo_uri_parse_params`. */
const parseUriParams = (params: string, options: Options): InvalidOption | undefined => {
  const n = params.length
  let i = 0
  while (i < n) {
    const keywordStart = i
    let keywordEnd = -1
    let valueStart = -1
    let valueEnd = -1
    let p = i
    for (;;) {
      const c = params[p]
      if (c === "=") {
        if (valueStart >= 0) {
          return invalid(
            `extra key/value separator "=" in URI query parameter: "${params.slice(keywordStart, keywordEnd)}"`
          )
        }
        keywordEnd = p
        valueStart = ++p
      } else if (c === "&" || c === undefined) {
        valueEnd = p
        if (c === "&") p++
        if (valueStart < 0) {
          return invalid(
            `missing key/value separator "=" in URI query parameter: "${params.slice(keywordStart, valueEnd)}"`
          )
        }
        break
      } else {
        p++
      }
    }
    const keyword = uriDecode(params.slice(keywordStart, keywordEnd))
    if (Result.isFailure(keyword)) return keyword.failure
    const value = uriDecode(params.slice(valueStart, valueEnd))
    if (Result.isFailure(value)) return value.failure
    let k = keyword.success
    let v = value.success
    // JDBC compatibility
    if (k === "ssl" && v === "true") {
      k = "sslmode"
      v = "require"
    }
    const stored = storeval(options, k, v, true, false)
    if (Result.isFailure(stored)) return stored.failure
    if (!stored.success) return invalid(`invalid URI query parameter: "${k}"`)
    i = p
  }
  return undefined
}

/**
 * `parse_connection_string`: a URI when it starts with `postgresql://` or `postgres://`, else keyword/value.
 *
 * @internal
 */
export const parse = (s: string): Result.Result<Options, InvalidOption> =>
  uriPrefixLength(s) !== 0 ? parseUri(s) : parseConninfo(s)

/** @internal */
export type Env = Readonly<Record<string, string | undefined>>

const getOwn = (record: Readonly<Record<string, string | undefined>>, key: string): string | undefined =>
  Object.hasOwn(record, key) ? record[key] : undefined

/**
 * The options the `PG*` environment variables supply (only variables that are set, even to ""), plus the
 * deprecated `PGREQUIRESSL` (a value starting with "1" ⇒ sslmode=require, unless `PGSSLMODE` is set).
 *
 * @internal
 */
export const fromEnv = (env: Env): Options => {
  const out: Options = {}
  for (const { envvar, keyword } of KEYWORDS) {
    if (envvar === undefined) continue
    const value = getOwn(env, envvar)
    if (typeof value === "string") out[keyword] = value
  }
  if (out.sslmode === undefined) {
    const requiressl = getOwn(env, "PGREQUIRESSL")
    if (typeof requiressl === "string" && requiressl[0] === "1") out.sslmode = "require"
  }
  return out
}

/**
 * `conninfo_add_defaults`: for every keyword without a value, the environment variable, else the compiled-in
 * default; then, if sslmode came from the compiled-in default and `sslrootcert=system`, sslmode becomes
 * verify-full.
 *
 * @internal
 */
export const withDefaults = (options: Readonly<Record<string, string | undefined>>, env: Env): Options => {
  const envOptions = fromEnv(env)
  const out: Options = {}
  for (const key of Object.keys(options)) {
    const value = options[key]
    if (typeof value === "string") out[key] = value
  }
  let sslmodeDefaulted = false
  for (const { compiled, keyword } of KEYWORDS) {
    if (Object.hasOwn(out, keyword)) continue
    const fromEnvironment = envOptions[keyword]
    if (fromEnvironment !== undefined) {
      out[keyword] = fromEnvironment
      continue
    }
    if (keyword === "sslmode") sslmodeDefaulted = true
    if (compiled !== undefined) out[keyword] = compiled
  }
  if (sslmodeDefaulted && out.sslrootcert === "system") out.sslmode = "verify-full"
  return out
}
