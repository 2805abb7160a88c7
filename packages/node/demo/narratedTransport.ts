/**
 * NodeTransport, narrating each cancel connection to an observer: where it goes (the session's own address) and with
 * which sslmode, the TLS handshake, the 16-byte CancelRequest (inside TLS or not), the server closing the connection.
 * The demos print these steps on their timelines.
 */
import { Transport } from "@pqcancel/core/Transport"
import { NodeTransport } from "@pqcancel/node"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"

/** One step of a cancel connection */
export type CancelStep =
  | { readonly _tag: "Connect"; readonly to: string; readonly sslmode: string }
  | { readonly _tag: "TlsEstablished"; readonly to: string }
  | { readonly _tag: "RequestWritten"; readonly to: string; readonly tls: boolean }
  | { readonly _tag: "Eof"; readonly to: string }

/** `NodeTransport.layer`, calling `observe` at each {@link CancelStep} */
export const narratedTransport = (observe: (step: CancelStep) => void): Layer.Layer<Transport> =>
  Layer.effect(
    Transport,
    Effect.gen(function*() {
      const inner = yield* Transport
      return Transport.of({
        ...inner,
        connect: (request, sink) => {
          const to = request.address._tag === "Tcp"
            ? `${request.address.address}:${request.address.port}`
            : request.address.path
          observe({ _tag: "Connect", to, sslmode: request.options.sslmode })
          let tls = false
          const connection = inner.connect(request, (event) => {
            if (event._tag === "TlsEstablished") {
              tls = true
              observe({ _tag: "TlsEstablished", to })
            }
            if (event._tag === "Eof") observe({ _tag: "Eof", to })
            sink(event)
          })
          return {
            fd: () => connection.fd(),
            write: (bytes) => {
              if (bytes.length === 16) observe({ _tag: "RequestWritten", to, tls })
              connection.write(bytes)
            },
            startTls: (tlsRequest) => connection.startTls(tlsRequest),
            startGss: (gssRequest) => connection.startGss(gssRequest),
            close: () => connection.close()
          }
        }
      })
    })
  ).pipe(Layer.provide(NodeTransport.layer))
