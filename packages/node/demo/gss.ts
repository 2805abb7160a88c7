/**
 * The demo's GSSAPI section: a throwaway Kerberos realm (MIT KDC) and the distribution's PostgreSQL built with
 * GSSAPI, a slow query from a node-postgres session, and its cancel over GSS encryption (`gssencmode=require`).
 * Skipped with a message when the KDC tools, the server or the GSSAPI library (koffi + libgssapi_krb5) are missing.
 */
import * as NodeGss from "@pqcancel/node/NodeGss"
import { EmbeddedPostgres, Kerberos } from "@pqcancel/test-utils"
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import type pg from "pg"

const log = (line: string) => Effect.sync(() => console.log(line))

/**
 * Runs demo.ts's `scenario` (a slow query from `session`, cancelled with `cancelConninfo`) against a GSS-enabled
 * server with `gssencmode=require`, or says why it cannot.
 */
export const gssDemo = <E, R>(
  scenario: (title: string, session: pg.ClientConfig, cancelConninfo: string) => Effect.Effect<void, E, R>
) =>
  Effect.gen(function*() {
    const missing = Kerberos.unavailableReason() ??
      ((yield* NodeGss.available()) ? undefined : NodeGss.unavailableReason())
    if (missing !== undefined) {
      yield* log(`\n== GSSAPI encryption: skipped (${missing})`)
      return
    }
    yield* Effect.gen(function*() {
      const realm = yield* Kerberos.Kerberos
      const cluster = yield* EmbeddedPostgres.EmbeddedPostgres
      yield* log(
        `\n(Kerberos realm ${realm.realm}: KDC on 127.0.0.1:${realm.kdcPort}, a ticket for ${realm.userPrincipal};` +
          ` PostgreSQL ${cluster.version} from the distribution on port ${cluster.port} with hostgssenc)`
      )
      yield* scenario(
        `GSSAPI encryption, gssencmode=require (service principal ${realm.servicePrincipal})`,
        { host: "localhost", port: cluster.port, user: "postgres" },
        `host=localhost port=${cluster.port} gssencmode=require connect_timeout=5`
      )
    }).pipe(
      // the scenario's clients close before the server stops
      Effect.scoped,
      Effect.provide(Kerberos.layer),
      Effect.catchCause((cause) => log(`\n== GSSAPI encryption: could not run\n${Cause.pretty(cause)}`))
    )
  })
