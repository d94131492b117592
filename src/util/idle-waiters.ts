/**
 * "Wait for in-flight, then close", written once: the owner counts its operations in flight,
 * calls `wait()` (only while the count is above zero) to get a promise, and `wake()` when the
 * count reaches zero (or when it gives up, e.g. a dead ring). Every waiter queued so far
 * resolves, in order; a wake with no waiter does nothing. Resolving never throws.
 */
export class IdleWaiters {
  private waiters: (() => void)[] = [];

  /** A promise that resolves at the next wake(). */
  wait(): Promise<void> {
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  /** Resolves every waiting promise. */
  wake(): void {
    if (this.waiters.length === 0) return;
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }
}
