/**
 * The system's GSSAPI library (MIT Kerberos `libgssapi_krb5.so.2`, the one libpq links) through koffi, an FFI
 * package that ships prebuilt binaries inside npm. Both are loaded lazily, on the first use: a machine without koffi
 * or without the library gets `undefined` from {@link load} and pqcancel behaves like a libpq without a credential
 * cache.
 *
 * Only what libpq's GSS encryption uses: credential acquisition (`pg_GSS_have_cred_cache`), name import
 * (`pg_GSS_load_servicename`), `gss_init_sec_context` with libpq's flags, `gss_wrap`/`gss_unwrap` with
 * confidentiality, `gss_wrap_size_limit`, `gss_display_status` for libpq's error texts, and the release calls.
 * Calls that may talk to a KDC or read a credential cache (`gss_acquire_cred*`, `gss_init_sec_context`) run on
 * koffi's worker threads so the event loop never waits on the network.
 *
 * @internal
 */
import type * as KoffiNs from "koffi"
import { createRequire } from "node:module"

/** An opaque GSSAPI handle (gss_name_t, gss_cred_id_t, gss_ctx_id_t) as koffi returns it; null is GSS_C_NO_* */
export type Handle = bigint | object | null

/** `major`/`minor` status codes of a failed call */
export interface Status {
  readonly major: number
  readonly minor: number
}

/** The result of one `gss_init_sec_context` call */
export interface InitResult extends Status {
  /** the context handle after the call (created by the first call) */
  readonly context: Handle
  /** the token to send (empty when the context is complete) */
  readonly output: Uint8Array
}

/** The loaded library */
export interface GssApi {
  /** the library file that was loaded */
  readonly library: string
  /** `gss_acquire_cred` (or `gss_acquire_cred_from` with a `ccache` credential store) for initiating */
  readonly acquireCred: (ccache: string | undefined, callback: (cred: Handle | undefined) => void) => void
  readonly releaseCred: (cred: Handle) => void
  /** `gss_import_name` as GSS_C_NT_HOSTBASED_SERVICE */
  readonly importName: (name: string) => { readonly name: Handle } | Status
  readonly releaseName: (name: Handle) => void
  readonly initSecContext: (
    cred: Handle,
    context: Handle,
    target: Handle,
    flags: number,
    input: Uint8Array | undefined,
    callback: (result: InitResult) => void
  ) => void
  readonly deleteContext: (context: Handle) => void
  /** `gss_wrap` with confidentiality requested */
  readonly wrap: (
    context: Handle,
    input: Uint8Array
  ) => { readonly output: Uint8Array; readonly confidential: boolean } | Status
  readonly unwrap: (
    context: Handle,
    input: Uint8Array
  ) => { readonly output: Uint8Array; readonly confidential: boolean } | Status
  /** `gss_wrap_size_limit` with confidentiality: the largest input whose wrapped output fits `outputSize` */
  readonly wrapSizeLimit: (context: Handle, outputSize: number) => number | Status
  /** libpq's `pg_GSS_error` text after the prefix: ` <major texts>: <minor texts>` */
  readonly describe: (status: Status) => string
}

/** GSS_ERROR(): a calling or routine error */
export const isError = (major: number): boolean => (major & 0xffff0000) !== 0

/** libpq's GSS_REQUIRED_FLAGS: mutual, replay, sequence, confidentiality, integrity */
export const REQUIRED_FLAGS = 2 | 4 | 8 | 16 | 32

/** GSS_C_DELEG_FLAG */
export const DELEG_FLAG = 1

// GSS_C_NT_HOSTBASED_SERVICE: 1.2.840.113554.1.2.1.4 (RFC 2743)
const HOSTBASED_SERVICE_OID = Buffer.from([0x2a, 0x86, 0x48, 0x86, 0xf7, 0x12, 0x01, 0x02, 0x01, 0x04])

const GSS_C_INITIATE = 1
/** GSS_S_FAILURE: "Unspecified GSS failure" */
const GSS_S_FAILURE = 0xd0000
const GSS_C_GSS_CODE = 1
const GSS_C_MECH_CODE = 2

/** the library names tried in order when none is given */
export const defaultLibraries: ReadonlyArray<string> = process.platform === "darwin"
  ? ["libgssapi_krb5.2.2.dylib", "/usr/local/opt/krb5/lib/libgssapi_krb5.dylib"]
  : ["libgssapi_krb5.so.2", "libgssapi_krb5.so"]

type Koffi = typeof KoffiNs

let koffiModule: Koffi | null | undefined

const loadKoffi = (): Koffi | undefined => {
  if (koffiModule === undefined) {
    try {
      koffiModule = createRequire(import.meta.url)("koffi") as Koffi
    } catch {
      koffiModule = null
    }
  }
  return koffiModule ?? undefined
}

const cache = new Map<string, GssApi | string>()

/**
 * Loads koffi and the GSSAPI library once per library list; undefined when either is missing.
 */
export const load = (libraries: ReadonlyArray<string> = defaultLibraries): GssApi | undefined => {
  const loaded = loadOrReason(libraries)
  return typeof loaded === "string" ? undefined : loaded
}

/** why {@link load} returns undefined for these libraries (undefined when it loads) */
export const loadError = (libraries: ReadonlyArray<string> = defaultLibraries): string | undefined => {
  const loaded = loadOrReason(libraries)
  return typeof loaded === "string" ? loaded : undefined
}

const loadOrReason = (libraries: ReadonlyArray<string>): GssApi | string => {
  const key = libraries.join("\0")
  const cached = cache.get(key)
  if (cached !== undefined) return cached
  const loaded = tryLoad(libraries)
  cache.set(key, loaded)
  return loaded
}

const tryLoad = (libraries: ReadonlyArray<string>): GssApi | string => {
  const koffi = loadKoffi()
  if (koffi === undefined) return "the optional dependency koffi is not installed"
  let lib: ReturnType<Koffi["load"]> | undefined
  let library = ""
  const errors: Array<string> = []
  for (const candidate of libraries) {
    try {
      lib = koffi.load(candidate)
      library = candidate
      break
    } catch (error) {
      errors.push(error instanceof Error ? error.message : String(error))
    }
  }
  if (lib === undefined) return `cannot load the GSSAPI library (${libraries.join(", ")}): ${errors.join("; ")}`
  try {
    return bind(koffi, lib, library)
  } catch (error) {
    return `the GSSAPI library ${library} lacks a function: ${error instanceof Error ? error.message : String(error)}`
  }
}

const bind = (koffi: Koffi, lib: ReturnType<Koffi["load"]>, library: string): GssApi => {
  // anonymous types: koffi's type registry is global and a second bind must not collide
  const Name = koffi.pointer(koffi.opaque())
  const Cred = koffi.pointer(koffi.opaque())
  const Ctx = koffi.pointer(koffi.opaque())
  const Buffer_ = koffi.struct({ length: "size_t", value: "void *" })
  const Oid = koffi.struct({ length: "uint32_t", elements: "void *" })
  const Element = koffi.struct({ key: "const char *", value: "const char *" })
  const Store = koffi.struct({
    count: "uint32_t",
    elements: koffi.pointer(Element)
  })
  const u32Out = koffi.out(koffi.pointer("uint32_t"))
  const intOut = koffi.out(koffi.pointer("int"))
  const bufferIn = koffi.pointer(Buffer_)
  const bufferOut = koffi.out(koffi.pointer(Buffer_))
  const bufferInOut = koffi.inout(koffi.pointer(Buffer_))

  const gss_acquire_cred = lib.func("gss_acquire_cred", "uint32_t", [
    u32Out,
    Name,
    "uint32_t",
    "void *",
    "int",
    koffi.out(koffi.pointer(Cred)),
    "void *",
    "void *"
  ])
  const gss_acquire_cred_from = lib.func("gss_acquire_cred_from", "uint32_t", [
    u32Out,
    Name,
    "uint32_t",
    "void *",
    "int",
    koffi.pointer(Store),
    koffi.out(koffi.pointer(Cred)),
    "void *",
    "void *"
  ])
  const gss_release_cred = lib.func("gss_release_cred", "uint32_t", [u32Out, koffi.inout(koffi.pointer(Cred))])
  const gss_import_name = lib.func("gss_import_name", "uint32_t", [
    u32Out,
    bufferIn,
    koffi.pointer(Oid),
    koffi.out(koffi.pointer(Name))
  ])
  const gss_release_name = lib.func("gss_release_name", "uint32_t", [u32Out, koffi.inout(koffi.pointer(Name))])
  const gss_init_sec_context = lib.func("gss_init_sec_context", "uint32_t", [
    u32Out,
    Cred,
    koffi.inout(koffi.pointer(Ctx)),
    Name,
    "void *",
    "uint32_t",
    "uint32_t",
    "void *",
    bufferIn,
    "void *",
    bufferOut,
    "void *",
    "void *"
  ])
  const gss_delete_sec_context = lib.func("gss_delete_sec_context", "uint32_t", [
    u32Out,
    koffi.inout(koffi.pointer(Ctx)),
    "void *"
  ])
  const gss_wrap = lib.func("gss_wrap", "uint32_t", [
    u32Out,
    Ctx,
    "int",
    "uint32_t",
    bufferIn,
    intOut,
    bufferOut
  ])
  const gss_unwrap = lib.func("gss_unwrap", "uint32_t", [u32Out, Ctx, bufferIn, bufferOut, intOut, "void *"])
  const gss_wrap_size_limit = lib.func("gss_wrap_size_limit", "uint32_t", [
    u32Out,
    Ctx,
    "int",
    "uint32_t",
    "uint32_t",
    u32Out
  ])
  const gss_release_buffer = lib.func("gss_release_buffer", "uint32_t", [u32Out, bufferInOut])
  const gss_display_status = lib.func("gss_display_status", "uint32_t", [
    u32Out,
    "uint32_t",
    "int",
    "void *",
    koffi.inout(koffi.pointer("uint32_t")),
    bufferOut
  ])

  interface BufferDesc {
    length: number | bigint
    value: unknown
  }

  // copy a GSSAPI-allocated buffer into JS memory and free it
  const take = (buffer: BufferDesc): Uint8Array => {
    const length = Number(buffer.length)
    const copy = length === 0 || buffer.value === null
      ? new Uint8Array(0)
      : new Uint8Array(koffi.view(buffer.value, length).slice(0))
    if (buffer.value !== null) gss_release_buffer([0], buffer)
    return copy
  }

  const input = (bytes: Uint8Array): BufferDesc => ({ length: bytes.length, value: bytes })

  const hostbased = { length: HOSTBASED_SERVICE_OID.length, elements: HOSTBASED_SERVICE_OID }

  const displayAll = (code: number, type: number): string => {
    let text = ""
    const context = [0]
    do {
      const out: BufferDesc = { length: 0, value: null }
      const major = gss_display_status([0], code, type, null, context, out) as number
      if (major !== 0) break
      text += ` ${Buffer.from(take(out)).toString("utf8")}`
    } while (context[0] !== 0)
    return text
  }

  return {
    library,
    acquireCred: (ccache, callback) => {
      const minor = [0]
      const cred: Array<Handle> = [null]
      const done = (error: unknown, major: number) => {
        callback(error === null && major === 0 ? cred[0] : undefined)
      }
      try {
        if (ccache === undefined) {
          gss_acquire_cred.async(minor, null, 0, null, GSS_C_INITIATE, cred, null, null, done)
        } else {
          const store = { count: 1, elements: { key: "ccache", value: ccache } }
          gss_acquire_cred_from.async(minor, null, 0, null, GSS_C_INITIATE, store, cred, null, null, done)
        }
      } catch (error) {
        // koffi's queue of asynchronous calls is full: no credential this time (always asynchronously)
        queueMicrotask(() => done(error, GSS_S_FAILURE))
      }
    },
    releaseCred: (cred) => {
      if (cred !== null && cred !== undefined) gss_release_cred([0], [cred])
    },
    importName: (name) => {
      const minor = [0]
      const out: Array<Handle> = [null]
      const major = gss_import_name(minor, input(Buffer.from(name, "utf8")), hostbased, out) as number
      return major === 0 ? { name: out[0] ?? null } : { major, minor: minor[0]! }
    },
    releaseName: (name) => {
      if (name !== null && name !== undefined) gss_release_name([0], [name])
    },
    initSecContext: (cred, context, target, flags, token, callback) => {
      const minor = [0]
      const ctx: Array<Handle> = [context]
      const out: BufferDesc = { length: 0, value: null }
      const tokenDesc = token === undefined ? { length: 0, value: null } : input(token)
      const done = (error: unknown, major: number) => {
        const output = error === null ? take(out) : new Uint8Array(0)
        callback({
          major: error === null ? major : GSS_S_FAILURE,
          minor: error === null ? minor[0]! : 0,
          context: ctx[0] ?? null,
          output
        })
      }
      try {
        gss_init_sec_context.async(
          minor,
          cred ?? null,
          ctx,
          target,
          null,
          flags,
          0,
          null,
          tokenDesc,
          null,
          out,
          null,
          null,
          done
        )
      } catch (error) {
        // koffi's queue of asynchronous calls is full: the attempt fails (always asynchronously)
        queueMicrotask(() => done(error, GSS_S_FAILURE))
      }
    },
    deleteContext: (context) => {
      if (context !== null && context !== undefined) gss_delete_sec_context([0], [context], null)
    },
    wrap: (context, bytes) => {
      const minor = [0]
      const conf = [0]
      const out: BufferDesc = { length: 0, value: null }
      const major = gss_wrap(minor, context, 1, 0, input(bytes), conf, out) as number
      if (major !== 0) {
        take(out)
        return { major, minor: minor[0]! }
      }
      return { output: take(out), confidential: conf[0] !== 0 }
    },
    unwrap: (context, bytes) => {
      const minor = [0]
      const conf = [0]
      const out: BufferDesc = { length: 0, value: null }
      const major = gss_unwrap(minor, context, input(bytes), out, conf, null) as number
      if (major !== 0) {
        take(out)
        return { major, minor: minor[0]! }
      }
      return { output: take(out), confidential: conf[0] !== 0 }
    },
    wrapSizeLimit: (context, outputSize) => {
      const minor = [0]
      const max = [0]
      const major = gss_wrap_size_limit(minor, context, 1, 0, outputSize, max) as number
      return major === 0 ? max[0]! : { major, minor: minor[0]! }
    },
    describe: (status) => `${displayAll(status.major, GSS_C_GSS_CODE)}:${displayAll(status.minor, GSS_C_MECH_CODE)}`
  }
}
