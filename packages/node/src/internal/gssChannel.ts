/**
 * PostgreSQL's GSSAPI encryption on one socket, as libpq's `pqsecure_open_gss` / `pg_GSS_write` / `pg_GSS_read` do
 * it: after the server's 'G', context tokens go both ways each prefixed by a 4-byte big-endian length (at most 64 kB
 * during the handshake); once the context is complete every packet is a 4-byte length + `gss_wrap` output with
 * confidentiality (at most 16 kB including the length word). Outcomes are reported as transport events.
 *
 * Nothing is written in plaintext after `start`: until the context is established `write` drops its bytes (the
 * machine never writes before `GssEstablished`), and a wrap failure is an I/O error, never a fallback.
 *
 * @internal
 */
import type * as TransportNs from "@pqcancel/core/Transport"
import type * as Net from "node:net"
import * as Gss from "./gssapi.ts"

/** PQ_GSS_MAX_PACKET_SIZE: part of the protocol, includes the length word */
export const MAX_PACKET_SIZE = 16384
/** PQ_GSS_AUTH_BUFFER_SIZE (PG 18): handshake tokens, includes the length word */
export const AUTH_BUFFER_SIZE = 65536

/** libpq's text when the server hangs up (pqReadData) */
const SERVER_CLOSED = "server closed the connection unexpectedly\n" +
  "\tThis probably means the server terminated abnormally\n" +
  "\tbefore or while processing the request."

export interface Target {
  /** `krbsrvname` */
  readonly service: string
  /** libpq's `PQhost`: the host name, else hostaddr; undefined ⇒ "host name must be specified" */
  readonly host: string | undefined
  /** a credential cache to use instead of the default (KRB5CCNAME) */
  readonly ccache: string | undefined
  /** `gssdelegation=1`: request GSS_C_DELEG_FLAG */
  readonly delegate: boolean
}

export interface Channel {
  /** wrap and send (dropped until the context is established) */
  readonly write: (bytes: Uint8Array) => void
  /** release the context, name and credential (after an in-flight library call returns) */
  readonly close: () => void
}

type Emit = (event: TransportNs.TransportEvent) => void

const frame = (payload: Uint8Array): Buffer => {
  const out = Buffer.allocUnsafe(4 + payload.length)
  out.writeUInt32BE(payload.length, 0)
  out.set(payload, 4)
  return out
}

const isStatus = (value: object): value is Gss.Status => "major" in value

/**
 * Takes over `socket` (its "data" and "end" events) and runs the handshake; `emit` receives `GssEstablished` or
 * `GssFailed`, then decrypted `Data`, `Eof` and `IoError`.
 */
export const start = (api: Gss.GssApi, socket: Net.Socket, target: Target, emit: Emit): Channel => {
  let closed = false
  let busy = false
  let established = false
  let failed = false
  let cred: Gss.Handle = null
  let name: Gss.Handle = null
  let context: Gss.Handle = null
  let maxInput = 0
  let pending: Buffer = Buffer.alloc(0)

  const release = () => {
    const [c, n, x] = [cred, name, context]
    cred = name = context = null
    api.deleteContext(x)
    api.releaseName(n)
    api.releaseCred(c)
  }

  // `code`: `EOF` when the server closed during the handshake (transient), absent for GSSAPI's own failures
  const fail = (message: string, code?: string) => {
    if (failed || established || closed) return
    failed = true
    socket.off("data", onData)
    socket.off("end", onEnd)
    emit(code === undefined ? { _tag: "GssFailed", message } : { _tag: "GssFailed", message, code })
  }

  const ioError = (message: string) => {
    if (closed) return
    socket.off("data", onData)
    emit({ _tag: "IoError", code: "EIO", message })
  }

  // one gss_init_sec_context round: with no input first, then with each complete server token
  const step = (input: Uint8Array | undefined) => {
    busy = true
    api.initSecContext(cred, context, name, Gss.REQUIRED_FLAGS | (target.delegate ? Gss.DELEG_FLAG : 0), input, (r) => {
      busy = false
      context = r.context
      if (closed) {
        release()
        return
      }
      if (Gss.isError(r.major)) {
        fail(`could not initiate GSSAPI security context:${api.describe(r)}`)
        return
      }
      if (r.output.length === 0) {
        // complete: from now on every packet is wrapped
        const limit = api.wrapSizeLimit(context, MAX_PACKET_SIZE - 4)
        if (typeof limit !== "number") {
          fail(`GSSAPI size check error:${api.describe(limit)}`)
          return
        }
        maxInput = limit
        established = true
        api.releaseCred(cred)
        cred = null
        emit({ _tag: "GssEstablished" })
        // bytes that followed the last token are already encrypted packets
        if (pending.length > 0) readPackets()
        return
      }
      if (r.output.length > AUTH_BUFFER_SIZE - 4) {
        fail(`client tried to send oversize GSSAPI packet (${r.output.length} > ${AUTH_BUFFER_SIZE - 4})`)
        return
      }
      socket.write(frame(r.output))
      readToken()
    })
  }

  // a complete server token in `pending` ⇒ the next round
  const readToken = () => {
    if (busy || established || failed || closed) return
    if (pending.length === 0) return
    if (pending[0] === 0x45 /* E */) {
      // an error "packet" during the handshake has no length: libpq shows it as a C string after the 'E'
      const text = pending.subarray(1)
      const nul = text.indexOf(0)
      fail(text.subarray(0, nul === -1 ? text.length : nul).toString("utf8"))
      return
    }
    const token = takeFrame(AUTH_BUFFER_SIZE, fail)
    if (token !== undefined) step(token)
  }

  // one length-prefixed frame (handshake tokens and encrypted packets share the framing) taken off `pending`;
  // undefined while it is incomplete, or when its declared length is over `limit` (then `onOversize` was told)
  const takeFrame = (limit: number, onOversize: (message: string) => void): Buffer | undefined => {
    if (pending.length < 4) return undefined
    const length = pending.readUInt32BE(0)
    if (length > limit - 4) {
      onOversize(`oversize GSSAPI packet sent by the server (${length} > ${limit - 4})`)
      return undefined
    }
    if (pending.length < 4 + length) return undefined
    const frame = pending.subarray(4, 4 + length)
    pending = pending.subarray(4 + length)
    return frame
  }

  // decrypt every complete packet in `pending`
  const readPackets = () => {
    while (!closed) {
      const packet = takeFrame(MAX_PACKET_SIZE, ioError)
      if (packet === undefined) return
      const result = api.unwrap(context, packet)
      if (isStatus(result)) {
        ioError(`GSSAPI unwrap error:${api.describe(result)}`)
        return
      }
      if (!result.confidential) {
        ioError("incoming GSSAPI message did not use confidentiality")
        return
      }
      if (result.output.length > 0) emit({ _tag: "Data", bytes: result.output })
    }
  }

  const onData = (chunk: Buffer) => {
    pending = pending.length === 0 ? chunk : Buffer.concat([pending, chunk])
    if (established) readPackets()
    else readToken()
  }

  const onEnd = () => {
    if (established) {
      if (!closed) emit({ _tag: "Eof" })
      return
    }
    // libpq fails the attempt without a text of its own here; the read path's text says what happened
    fail(SERVER_CLOSED, "EOF")
  }

  socket.on("data", onData)
  socket.on("end", onEnd)

  if (target.host === undefined || target.host === "") {
    fail("host name must be specified")
  } else {
    const imported = api.importName(`${target.service}@${target.host}`)
    if ("major" in imported) {
      fail(`GSSAPI name import error:${api.describe(imported)}`)
    } else {
      name = imported.name
      busy = true
      api.acquireCred(target.ccache, (acquired) => {
        busy = false
        cred = acquired ?? null
        if (closed) {
          release()
          return
        }
        // without a credential the library tries its default one and reports what is missing
        step(undefined)
      })
    }
  }

  return {
    write: (bytes) => {
      if (!established || closed) return
      for (let offset = 0; offset < bytes.length; offset += maxInput) {
        const result = api.wrap(context, bytes.subarray(offset, Math.min(bytes.length, offset + maxInput)))
        if (isStatus(result)) {
          ioError(`GSSAPI wrap error:${api.describe(result)}`)
          return
        }
        if (!result.confidential) {
          ioError("outgoing GSSAPI message would not use confidentiality")
          return
        }
        if (result.output.length > MAX_PACKET_SIZE - 4) {
          ioError(`client tried to send oversize GSSAPI packet (${result.output.length} > ${MAX_PACKET_SIZE - 4})`)
          return
        }
        socket.write(frame(result.output))
      }
    },
    close: () => {
      if (closed) return
      closed = true
      socket.off("data", onData)
      socket.off("end", onEnd)
      // a library call in flight still uses the handles: it releases them when it returns
      if (!busy) release()
    }
  }
}
