/**
 * A "black hole" postmaster for the in-flight memory figure, run as a separate process (so its sockets don't count
 * in the client's memory): it accepts connections, answers an SSLRequest with `S` and completes TLS when asked
 * (`--tls`), reads the 16-byte CancelRequest, and then holds the connection open until told `release` on stdin.
 *
 * stdout: `port <n>` once listening, then `held <count>` whenever the number of received CancelRequests changes.
 */
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Path from "node:path"
import * as Tls from "node:tls"
import * as Url from "node:url"

const tls = process.argv.includes("--tls")
const fixtures = Path.resolve(
  Path.dirname(Url.fileURLToPath(import.meta.url)),
  "..",
  "packages",
  "test-utils",
  "fixtures"
)
const context = tls
  ? Tls.createSecureContext({
    key: Fs.readFileSync(Path.join(fixtures, "server.key")),
    cert: Fs.readFileSync(Path.join(fixtures, "server.crt"))
  })
  : undefined

const sockets = new Set<Net.Socket>()
let held = 0
let reported = -1
let timer: NodeJS.Timeout | undefined
const report = () => {
  if (timer !== undefined) return
  timer = setTimeout(() => {
    timer = undefined
    if (held !== reported) {
      reported = held
      process.stdout.write(`held ${held}\n`)
    }
  }, 5)
}

const awaitCancel = (socket: Net.Socket) => {
  let received = 0
  socket.on("data", (chunk: Buffer) => {
    const before = received
    received += chunk.length
    if (before < 16 && received >= 16) {
      held++
      report()
    }
  })
}

const server = Net.createServer({ noDelay: true }, (raw) => {
  sockets.add(raw)
  raw.on("error", () => {})
  raw.on("close", () => sockets.delete(raw))
  if (!tls) {
    awaitCancel(raw)
    return
  }
  raw.once("data", (first: Buffer) => {
    if (first.length !== 8) {
      raw.destroy()
      return
    }
    raw.write("S")
    const secure = new Tls.TLSSocket(raw, { isServer: true, secureContext: context!, ALPNProtocols: ["postgresql"] })
    secure.on("error", () => {})
    sockets.add(secure)
    awaitCancel(secure)
  })
})
server.listen({ host: "127.0.0.1", port: 0, backlog: 4096 }, () => {
  process.stdout.write(`port ${(server.address() as Net.AddressInfo).port}\n`)
})

process.stdin.setEncoding("utf8")
process.stdin.on("data", (text: string) => {
  if (text.includes("release")) {
    for (const socket of sockets) socket.destroy()
    held = 0
    reported = -1
    report()
  }
})
process.stdin.on("end", () => process.exit(0))
