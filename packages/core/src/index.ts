/**
 * pqcancel core: libpq's PostgreSQL query-cancellation API as pure codecs, a sans-IO state machine and Effect
 * services. No Node imports.
 *
 * @since 0.1.0
 */

/**
 * @since 0.2.0
 */
export * as AdapterKit from "./AdapterKit.ts"

/**
 * @since 0.1.0
 */
export * as CancelConnection from "./CancelConnection.ts"

/**
 * @since 0.1.0
 */
export * as CancelOnInterrupt from "./CancelOnInterrupt.ts"

/**
 * @since 0.1.0
 */
export * as CancelError from "./CancelError.ts"

/**
 * @since 0.1.0
 */
export * as CancelKey from "./CancelKey.ts"

/**
 * @since 0.1.0
 */
export * as CancelMetrics from "./CancelMetrics.ts"

/**
 * @since 0.1.0
 */
export * as CancelMachine from "./CancelMachine.ts"

/**
 * @since 0.1.0
 */
export * as ConnectionOptions from "./ConnectionOptions.ts"

/**
 * @since 0.1.0
 */
export * as LegacyCancel from "./LegacyCancel.ts"

/**
 * @since 0.1.0
 */
export * as Libpq from "./Libpq.ts"

/**
 * @since 0.1.0
 */
export * as Protocol from "./Protocol.ts"

/**
 * @since 0.1.0
 */
export * as Transport from "./Transport.ts"
