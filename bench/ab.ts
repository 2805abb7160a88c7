/**
 * Profiling aid (not part of `pnpm bench`): pqcancel's one-shot cancel against the tuned Node floor, interleaved
 * cancel by cancel (ABAB…, alternating which goes first) against an idle backend over TCP or a unix socket, both timed
 * from the caller's fiber. Interleaving makes the ratio far steadier than separate runs on a busy machine.
 *
 *   node bench/ab.ts [tcp|unix] [--n 3000]
 */
import { CancelConnection } from "@pqcancel/core"
import { NodeTransport } from "@pqcancel/node"
import * as EmbeddedPostgres from "@pqcancel/test-utils/EmbeddedPostgres"
import * as TestSession from "@pqcancel/test-utils/TestSession"
import * as Effect from "effect/Effect"
import type { Cell } from "./cells.ts"
import { pqcancelSession } from "./cells.ts"
import { cancelPacket, floorTls, rawCancelWith } from "./node-systems.ts"
import { summarize } from "./stats.ts"
const transport = (process.argv[2] === "unix" ? "unix" : "tcp") as "tcp" | "unix"
const nIndex = process.argv.indexOf("--n")
const n = nIndex === -1 ? 3000 : Number(process.argv[nIndex + 1])
const program = Effect.gen(function*() {
  const cluster = yield* EmbeddedPostgres.make({ version: 18, settings: { log_min_messages: "log" } })
  const cell: Cell = { id: `${transport}/3.0`, transport, protocol: "3.0" }
  const session = yield* TestSession.connectTo(cluster, { transport, tls: "disable", protocol: "3.0" })
  const info = pqcancelSession(cluster, cell, session)
  const packet = cancelPacket(session.backendKey)
  const tls = floorTls(cluster, cell, true)
  const floor = Effect.callback<void>((resume) => {
    rawCancelWith(session.remote, packet, "disable", tls, () => resume(Effect.void))
  })
  const pq = CancelConnection.cancel(info).pipe(Effect.orDie)
  const a: number[] = [], b: number[] = []
  for (let i = 0; i < n; i++) {
    const first = i % 2 === 0
    for (const which of first ? [0, 1] : [1, 0]) {
      const t0 = performance.now()
      yield* (which === 0 ? floor : pq)
      const t1 = performance.now()
      if (i >= n / 10) (which === 0 ? a : b).push(t1 - t0) // the first tenth warms up
    }
  }
  const sa = summarize(a), sb = summarize(b)
  console.log(
    transport,
    "floor",
    sa.median.toFixed(3),
    "pqcancel",
    sb.median.toFixed(3),
    "ratio",
    (sb.median / sa.median).toFixed(3),
    "means",
    (sb.mean / sa.mean).toFixed(3)
  )
}).pipe(Effect.scoped, Effect.provide(NodeTransport.layer), Effect.orDie)
void Effect.runPromise(program)
