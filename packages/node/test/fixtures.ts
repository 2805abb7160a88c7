/**
 * Shared test support: turn a TestSession into what a cancel needs, and start a query worth cancelling.
 */
import { assert } from "@effect/vitest"
import { CancelKey, ConnectionOptions } from "@pqcancel/core"
import type { CancelError } from "@pqcancel/core"
import type { CancelConnection } from "@pqcancel/core"
import type { EmbeddedPostgres } from "@pqcancel/test-utils"
import { TestSession } from "@pqcancel/test-utils"
import * as Effect from "effect/Effect"

/** The SessionInfo of a TestSession, with the cancel's options parsed from `conninfo` */
export const sessionInfo = (
  session: TestSession.TestSession,
  conninfo: string
): Effect.Effect<CancelConnection.SessionInfo, CancelError.InvalidOption> =>
  Effect.map(ConnectionOptions.fromString(conninfo, {}), (options) => ({
    options,
    host: options.hosts[0]!,
    address: session.remote,
    key: CancelKey.unsafeMake(session.backendKey)
  }))

/** Sends `SELECT pg_sleep(60)` and waits until the backend is really inside pg_sleep */
export const sleepingQuery = Effect.fnUntraced(function*(
  session: TestSession.TestSession,
  monitor: TestSession.TestSession
) {
  const pending = yield* session.startQuery("SELECT pg_sleep(60)")
  yield* TestSession.waitUntilSleeping(monitor, session.backendKey.pid)
  return pending
})

/** The query ended with SQLSTATE 57014 (canceling statement due to user request) */
export const assertCancelled = Effect.fnUntraced(function*(pending: TestSession.PendingQuery) {
  const result = yield* pending.result
  assert.strictEqual(result._tag, "Error")
  if (result._tag === "Error") {
    assert.strictEqual(result.sqlstate, "57014")
    assert.include(result.message, "canceling statement due to user request")
  }
})

/** conninfo of a cluster for one transport, with extra keywords */
export const conninfo = (
  cluster: EmbeddedPostgres.Cluster,
  transport: "tcp" | "tcp6" | "unix",
  extra: Record<string, string> = {}
): string => cluster.conninfo(transport, { connect_timeout: "10", ...extra })
