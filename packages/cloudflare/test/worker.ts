/**
 * The Worker the workerd tests run (bundled by Bun into one module, `cloudflare:sockets` left to workerd): a POST
 * with a session's conninfo, address and key sends one cancel from inside the Worker through CloudflareTransport and
 * answers with the outcome.
 */
import { CloudflareTransport } from "@pqcancel/cloudflare"
import { CancelConnection, CancelKey, ConnectionOptions } from "@pqcancel/core"
import * as Effect from "effect/Effect"

/** What the test posts. */
export interface CancelBody {
  readonly conninfo: string
  readonly address:
    | { readonly _tag: "Tcp"; readonly address: string; readonly port: number; readonly family: 4 | 6 }
    | { readonly _tag: "Unix"; readonly path: string }
  readonly pid: number
  readonly secretHex: string
  readonly protocolVersion: CancelKey.ProtocolVersion
}

/** What the Worker answers. */
export type CancelOutcome =
  | { readonly ok: true }
  | { readonly ok: false; readonly tag: string; readonly message: string }

const fromHex = (hex: string): Uint8Array => Uint8Array.from(hex.match(/../g) ?? [], (byte) => parseInt(byte, 16))

const cancel = (body: CancelBody): Effect.Effect<CancelOutcome> =>
  Effect.gen(function*() {
    const options = yield* ConnectionOptions.fromString(body.conninfo, {})
    yield* CancelConnection.cancel({
      options,
      host: options.hosts[0]!,
      address: body.address,
      key: CancelKey.unsafeMake({
        pid: body.pid,
        secret: fromHex(body.secretHex),
        protocolVersion: body.protocolVersion
      })
    })
  }).pipe(
    Effect.provide(CloudflareTransport.layer),
    Effect.match({
      onSuccess: (): CancelOutcome => ({ ok: true }),
      onFailure: (error): CancelOutcome => ({ ok: false, tag: error._tag, message: error.message })
    })
  )

export default {
  fetch: async (request: Request): Promise<Response> =>
    Response.json(await Effect.runPromise(cancel(await request.json() as CancelBody)))
}
