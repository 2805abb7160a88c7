/**
 * STUB — types only; parser to be implemented (see helper brief). Public contract below must be kept.
 *
 * @since 0.1.0
 */
import type * as Redacted from "effect/Redacted"

/** @category models @since 0.1.0 */
export type SslMode = "disable" | "allow" | "prefer" | "require" | "verify-ca" | "verify-full"
/** @category models @since 0.1.0 */
export type SslNegotiation = "postgres" | "direct"
/** @category models @since 0.1.0 */
export type GssEncMode = "disable" | "prefer" | "require"
/** @category models @since 0.1.0 */
export type TlsVersion = "TLSv1" | "TLSv1.1" | "TLSv1.2" | "TLSv1.3"

/**
 * One host entry of a (possibly multi-host) connection string.
 *
 * @category models
 * @since 0.1.0
 */
export type HostEntry =
  | {
    readonly _tag: "Tcp"
    /** the host name as written (used for SNI, verify-full and messages); undefined when only hostaddr was given */
    readonly host: string | undefined
    /** the numeric address, when hostaddr was given */
    readonly hostaddr: string | undefined
    readonly port: number
  }
  | {
    readonly _tag: "Unix"
    /** the socket directory (host starting with "/" or "@" for the abstract namespace) */
    readonly directory: string
    readonly port: number
  }

/**
 * The validated, cancel-relevant connection options (libpq's after `pqConnectOptions2`).
 *
 * @category models
 * @since 0.1.0
 */
export interface ConnectionOptions {
  readonly hosts: ReadonlyArray<HostEntry>
  /** seconds; undefined = no timeout (libpq: <= 0 means none, 1 is raised to 2) */
  readonly connectTimeout: number | undefined
  readonly keepalives: boolean
  readonly keepalivesIdle: number | undefined
  readonly keepalivesInterval: number | undefined
  readonly keepalivesCount: number | undefined
  /** milliseconds */
  readonly tcpUserTimeout: number | undefined
  readonly sslmode: SslMode
  readonly sslnegotiation: SslNegotiation
  readonly gssencmode: GssEncMode
  /** a file path or "system" */
  readonly sslrootcert: string | undefined
  readonly sslcert: string | undefined
  readonly sslkey: string | undefined
  readonly sslpassword: Redacted.Redacted<string> | undefined
  readonly sslcrl: string | undefined
  readonly sslcrldir: string | undefined
  readonly sslsni: boolean
  readonly sslMinProtocolVersion: TlsVersion | undefined
  readonly sslMaxProtocolVersion: TlsVersion | undefined
  readonly minProtocolVersion: "3.0" | "3.2"
  readonly maxProtocolVersion: "3.0" | "3.2"
  readonly requirepeer: string | undefined
  readonly krbsrvname: string | undefined
}
