/**
 * Without the GSSAPI library (or koffi) pqcancel behaves as libpq without a credential cache: `require` fails before
 * connecting with libpq's text, `prefer` never sends a GSSENCRequest. Needs no KDC: a library name that does not
 * exist stands in for a machine without libgssapi_krb5.
 */
import { assert, describe, it } from "@effect/vitest"
import { CancelKey, ConnectionOptions } from "@pqcancel/core"
import type { CancelConnection } from "@pqcancel/core"
import { NodeTransport } from "@pqcancel/node"
import * as NodeGss from "@pqcancel/node/NodeGss"
import { FakePostmaster } from "@pqcancel/test-utils"
import * as Effect from "effect/Effect"
import { runCancel } from "./fixtures.ts"

const missingLibrary: NodeGss.Options = { library: "libpqcancel-no-such-gssapi.so.9" }

const cancelThrough = (fake: FakePostmaster.FakePostmaster, conninfo: string) =>
  Effect.gen(function*() {
    const options = yield* ConnectionOptions.fromString(`host=localhost port=${fake.port} ${conninfo}`, {})
    const info: CancelConnection.SessionInfo = {
      options,
      host: options.hosts[0]!,
      address: { _tag: "Tcp", address: "127.0.0.1", port: fake.port, family: 4 },
      key: CancelKey.unsafeMake({ pid: 77, secret: new Uint8Array([5, 6, 7, 8]), protocolVersion: "3.0" })
    }
    return yield* runCancel(info).pipe(Effect.provide(NodeTransport.layerWith({ gss: missingLibrary })))
  })

describe("NodeGss without a GSSAPI library", () => {
  it.effect("available is false and the reason names the library", () =>
    Effect.gen(function*() {
      assert.isFalse(yield* NodeGss.available(missingLibrary))
      assert.isFalse(yield* NodeGss.credentialsAvailable(missingLibrary))
      assert.include(NodeGss.unavailableReason(missingLibrary), "cannot load the GSSAPI library")
      assert.include(NodeGss.unavailableReason(missingLibrary), "libpqcancel-no-such-gssapi.so.9")
    }))

  it.live("gssencmode=require fails with libpq's text before connecting", () =>
    Effect.gen(function*() {
      const fake = yield* FakePostmaster.make({ script: [{ expect: "any" }] })
      const result = yield* cancelThrough(fake, "gssencmode=require")
      assert.isFalse(result.ok)
      assert.strictEqual(result.error, "GSSAPI encryption required but no credential cache")
      assert.strictEqual(yield* fake.connections, 0)
    }))

  it.live("gssencmode=prefer sends no GSSENCRequest", () =>
    Effect.gen(function*() {
      const fake = yield* FakePostmaster.make({ script: [{ expect: "cancelRequest" }] })
      const result = yield* cancelThrough(fake, "gssencmode=prefer sslmode=disable")
      assert.isTrue(result.ok, result.error)
      assert.notInclude(result.statuses, "GSS_STARTUP")
      const record = yield* fake.awaitFinished(0)
      assert.deepStrictEqual(record.packets.map((p) => p.kind), ["cancelRequest"])
    }))
})
