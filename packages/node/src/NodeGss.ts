/**
 * GSSAPI encryption for cancel requests (`gssencmode=prefer|require`), as libpq does it: the system's MIT Kerberos
 * GSSAPI library (`libgssapi_krb5.so.2`, the one libpq links) called through the optional dependency
 * [koffi](https://koffi.dev), an FFI package whose binaries ship prebuilt inside npm (no compiler, no download at
 * install time). Both are loaded lazily, on the first cancel that could use GSS; without them
 * {@link NodeTransport} behaves like libpq without a credential cache: `gssencmode=prefer` falls back to TLS or
 * plaintext and `gssencmode=require` fails with `GSSAPI encryption required but no credential cache`.
 *
 * The credential is the user's, from the credential cache `KRB5CCNAME` names (or the library's default), as with
 * libpq; {@link Options} can name another cache (MIT's credential store, `gss_acquire_cred_from`). The target is
 * `<krbsrvname>@<host>` as a host-based service name, the context is requested with libpq's flags (mutual
 * authentication, replay and sequence detection, confidentiality, integrity), and every packet after the handshake
 * is wrapped with confidentiality. The context, name and credential are released when the cancel connection's socket
 * closes, which its Scope guarantees.
 *
 * @example
 * ```ts
 * import * as Effect from "effect/Effect"
 * import { CancelConnection } from "@pqcancel/core"
 * import { NodeTransport } from "@pqcancel/node"
import * as NodeGss from "@pqcancel/node/NodeGss"
 *
 * declare const session: CancelConnection.SessionInfo // e.g. options from "host=db.example.com gssencmode=require"
 *
 * const program = Effect.gen(function*() {
 *   if (!(yield* NodeGss.available())) yield* Effect.log(`no GSS: ${NodeGss.unavailableReason()}`)
 *   // NodeTransport.layer uses GSS whenever the library loads and a credential is there
 *   yield* CancelConnection.cancel(session)
 * }).pipe(Effect.provide(NodeTransport.layer))
 *
 * // a service that keeps its tickets in its own cache
 * const custom = NodeTransport.layerWith({ gss: { ccache: "FILE:/var/lib/app/krb5cc" } })
 * ```
 *
 * @module
 * @since 0.1.0
 */
import * as Effect from "effect/Effect"
import * as Gss from "./internal/gssapi.ts"

/**
 * Where the GSS provider finds the library and the credential.
 *
 * @category models
 * @since 0.1.0
 */
export interface Options {
  /**
   * GSSAPI library file(s) to try in order; default `libgssapi_krb5.so.2` then `libgssapi_krb5.so` (macOS: the
   * Homebrew/MacPorts MIT library). Must be MIT Kerberos (or API compatible, with `gss_acquire_cred_from`).
   */
  readonly library?: string | ReadonlyArray<string> | undefined
  /**
   * A credential cache to use instead of the default one (`KRB5CCNAME`), e.g. `FILE:/var/lib/app/krb5cc`. libpq has
   * no such option: it always uses the default cache.
   */
  readonly ccache?: string | undefined
}

const libraries = (options: Options | undefined): ReadonlyArray<string> | undefined =>
  options?.library === undefined ? undefined : typeof options.library === "string" ? [options.library] : options.library

/**
 * PostgreSQL's GSS framing on a socket (what NodeTransport runs after the server's 'G'), for tests.
 *
 * @internal
 */
export * as Channel from "./internal/gssChannel.ts"

/**
 * The bound GSSAPI library, for tests.
 *
 * @internal
 */
export type { GssApi } from "./internal/gssapi.ts"

/** @internal */
export const loadApi = (options: Options | undefined): Gss.GssApi | undefined => Gss.load(libraries(options))

/**
 * Whether koffi and the GSSAPI library load (once per process; later calls are free).
 *
 * @category getters
 * @since 0.1.0
 */
export const available = (options?: Options): Effect.Effect<boolean> =>
  Effect.sync(() => loadApi(options) !== undefined)

/**
 * Why GSS is unavailable with these options (koffi missing, library missing), or undefined when they load; loads
 * them if that was not tried yet.
 *
 * @category getters
 * @since 0.1.0
 */
export const unavailableReason = (options?: Options): string | undefined => Gss.loadError(libraries(options))

/**
 * libpq's `pg_GSS_have_cred_cache`: whether a credential for initiating a context can be acquired (a ticket in the
 * credential cache). False when the library is unavailable. Runs off the event loop.
 *
 * @category getters
 * @since 0.1.0
 */
export const credentialsAvailable = (options?: Options): Effect.Effect<boolean> =>
  Effect.suspend(() => {
    const api = loadApi(options)
    if (api === undefined) return Effect.succeed(false)
    return Effect.callback<boolean>((resume) => {
      acquire(api, options?.ccache, (available) => resume(Effect.succeed(available)))
    })
  })

interface CachedCheck {
  available: boolean
  at: number
  refreshing: boolean
}

const recentChecks = new Map<string, CachedCheck>()
const checksInFlight = new Map<string, Array<(available: boolean) => void>>()

// a result younger than this is used as is; older ones (up to STALE_MS) are used while a check refreshes them
const FRESH_MS = 1_000
const STALE_MS = 10_000

const acquire = (api: Gss.GssApi, ccache: string | undefined, done: (available: boolean) => void): void =>
  api.acquireCred(ccache, (cred) => {
    if (cred !== undefined) api.releaseCred(cred)
    done(cred !== undefined)
  })

/**
 * {@link credentialsAvailable} for `gssencmode=prefer`, where an answer a few seconds old is as good as a new one: a
 * credential check costs the GSSAPI library ~0.2-0.3 ms (a Kerberos context per call), which libpq pays on every
 * connection but a cancel should not. A result younger than 1 s is reused; one up to 10 s old is reused while a
 * check refreshes it in the background; older ones are checked again. Keyed by the credential cache and the Kerberos
 * environment (`KRB5CCNAME`, `KRB5_CONFIG`). `gssencmode=require` always uses the exact check.
 *
 * @internal
 */
export const credentialsAvailableRecent = (options?: Options): Effect.Effect<boolean> =>
  Effect.suspend(() => {
    const api = loadApi(options)
    if (api === undefined) return Effect.succeed(false)
    const ccache = options?.ccache
    // oxlint-disable-next-line effecttsgo/process-env -- the GSSAPI library reads these; they key its answer
    const key = `${api.library}\0${ccache ?? process.env["KRB5CCNAME"] ?? ""}\0${process.env["KRB5_CONFIG"] ?? ""}`
    const cached = recentChecks.get(key)
    const now = Date.now()
    if (cached !== undefined && now - cached.at < STALE_MS) {
      if (now - cached.at >= FRESH_MS && !cached.refreshing) {
        cached.refreshing = true
        acquire(api, ccache, (available) => {
          recentChecks.set(key, { available, at: Date.now(), refreshing: false })
        })
      }
      return Effect.succeed(cached.available)
    }
    // one library call per key at a time: a burst of cancels (cancelAll) waits for the same answer
    return Effect.callback<boolean>((resume) => {
      const waiter = (available: boolean) => resume(Effect.succeed(available))
      const waiting = checksInFlight.get(key)
      if (waiting !== undefined) {
        waiting.push(waiter)
        return
      }
      checksInFlight.set(key, [waiter])
      acquire(api, ccache, (available) => {
        recentChecks.set(key, { available, at: Date.now(), refreshing: false })
        const waiters = checksInFlight.get(key) ?? []
        checksInFlight.delete(key)
        for (const w of waiters) w(available)
      })
    })
  })
