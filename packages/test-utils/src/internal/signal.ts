/**
 * A minimal change-notification primitive: callbacks from Node event handlers call `notify`, and fibers wait with
 * `waitFor(check)` until `check` yields a value (re-evaluated on every notification).
 *
 * @since 0.1.0
 */
import * as Effect from "effect/Effect"

/** @internal */
export class Signal {
  private readonly listeners = new Set<() => void>()

  notify(): void {
    // a listener removes itself once satisfied: deleting the current element while iterating a Set is safe
    for (const listener of this.listeners) listener()
  }

  waitFor<A>(check: () => A | undefined): Effect.Effect<A> {
    return Effect.callback<A>((resume) => {
      const listener = () => {
        const value = check()
        if (value !== undefined) {
          this.listeners.delete(listener)
          resume(Effect.succeed(value))
        }
      }
      this.listeners.add(listener)
      listener()
      return Effect.sync(() => {
        this.listeners.delete(listener)
      })
    })
  }
}
