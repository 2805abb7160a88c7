/**
 * The checks libpq's `pqConnectOptions2` makes on option values and combinations, written once: the conninfo / URI
 * parser (`ConnectionOptions.resolve`) runs them on the parsed strings in libpq's order, `ConnectionOptions.validate`
 * runs them on an options object however it was built, and `CancelMachine` refuses the one combination that could
 * send a key in plaintext (direct TLS with a weak sslmode). Each returns libpq's message, or undefined when the value
 * is valid.
 *
 * @internal
 */

/** @internal */
export const SSL_MODES: ReadonlyArray<string> = ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]
/** @internal */
export const SSL_NEGOTIATIONS: ReadonlyArray<string> = ["postgres", "direct"]
/** @internal */
export const GSS_ENC_MODES: ReadonlyArray<string> = ["disable", "prefer", "require"]
/** @internal */
export const TLS_VERSIONS = ["TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"] as const
/** @internal */
export const PROTOCOL_VERSIONS: ReadonlyArray<string> = ["3.0", "3.2"]

/** @internal */
export const invalidValue = (keyword: string, value: unknown): string => `invalid ${keyword} value: "${String(value)}"`

/** `sslmode` is one of libpq's six values. @internal */
export const checkSslmode = (sslmode: unknown): string | undefined =>
  typeof sslmode === "string" && SSL_MODES.includes(sslmode) ? undefined : invalidValue("sslmode", sslmode)

/** `sslnegotiation` is postgres or direct, and direct only with require / verify-ca / verify-full. @internal */
export const checkSslNegotiation = (sslmode: string, sslnegotiation: unknown): string | undefined => {
  if (typeof sslnegotiation !== "string" || !SSL_NEGOTIATIONS.includes(sslnegotiation)) {
    return invalidValue("sslnegotiation", sslnegotiation)
  }
  if (sslnegotiation === "direct" && sslmode[0] !== "r" && sslmode[0] !== "v") {
    return `weak sslmode "${sslmode}" may not be used with sslnegotiation=direct (use "require", "verify-ca", or "verify-full")`
  }
  return undefined
}

/** `sslrootcert=system` only with verify-full. @internal */
export const checkSslrootcert = (sslmode: string, sslrootcert: string | undefined): string | undefined =>
  sslrootcert === "system" && sslmode !== "verify-full"
    ? `weak sslmode "${sslmode}" may not be used with sslrootcert=system (use "verify-full")`
    : undefined

/** Index of a TLS version name (case-insensitive), -1 when unknown. @internal */
export const tlsVersionIndex = (value: string): number =>
  TLS_VERSIONS.findIndex((v) => v.toLowerCase() === value.toLowerCase())

/** `ssl_min_protocol_version` / `ssl_max_protocol_version`: known names, min ≤ max. @internal */
export const checkSslProtocolRange = (min: string | undefined, max: string | undefined): string | undefined => {
  const minIndex = min === undefined ? -1 : tlsVersionIndex(min)
  const maxIndex = max === undefined ? -1 : tlsVersionIndex(max)
  if (min !== undefined && minIndex < 0) return invalidValue("ssl_min_protocol_version", min)
  if (max !== undefined && maxIndex < 0) return invalidValue("ssl_max_protocol_version", max)
  if (min !== undefined && max !== undefined && minIndex > maxIndex) return "invalid SSL protocol version range"
  return undefined
}

/** `gssencmode` is disable, prefer or require. @internal */
export const checkGssencmode = (gssencmode: unknown): string | undefined =>
  typeof gssencmode === "string" && GSS_ENC_MODES.includes(gssencmode)
    ? undefined
    : invalidValue("gssencmode", gssencmode)

/** `min_protocol_version` ≤ `max_protocol_version` (both already 3.0 or 3.2). @internal */
export const checkProtocolRange = (min: "3.0" | "3.2", max: "3.0" | "3.2"): string | undefined =>
  min === "3.2" && max === "3.0" ? "\"min_protocol_version\" is greater than \"max_protocol_version\"" : undefined
