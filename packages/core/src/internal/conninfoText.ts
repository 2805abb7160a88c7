/**
 * Small text helpers shared by the conninfo parser and the protocol codecs (no `TextDecoder` in core's lib).
 *
 * @internal
 */

/**
 * Decodes UTF-8 bytes; invalid or truncated sequences become U+FFFD (one per offending byte).
 *
 * @internal
 */
export const utf8Decode = (bytes: ArrayLike<number>, start = 0, end = bytes.length): string => {
  let out = ""
  let i = start
  while (i < end) {
    const b = bytes[i]!
    if (b < 0x80) {
      out += String.fromCharCode(b)
      i++
      continue
    }
    let need: number
    let cp: number
    let min: number
    if (b >= 0xc2 && b <= 0xdf) {
      need = 1
      cp = b & 0x1f
      min = 0x80
    } else if (b >= 0xe0 && b <= 0xef) {
      need = 2
      cp = b & 0x0f
      min = 0x800
    } else if (b >= 0xf0 && b <= 0xf4) {
      need = 3
      cp = b & 0x07
      min = 0x10000
    } else {
      out += "\uFFFD"
      i++
      continue
    }
    let j = 1
    for (; j <= need; j++) {
      const c = i + j < end ? bytes[i + j]! : -1
      if ((c & 0xc0) !== 0x80) break
      cp = (cp << 6) | (c & 0x3f)
    }
    if (j <= need || cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
      out += "\uFFFD"
      i++
      continue
    }
    out += String.fromCodePoint(cp)
    i += need + 1
  }
  return out
}

/**
 * Number of bytes of the UTF-8 encoding of `s` (lone surrogates count as 3, like U+FFFD).
 *
 * @internal
 */
export const utf8Length = (s: string): number => {
  let n = 0
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i)
    if (c < 0x80) n += 1
    else if (c < 0x800) n += 2
    else if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length) {
      const d = s.charCodeAt(i + 1)
      if (d >= 0xdc00 && d <= 0xdfff) {
        n += 4
        i++
      } else n += 3
    } else n += 3
  }
  return n
}
