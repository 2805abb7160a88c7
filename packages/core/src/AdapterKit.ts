/**
 * The adapter kit: what every driver adapter (`PgAdapter`, `SqlPgAdapter`, `PostgresJsAdapter`) shares, so that
 * "interrupt the fiber ⇒ the statement stops on the server" costs a statement that is never interrupted nothing but a
 * few closures — no key, no session, no options, no syscall, no fiber — and is decided the same way for every driver.
 *
 * An adapter supplies a {@link DriverPort}: the few facts only its driver knows (where a connection's cancel goes,
 * where a statement is, how a connection is retired). {@link make} turns it into an {@link AdapterKit}, whose
 * runners run one statement under the {@link CancelOnInterrupt.Policy} the user gave — the same option names in every
 * adapter: {@link AdapterKit.statement} (a driver that reports a statement's end through a callback: no fiber at
 * all; node-postgres), {@link AdapterKit.pooled} (the same, when the driver picks the connection later: postgres.js),
 * {@link AdapterKit.reclaimed} (a driver whose statements are Effects that abandon an interrupted statement without
 * stopping it: no fiber, the kit takes the statement back; `@effect/sql-pg` with `multiplex`) and
 * {@link AdapterKit.effect} (any Effect: one child fiber keeps reading the answer while the cancel is sent).
 *
 * ## Implementing a driver port
 *
 * 1. Read the driver's private state in **one** internal module per driver (`packages/node/src/internal/<driver>.ts`)
 *    and check what you read (types, cross-checks against public facts) so that a changed driver fails with a typed
 *    error naming the driver version, never a wrong key or address.
 * 2. `target(connection, options)`: the connection's cancel target (its {@link CancelConnection.SessionInfo}: options, host
 *    entry, the socket's actual remote address, the backend key as `Redacted`). The kit calls it the first time it
 *    sees a connection (its first statement) and caches the result in a `WeakMap` keyed by the connection object, so
 *    it runs **once per physical connection** (`options`, when defined, are the cancel's `ConnectionOptions` the
 *    user gave the adapter: use them instead of deriving them; the kit caches per options object too): key the port on the driver object that lives as long as the physical
 *    connection (e.g. sql-pg's unpinned base connection, not a pinned view). A failure fails that statement before it
 *    runs (it could not be cancelled) and is not cached.
 * 3. `locate(connection, statement)`: called only after an interruption, then again before every repeated cancel.
 *    Answer `"withdrawn"` after taking a statement nothing was written of out of the driver's queue (it must then
 *    never be written); `"running"` when the session runs it and a cancel can reach nothing else (nothing is written
 *    behind it, and nothing can be until the interruption is over); `"behind"` when it is written behind another
 *    statement of a pipeline (the kit waits — `awaitTurn`, else a 2 ms poll, bounded by `drainTimeout` — and
 *    locates again); `"elsewhere"` when a cancel could hit another statement (statements written behind it, one
 *    issued outside the adapter running instead, a closed socket): no cancel, the kit waits for it to end, bounded,
 *    and retires the connection if it does not. `locate` may return an Effect that holds the driver's turn in the
 *    given `Scope` (e.g. takes the permit new statements need): the scope closes when the interruption is over.
 * 4. `retire(connection)`: end a connection that may still run the statement or receive a late cancel, so it is
 *    never reused (destroy the socket, evict it from the pool); `isRetired` tells whether the kit did.
 * 5. `isCanceled(exit)`: whether an outcome is the driver's SQLSTATE 57014.
 *
 * What a port must not do: allocate or read anything per statement on the hot path (the kit calls `target` once
 * per connection and everything else only after an interruption).
 *
 * Property tests of random interleavings and interrupts share one generator, `Arbitraries.interruptScenario` in
 * `@pqcancel/test-utils`, for every adapter.
 *
 * @example
 * ```ts
 * import * as Effect from "effect/Effect"
 * import * as Exit from "effect/Exit"
 * import * as Result from "effect/Result"
 * import { AdapterKit } from "@pqcancel/core"
 * import type { CancelConnection } from "@pqcancel/core"
 *
 * // a driver whose connection runs one callback query at a time
 * interface Conn {
 *   readonly session: CancelConnection.SessionInfo
 *   running: object | undefined
 *   send(sql: string, done: (error: Error | undefined, rows: unknown) => void): object
 *   destroy(): void
 * }
 *
 * const retired = new WeakSet<Conn>()
 * const kit = AdapterKit.make<Conn, object, never>({
 *   driver: "example 1.0",
 *   target: (conn) => Result.succeed(conn.session),
 *   locate: (conn, statement) => conn.running === statement ? "running" : "elsewhere",
 *   retire: (conn) => Effect.sync(() => { retired.add(conn); conn.destroy() }),
 *   isRetired: (conn) => retired.has(conn),
 *   isCanceled: (exit) => Exit.isFailure(exit)
 * })
 *
 * declare const conn: Conn
 * const rows = kit.statement<unknown, Error>(conn, { drainTimeout: "2 seconds" }, (done) =>
 *   conn.send("SELECT pg_sleep(10)", (error, rows) => done(error ? Exit.fail(error) : Exit.succeed(rows)))
 * ).pipe(Effect.timeout("1 second")) // interrupted ⇒ cancelled on the server, the interruption waits for its end
 * ```
 *
 * @module
 * @since 0.2.0
 */
import type * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import type * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Result from "effect/Result"
import type * as Scope from "effect/Scope"
import type * as CancelConnection from "./CancelConnection.ts"
import type * as CancelOnInterrupt from "./CancelOnInterrupt.ts"
import type { ConnectionOptions } from "./ConnectionOptions.ts"
import * as Interruption from "./internal/interruption.ts"
import type { Transport } from "./Transport.ts"

/**
 * What an adapter knows of its driver (see the module documentation for how to implement one). `Conn` is the
 * driver's object for one physical connection, `Stmt` whatever identifies one statement to `locate`, `E` the typed
 * error of a connection whose cancel target cannot be read (not connected, the driver's internals changed).
 *
 * @category models
 * @since 0.2.0
 */
export interface DriverPort<Conn extends object, Stmt, E> {
  /** the driver and its version as errors name it, e.g. `pg 8.23.1` */
  readonly driver: string
  /**
   * the connection's cancel target; called once per physical connection (on its first statement), cached. `options`
   * are the cancel's `ConnectionOptions` when the adapter was given them (else the port derives them)
   */
  readonly target: (
    connection: Conn,
    options: ConnectionOptions | undefined
  ) => Result.Result<CancelConnection.SessionInfo, E>
  /** where an interrupted statement is; called only after an interruption (see the module documentation) */
  readonly locate: (
    connection: Conn,
    statement: Stmt
  ) => CancelOnInterrupt.Location | Effect.Effect<CancelOnInterrupt.Location, never, Scope.Scope>
  /** completes when a `"behind"` statement may have become the running one (default: `locate` polled every 2 ms) */
  readonly awaitTurn?: ((connection: Conn, statement: Stmt) => Effect.Effect<void>) | undefined
  /** ends a connection that may still run the statement or receive a late cancel, so it is never reused */
  readonly retire: (connection: Conn, reason: CancelOnInterrupt.UnsafeReason) => Effect.Effect<void>
  /** whether the adapter retired the connection */
  readonly isRetired: (connection: Conn) => boolean
  /** whether a statement's outcome is the driver's SQLSTATE 57014 */
  readonly isCanceled: (exit: Exit.Exit<unknown, unknown>) => boolean
  /**
   * the transport cancels use, when the adapter holds one: provided to an interruption only (providing it around
   * every statement would merge a context per statement); the runners' `Transport` requirement is then met
   */
  readonly transport?: Transport["Service"] | undefined
}

/**
 * A {@link DriverPort} made into statement runners. `RT` is what the runners need for a cancel: the `Transport`,
 * or nothing when the port holds its own ({@link DriverPort.transport}).
 *
 * @category models
 * @since 0.2.0
 */
export interface AdapterKit<Conn extends object, Stmt, E, RT = Transport> {
  readonly port: DriverPort<Conn, Stmt, E>
  /**
   * the connection's cancel target, read the first time and then cached per connection object; with `options`
   * (the cancel's `ConnectionOptions` an adapter was given instead of the derived ones), the target with those
   * options, also cached per (connection, options object)
   */
  readonly target: (
    connection: Conn,
    options?: ConnectionOptions
  ) => Result.Result<CancelConnection.SessionInfo, E>
  /**
   * Runs one statement whose driver reports its end through a callback: `start` writes (or queues) it, calls `done`
   * exactly once with its outcome, and returns what identifies it to `locate`. No fiber is forked: on interruption
   * the kit locates it, cancels it under `policy` and waits for `done` before the interruption completes. Fails with
   * `E` (before `start`) when the connection's target cannot be read. `interrupted()`, asked before calling `done`,
   * tells whether the fiber's interruption has begun (the kit may then still cancel it): while it has not, the
   * statement's end is final and the driver may hand its connection on before `done` (as the driver's own pool does).
   */
  readonly statement: <A, EA>(
    connection: Conn,
    policy: CancelOnInterrupt.Policy | undefined,
    start: (done: (exit: Exit.Exit<A, EA>) => void, interrupted: () => boolean) => Stmt,
    options?: ConnectionOptions
  ) => Effect.Effect<A, EA | E, RT>
  /**
   * Runs one statement that is an Effect (the driver's own): it runs in a child fiber, which `statement` maps to
   * what `locate` knows it by. On interruption the kit locates it, cancels it under `policy`, waits for the fiber to
   * end, and interrupts it only when it was withdrawn or the connection retired.
   */
  readonly effect: <A, EA, R>(
    connection: Conn,
    policy: CancelOnInterrupt.Policy | undefined,
    statement: (fiber: Fiber.Fiber<A, EA>) => Stmt,
    query: Effect.Effect<A, EA, R>
  ) => Effect.Effect<A, EA | E, R | RT>
  /**
   * Runs one statement, as {@link AdapterKit.statement}, of a driver that picks the connection after the statement
   * started (a pool that queues and pipelines statements itself, e.g. postgres.js): `connectionOf` names the
   * connection that holds it — asked only after an interruption, before each `locate` (`locate` then gets what it
   * returned: the port's own object for "on no connection yet", when `Conn` is a union). The connection's target is
   * read when `locate` first says `"running"` (once per connection, cached as for `statement`); a target that
   * cannot be read then makes it `"elsewhere"` (no cancel). `target` must succeed for every object `connectionOf`
   * returns when the statement is retired without having run (it labels the retirement's metric). `interrupted` and
   * `options` as for {@link AdapterKit.statement}.
   */
  readonly pooled: <A, EA>(
    policy: CancelOnInterrupt.Policy | undefined,
    start: (done: (exit: Exit.Exit<A, EA>) => void, interrupted: () => boolean) => Stmt,
    connectionOf: (statement: Stmt) => Conn,
    options?: ConnectionOptions
  ) => Effect.Effect<A, EA, RT>
  /**
   * Runs one statement that is an Effect of the driver's own which, when interrupted, stops waiting for the
   * statement but leaves it running on the session (a pipelined driver abandons its entry): no fiber is forked. After
   * the query's own interruption, `reclaim` (given the fiber) takes back what it left running — how to wait for its
   * end — or says nothing is left (it was never written); the kit then locates and cancels it under `policy`.
   */
  readonly reclaimed: <A, EA, R>(
    connection: Conn,
    policy: CancelOnInterrupt.Policy | undefined,
    query: Effect.Effect<A, EA, R>,
    reclaim: (fiber: Fiber.Fiber<unknown, unknown>) => Reclaimed<Stmt> | undefined
  ) => Effect.Effect<A, EA | E, R | RT>
  /** whether the adapter retired the connection */
  readonly isRetired: (connection: Conn) => boolean
}

/**
 * A statement its driver left running when the query's fiber was interrupted, taken back by the adapter (see
 * {@link AdapterKit.reclaimed}).
 *
 * @category models
 * @since 0.2.0
 */
export interface Reclaimed<Stmt> {
  /** what `locate` knows it by */
  readonly statement: Stmt
  /** its outcome, if it has ended */
  readonly poll: () => Exit.Exit<unknown, unknown> | undefined
  /** waits until it ends */
  readonly await: Effect.Effect<Exit.Exit<unknown, unknown>>
  /** gives it up (the connection is being retired) */
  readonly abandon: Effect.Effect<void>
}

interface Targets {
  /** the target with the options the port derives */
  derived: CancelConnection.SessionInfo | undefined
  /** the target with options an adapter was given, per options object */
  given: WeakMap<ConnectionOptions, CancelConnection.SessionInfo> | undefined
}

/**
 * A statement whose driver reports its end through a callback, from its start until its end: the outcome is kept
 * for the interruption, which may wait for it after the fiber stopped listening.
 */
class Pending<A, EA> {
  exit: Exit.Exit<A, EA> | undefined = undefined
  /** the fiber's interruption has begun: from then on, only the interruption decides when the connection is free */
  interrupted = false
  waiters: Array<(exit: Exit.Exit<A, EA>) => void> | undefined = undefined
  readonly resume: (effect: Effect.Effect<A, EA>) => void
  constructor(resume: (effect: Effect.Effect<A, EA>) => void) {
    this.resume = resume
  }
  readonly isInterrupted = (): boolean => this.interrupted
  readonly done = (exit: Exit.Exit<A, EA>): void => {
    if (this.exit !== undefined) return
    this.exit = exit
    if (this.waiters === undefined) return this.resume(exit)
    for (const waiter of this.waiters) waiter(exit)
  }
  handle(): Interruption.Statement<A, EA> {
    return {
      poll: () => this.exit,
      await: Effect.callback<Exit.Exit<A, EA>>((resume) => {
        if (this.exit !== undefined) return resume(Effect.succeed(this.exit))
        const waiter = (exit: Exit.Exit<A, EA>) => resume(Effect.succeed(exit))
        ;(this.waiters ??= []).push(waiter)
        return Effect.sync(() => {
          const at = this.waiters?.indexOf(waiter) ?? -1
          if (at !== -1) this.waiters!.splice(at, 1)
        })
      }),
      // withdrawn: the driver never calls `done`; retired: the driver fails it. The fiber stops listening either way
      abandon: Effect.void
    }
  }
}

/**
 * The kit for one driver port.
 *
 * @category constructors
 * @since 0.2.0
 */
export function make<Conn extends object, Stmt, E>(
  port: DriverPort<Conn, Stmt, E> & { readonly transport: Transport["Service"] }
): AdapterKit<Conn, Stmt, E, never>
export function make<Conn extends object, Stmt, E>(port: DriverPort<Conn, Stmt, E>): AdapterKit<Conn, Stmt, E>
export function make<Conn extends object, Stmt, E>(port: DriverPort<Conn, Stmt, E>): AdapterKit<Conn, Stmt, E> {
  const targets = new WeakMap<Conn, Targets>()

  const target = (connection: Conn, options?: ConnectionOptions): Result.Result<CancelConnection.SessionInfo, E> => {
    let cached = targets.get(connection)
    if (options === undefined && cached?.derived !== undefined) return Result.succeed(cached.derived)
    const known = options === undefined ? undefined : cached?.given?.get(options)
    if (known !== undefined) return Result.succeed(known)
    // a physical connection's address and key, read once: another options object only changes the options
    const read = options !== undefined && cached?.derived !== undefined
      ? Result.succeed({ ...cached.derived, options })
      : port.target(connection, options)
    if (Result.isFailure(read)) return read
    if (cached === undefined) {
      cached = { derived: undefined, given: undefined }
      targets.set(connection, cached)
    }
    if (options === undefined) cached.derived = read.success
    else (cached.given ??= new WeakMap()).set(options, read.success)
    return read
  }

  // read only after an interruption
  const settings = (
    connection: Conn,
    statement: Stmt,
    session: CancelConnection.SessionInfo,
    policy: CancelOnInterrupt.Policy | undefined
  ): Interruption.Settings => ({
    ...policy,
    session,
    locate: Effect.suspend(() => {
      const where = port.locate(connection, statement)
      return typeof where === "string" ? Effect.succeed(where) : where
    }),
    awaitTurn: port.awaitTurn?.(connection, statement),
    isCanceled: port.isCanceled,
    onUnsafe: (reason) => port.retire(connection, reason),
    transport: port.transport
  })

  const statement = <A, EA>(
    connection: Conn,
    policy: CancelOnInterrupt.Policy | undefined,
    start: (done: (exit: Exit.Exit<A, EA>) => void, interrupted: () => boolean) => Stmt,
    options?: ConnectionOptions
  ): Effect.Effect<A, EA | E, Transport> =>
    Effect.callback<A, EA | E, Transport>((resume) => {
      const session = target(connection, options)
      if (Result.isFailure(session)) return resume(Effect.fail(session.failure))
      const pending = new Pending<A, EA>(resume)
      const stmt = start(pending.done, pending.isInterrupted)
      // the services the statement was run with (its Transport): the interruption runs after the fiber left them
      const context = Fiber.getCurrent()!.context as Context.Context<Transport>
      return Effect.suspend(() => {
        pending.interrupted = true
        return pending.exit !== undefined
          ? Effect.void
          : Effect.provideContext(
            Interruption.afterInterrupt(pending.handle(), settings(connection, stmt, session.success, policy)),
            context
          )
      })
    })

  const effect = <A, EA, R>(
    connection: Conn,
    policy: CancelOnInterrupt.Policy | undefined,
    toStatement: (fiber: Fiber.Fiber<A, EA>) => Stmt,
    query: Effect.Effect<A, EA, R>
  ): Effect.Effect<A, EA | E, R | Transport> =>
    Effect.suspend((): Effect.Effect<A, EA | E, R | Transport> => {
      const session = target(connection)
      if (Result.isFailure(session)) return Effect.fail(session.failure)
      return Interruption.forked(query, (fiber) => settings(connection, toStatement(fiber), session.success, policy))
    })

  const pooled = <A, EA>(
    policy: CancelOnInterrupt.Policy | undefined,
    start: (done: (exit: Exit.Exit<A, EA>) => void, interrupted: () => boolean) => Stmt,
    connectionOf: (statement: Stmt) => Conn,
    options?: ConnectionOptions
  ): Effect.Effect<A, EA, Transport> =>
    Effect.callback<A, EA, Transport>((resume) => {
      const pending = new Pending<A, EA>(resume)
      const stmt = start(pending.done, pending.isInterrupted)
      const context = Fiber.getCurrent()!.context as Context.Context<Transport>
      return Effect.suspend(() => {
        pending.interrupted = true
        if (pending.exit !== undefined) return Effect.void
        // the connection that runs it, once located "running" (its target read then)
        let running: { readonly connection: Conn; readonly session: CancelConnection.SessionInfo } | undefined
        const locate = Effect.suspend(() => {
          const connection = connectionOf(stmt)
          const where = port.locate(connection, stmt)
          return Effect.map(typeof where === "string" ? Effect.succeed(where) : where, (where) => {
            if (where !== "running") return where
            const session = target(connection, options)
            if (Result.isFailure(session)) return "elsewhere" as const
            running = { connection, session: session.success }
            return where
          })
        })
        // what a retirement is counted under when it was never located "running" (the port's target of whatever
        // holds it: a port makes `target` succeed for every object `connectionOf` returns)
        const session = (): CancelConnection.SessionInfo => {
          if (running !== undefined) return running.session
          const read = target(connectionOf(stmt), options)
          if (Result.isFailure(read)) throw new Error(`${port.driver}: no cancel target for a retired statement`)
          return read.success
        }
        const settings: Interruption.Settings = {
          ...policy,
          session,
          locate,
          awaitTurn: port.awaitTurn === undefined
            ? undefined
            : Effect.suspend(() => port.awaitTurn!(connectionOf(stmt), stmt)),
          isCanceled: port.isCanceled,
          onUnsafe: (reason) => port.retire(running?.connection ?? connectionOf(stmt), reason),
          transport: port.transport
        }
        return Effect.provideContext(Interruption.afterInterrupt(pending.handle(), settings), context)
      })
    })

  const reclaimed = <A, EA, R>(
    connection: Conn,
    policy: CancelOnInterrupt.Policy | undefined,
    query: Effect.Effect<A, EA, R>,
    reclaim: (fiber: Fiber.Fiber<unknown, unknown>) => Reclaimed<Stmt> | undefined
  ): Effect.Effect<A, EA | E, R | Transport> =>
    Effect.suspend((): Effect.Effect<A, EA | E, R | Transport> => {
      const session = target(connection)
      if (Result.isFailure(session)) return Effect.fail(session.failure)
      return Effect.onInterrupt(query, () =>
        Effect.withFiber((fiber) => {
          const left = reclaim(fiber)
          return left === undefined
            ? Effect.void
            : Interruption.afterInterrupt(left, settings(connection, left.statement, session.success, policy))
        }))
    })

  return { port, target, statement, effect, pooled, reclaimed, isRetired: port.isRetired }
}
