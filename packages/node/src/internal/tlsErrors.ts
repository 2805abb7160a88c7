/**
 * Node's TLS failures → libpq 18's texts (`fe-secure-openssl.c`, `open_client_SSL`), in one place.
 *
 * - every X509 verification failure (Node's `authorizationError`, whatever its code) reads as OpenSSL's
 *   `SSL error: certificate verify failed`, as libpq verifies the chain inside the handshake;
 * - a verify-full host name mismatch keeps libpq's own text (no `SSL error: ` prefix);
 * - the peer hanging up mid-handshake is `SSL SYSCALL error: EOF detected` (libpq's OpenSSL 1.1 build), a reset
 *   `SSL SYSCALL error: Connection reset by peer` (libpq's strerror of the socket error);
 * - any other OpenSSL error is `SSL error: <OpenSSL's reason>`, and for the protocol-version reasons libpq lists,
 *   a second line `This may indicate that the server does not support any SSL protocol version between <min> and
 *   <max>.` with the configured bounds (default TLSv1.2 and TLSv1.3).
 *
 * The same texts on Bun and Deno's `node:tls`: BoringSSL (Bun) names its reasons in capitals (`WRONG_VERSION_NUMBER`),
 * read as OpenSSL's lower-case text; Deno reports a verification failure as an error whose code is the X509 one
 * (`UNABLE_TO_VERIFY_LEAF_SIGNATURE`) without setting `authorizationError`.
 *
 * @internal
 */

/** The code our verify-full check gives its error (its message is libpq's text). @internal */
export const HOST_MISMATCH = "PQCANCEL_HOST_MISMATCH"

/** OpenSSL's reason strings after which libpq adds the protocol-version hint (the `SSL_R_*` of its switch). */
const PROTOCOL_VERSION_REASONS: ReadonlySet<string> = new Set([
  "no protocols available",
  "unsupported protocol",
  "bad protocol version number",
  "unknown protocol",
  "unknown ssl version",
  "unsupported ssl version",
  "wrong ssl version",
  "wrong version number",
  "tlsv1 alert protocol version",
  "version too high",
  "version too low"
])

/** X509 verification codes (OpenSSL's `X509_V_ERR_*` without the prefix) as Node-compatible runtimes report them. */
const X509_VERIFY_CODES: ReadonlySet<string> = new Set([
  "UNABLE_TO_GET_ISSUER_CERT",
  "UNABLE_TO_GET_CRL",
  "UNABLE_TO_DECRYPT_CERT_SIGNATURE",
  "UNABLE_TO_DECRYPT_CRL_SIGNATURE",
  "UNABLE_TO_DECODE_ISSUER_PUBLIC_KEY",
  "CERT_SIGNATURE_FAILURE",
  "CRL_SIGNATURE_FAILURE",
  "CERT_NOT_YET_VALID",
  "CERT_HAS_EXPIRED",
  "CRL_NOT_YET_VALID",
  "CRL_HAS_EXPIRED",
  "ERROR_IN_CERT_NOT_BEFORE_FIELD",
  "ERROR_IN_CERT_NOT_AFTER_FIELD",
  "ERROR_IN_CRL_LAST_UPDATE_FIELD",
  "ERROR_IN_CRL_NEXT_UPDATE_FIELD",
  "DEPTH_ZERO_SELF_SIGNED_CERT",
  "SELF_SIGNED_CERT_IN_CHAIN",
  "UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
  "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
  "CERT_CHAIN_TOO_LONG",
  "CERT_REVOKED",
  "INVALID_CA",
  "PATH_LENGTH_EXCEEDED",
  "INVALID_PURPOSE",
  "CERT_UNTRUSTED",
  "CERT_REJECTED"
])

/** Whether a TLS error code is a certificate verification failure (an X509 code). @internal */
export const isVerificationCode = (code: string | undefined): boolean =>
  code !== undefined && X509_VERIFY_CODES.has(code)

/** @internal */
export const CERTIFICATE_VERIFY_FAILED = "SSL error: certificate verify failed"
/** @internal */
export const EOF_DETECTED = "SSL SYSCALL error: EOF detected"

/** libpq's protocol-version hint line. @internal */
export const protocolVersionHint = (min: string | undefined, max: string | undefined): string =>
  `This may indicate that the server does not support any SSL protocol version between ${min ?? "TLSv1.2"} and ${
    max ?? "TLSv1.3"
  }.`

/** OpenSSL's reason of a Node TLS error, e.g. `wrong version number` (from `reason` or the `ERR_SSL_*` code). */
const reasonOf = (error: NodeJS.ErrnoException): string | undefined => {
  const reason = (error as { readonly reason?: unknown }).reason
  // BoringSSL (Bun): `WRONG_VERSION_NUMBER` is OpenSSL's `wrong version number`
  if (typeof reason === "string" && reason !== "") return openSslText(reason)
  const code = error.code ?? ""
  if (code.startsWith("ERR_SSL_")) return code.slice("ERR_SSL_".length).toLowerCase().replaceAll("_", " ")
  // OpenSSL's own text, e.g. BoringSSL's "error:100000f7:SSL routines:OPENSSL_internal:WRONG_VERSION_NUMBER" (Bun)
  const openssl = /^error:[0-9a-fA-F]+:[^:]*:[^:]*:([A-Za-z0-9_ ]+)$/.exec(error.message.trim())
  if (openssl === null) return undefined
  return openSslText(openssl[1]!)
}

const openSslText = (reason: string): string =>
  /^[A-Z0-9_]+$/.test(reason) ? reason.toLowerCase().replaceAll("_", " ") : reason

/**
 * libpq's text for a TLS handshake failure.
 *
 * @param verificationFailed the TLS socket reported an authorization (certificate verification) error
 * @internal
 */
export const handshakeFailureText = (
  error: NodeJS.ErrnoException,
  context: {
    readonly verificationFailed: boolean
    readonly minVersion: string | undefined
    readonly maxVersion: string | undefined
  }
): string => {
  const code = error.code ?? ""
  // libpq reports a host name mismatch without the "SSL error: " prefix
  if (code === HOST_MISMATCH || code === "ERR_TLS_CERT_ALTNAME_INVALID") return error.message
  if (context.verificationFailed || X509_VERIFY_CODES.has(code)) return CERTIFICATE_VERIFY_FAILED
  if (code === "ECONNRESET") return "SSL SYSCALL error: Connection reset by peer"
  if (code === "EPIPE") return "SSL SYSCALL error: Broken pipe"
  const reason = reasonOf(error)
  if (reason === undefined) return `SSL error: ${error.message.trim()}`
  const text = `SSL error: ${reason}`
  return PROTOCOL_VERSION_REASONS.has(reason)
    ? `${text}\n${protocolVersionHint(context.minVersion, context.maxVersion)}`
    : text
}
