/**
 * `NodeClusterSocket.layer({ storage: "sql" })` with TCP_NODELAY on the runner-to-runner sockets.
 *
 * Effect's socket runners (effect 4.1.5) leave Nagle's algorithm on: a small message that follows another one on the
 * same connection before the peer acknowledged it waits for that acknowledgement, and Linux delays an ACK up to 40 ms.
 * An interrupt sent within ~40 ms of its request (a client that gives up at once, a short timeout) then reaches the
 * entity's runner ~40 ms late (measured: 32–41 ms instead of 1–3 ms; docs/cluster.md). This is the same composition
 * as `NodeClusterSocket.layer` (socket runner, ping health checks, SQL message and runner storage, binary
 * serialization), with `noDelay: true` on the outgoing sockets and on the server.
 */
import * as NodeCrypto from "@effect/platform-node/NodeCrypto"
import * as NodeSocket from "@effect/platform-node/NodeSocket"
import * as NodeSocketServer from "@effect/platform-node/NodeSocketServer"
import * as RunnerHealth from "effect/cluster/RunnerHealth"
import * as Runners from "effect/cluster/Runners"
import * as ShardingConfig from "effect/cluster/ShardingConfig"
import * as SocketRunner from "effect/cluster/SocketRunner"
import * as SqlMessageStorage from "effect/cluster/SqlMessageStorage"
import * as SqlRunnerStorage from "effect/cluster/SqlRunnerStorage"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as RpcClient from "effect/rpc/RpcClient"
import * as RpcSerialization from "effect/rpc/RpcSerialization"
import { Socket } from "effect/socket/Socket"

/** Outgoing runner connections with TCP_NODELAY (otherwise as `NodeClusterSocket.layerClientProtocol`) */
export const layerClientProtocol = Layer.effect(Runners.RpcClientProtocol)(Effect.gen(function*() {
  const serialization = yield* RpcSerialization.RpcSerialization
  return {
    codecFor: serialization.codecFor,
    make: Effect.fnUntraced(function*(address) {
      const socket = yield* NodeSocket.makeNet({
        openTimeout: 1000,
        timeout: 5500,
        host: address.host,
        port: address.port,
        noDelay: true
      })
      return yield* RpcClient.makeProtocolSocket().pipe(
        Effect.provideService(Socket, socket),
        Effect.provideService(RpcSerialization.RpcSerialization, serialization)
      )
    }, Effect.orDie)
  }
}))

/** The runner's server with TCP_NODELAY, on `runnerListenAddress` or `runnerAddress` */
export const layerSocketServer = Layer.unwrap(Effect.gen(function*() {
  const config = yield* ShardingConfig.ShardingConfig
  const address = Option.orElse(config.runnerListenAddress, () => config.runnerAddress)
  if (Option.isNone(address)) {
    return yield* Effect.die("the runner has no address (ShardingConfig.runnerAddress is None)")
  }
  return NodeSocketServer.layer({ host: address.value.host, port: address.value.port, noDelay: true })
}))

/** A socket runner with its storage in PostgreSQL (needs a `SqlClient`), TCP_NODELAY on its sockets */
export const layer = (shardingConfig: Partial<ShardingConfig.ShardingConfig["Service"]>) =>
  SocketRunner.layer.pipe(
    Layer.provide([layerSocketServer, layerClientProtocol]),
    Layer.provide(RunnerHealth.layerPing.pipe(Layer.provide(Runners.layerRpc), Layer.provide(layerClientProtocol))),
    Layer.provideMerge(SqlMessageStorage.layer.pipe(Layer.provide(NodeCrypto.layerDigest))),
    Layer.provide(Layer.orDie(SqlRunnerStorage.layer)),
    Layer.provide(ShardingConfig.layer(shardingConfig)),
    Layer.provide(RpcSerialization.layerSchemaBinary())
  )
