import * as Effect from "effect/Effect"

/**
 * Waits until `done()` holds, re-checked whenever one of `waiters` is called (a proxy calls them on every close),
 * bounded by `timeoutMs` (a timer, so it also ends under a test clock): true when it held, false on the timeout.
 */
export const waitUntilSettled = (
  done: () => boolean,
  waiters: Set<() => void>,
  timeoutMs: number
): Effect.Effect<boolean> =>
  Effect.callback<boolean>((resume) => {
    if (done()) return resume(Effect.succeed(true))
    const waiter = () => {
      if (!done()) return
      cleanup()
      resume(Effect.succeed(true))
    }
    const timer = setTimeout(() => {
      cleanup()
      resume(Effect.succeed(false))
    }, timeoutMs)
    const cleanup = () => {
      clearTimeout(timer)
      waiters.delete(waiter)
    }
    waiters.add(waiter)
    return Effect.sync(cleanup)
  })
