/**
 * node-postgres (`pg`) adapter: read a connected `pg.Client`'s cancel key and actual remote address into a
 * {@link CancelConnection.SessionInfo}, and run queries that are cancelled on the server when the fiber is
 * interrupted — over the session's encryption, never hitting the next query.
 *
 * `pg` speaks protocol 3.0 only (4-byte keys) and does not expose direct TLS; the cancel itself follows the
 * `ConnectionOptions` you pass (parse the same conninfo you gave `pg`).
 *
 * @example
 * ```ts
 * import * as Effect from "effect/Effect"
 * import { ConnectionOptions } from "@pqcancel/core"
 * import { NodeTransport } from "@pqcancel/node"
 * import * as PgAdapter from "@pqcancel/node/PgAdapter"
 * import pg from "pg"
 *
 * declare const client: pg.Client // connected
 * declare const options: ConnectionOptions.ConnectionOptions
 *
 * const program = PgAdapter.query(client, options, "SELECT pg_sleep(60)").pipe(
 *   Effect.timeout("1 second"), // interrupts ⇒ CancelRequest ⇒ the backend stops
 *   Effect.provide(NodeTransport.layer)
 * )
 * ```
 *
 * @since 0.1.0
 */
import type { CancelConnection, ConnectionOptions } from "@pqcancel/core"
import * as CancelOnInterrupt from "@pqcancel/core/CancelOnInterrupt"
import type { Transport } from "@pqcancel/core/Transport"
import * as Effect from "effect/Effect"
import * as Redacted from "effect/Redacted"
import * as Schema from "effect/Schema"
import type * as Scope from "effect/Scope"
import type * as Net from "node:net"
import pg from "pg"

/**
 * A query failed on the server (or the client broke). `code` is the SQLSTATE when the server sent one.
 *
 * @category errors
 * @since 0.1.0
 */
export class PgQueryError extends Schema.TaggedError<PgQueryError>()("PgQueryError", {
  message: Schema.String,
  code: Schema.UndefinedOr(Schema.String)
}) {}

/**
 * The client has no backend key or no open socket (not connected, or already ended).
 *
 * @category errors
 * @since 0.1.0
 */
export class PgNotConnected extends Schema.TaggedError<PgNotConnected>()("PgNotConnected", {
  message: Schema.String
}) {}

/**
 * A connected `pg.Client` owned by the current Scope (ended when the Scope closes).
 *
 * @category constructors
 * @since 0.1.0
 */
export const connect = (config: pg.ClientConfig): Effect.Effect<pg.Client, PgQueryError, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.tryPromise({
      try: () => {
        const client = new pg.Client(config)
        return client.connect().then(() => client)
      },
      catch: (error) =>
        new PgQueryError({
          message: error instanceof Error ? error.message : String(error),
          code: (error as { readonly code?: string }).code
        })
    }),
    (client) => Effect.promise(() => client.end().catch(() => undefined))
  )

interface PgInternals {
  readonly processID: number | null | undefined
  readonly secretKey: number | null | undefined
  readonly host: string
  readonly port: number
  readonly connection: { readonly stream: Net.Socket | undefined } | undefined
}

/**
 * What a cancel needs from a connected `pg.Client`: its pid and key, the host entry and the exact remote address.
 *
 * @category constructors
 * @since 0.1.0
 */
export const sessionInfo = (
  client: pg.Client,
  options: ConnectionOptions.ConnectionOptions
): Effect.Effect<CancelConnection.SessionInfo, PgNotConnected> =>
  Effect.suspend((): Effect.Effect<CancelConnection.SessionInfo, PgNotConnected> => {
    const internals = client as unknown as PgInternals
    const stream = internals.connection?.stream
    if (internals.processID == null || internals.secretKey == null || stream === undefined || stream.destroyed) {
      return Effect.fail(new PgNotConnected({ message: "connection not open" }))
    }
    const secret = new Uint8Array(4)
    new DataView(secret.buffer).setInt32(0, internals.secretKey)
    const key = { pid: internals.processID, secret: Redacted.make(secret), protocolVersion: "3.0" as const }
    if (internals.host.startsWith("/")) {
      return Effect.succeed({
        options,
        host: { _tag: "Unix", directory: internals.host, port: internals.port },
        address: { _tag: "Unix", path: `${internals.host}/.s.PGSQL.${internals.port}` },
        key
      })
    }
    const address = stream.remoteAddress
    if (address === undefined || stream.remotePort === undefined) {
      return Effect.fail(new PgNotConnected({ message: "connection not open" }))
    }
    return Effect.succeed({
      options,
      host: { _tag: "Tcp", host: internals.host, hostaddr: undefined, port: internals.port },
      address: { _tag: "Tcp", address, port: stream.remotePort, family: stream.remoteFamily === "IPv6" ? 6 : 4 },
      key
    })
  })

/**
 * Runs a query; if the fiber is interrupted, cancels it on the server and waits for it to end before the
 * interruption completes. If that cannot be confirmed, the client is ended so it is never reused.
 *
 * @category combinators
 * @since 0.1.0
 */
export const query = <R extends pg.QueryResultRow = pg.QueryResultRow>(
  client: pg.Client,
  options: ConnectionOptions.ConnectionOptions,
  text: string,
  values?: ReadonlyArray<unknown>
): Effect.Effect<pg.QueryResult<R>, PgQueryError | PgNotConnected, Transport> =>
  Effect.flatMap(sessionInfo(client, options), (session) =>
    CancelOnInterrupt.cancelOnInterrupt(
      Effect.tryPromise({
        try: () => client.query<R>(text, values === undefined ? undefined : [...values]),
        catch: (error) =>
          new PgQueryError({
            message: error instanceof Error ? error.message : String(error),
            code: (error as { readonly code?: string }).code
          })
      }),
      {
        session,
        onUnsafe: () => Effect.promise(() => client.end().catch(() => undefined))
      }
    ))
