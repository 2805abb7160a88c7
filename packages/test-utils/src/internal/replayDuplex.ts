import type * as Net from "node:net"
import * as Stream from "node:stream"

/**
 * A duplex that replays `prefix` and then the socket's bytes: lets the TLS layer see bytes we already consumed
 * (the ClientHello of a direct TLS connection) and keeps every raw byte visible to the recorder.
 */
export const replayDuplex = (socket: Net.Socket, prefix: Buffer, record: (b: Buffer) => void): Stream.Duplex => {
  const duplex = new Stream.Duplex({
    read() {
      socket.resume()
    },
    write(chunk: Buffer, _encoding, callback) {
      socket.write(chunk, callback)
    },
    final(callback) {
      socket.end()
      callback()
    },
    destroy(error, callback) {
      socket.destroy()
      callback(error)
    }
  })
  if (prefix.length > 0) duplex.push(prefix)
  socket.on("data", (chunk: Buffer) => {
    record(chunk)
    if (!duplex.push(chunk)) socket.pause()
  })
  socket.on("end", () => duplex.push(null))
  socket.on("close", () => duplex.destroy())
  return duplex
}
