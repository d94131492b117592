/**
 * A virtual clock for the seeded randomized suites, so a run's interleaving is a function of
 * its seed: while installed, the global `setTimeout`, `clearTimeout` and `performance.now` are
 * virtual (everything src/cache waits for by wall clock goes through them: the destager's
 * QUIET_MS, ROUND_WAIT_MAX_MS, YIELD_MAX_MS, room() timeouts and retry backoffs, the cache's
 * CLEAN_MARK_DELAY_MS and volume-table retries, CachedStore's IDENTITY_QUIET_MS), so a timer
 * fires only when the test moves virtual time past it. Replacing the globals, rather than
 * handing a timer source to each class, also covers timers src/ adds later without a change
 * here. `setImmediate` and microtasks stay real: the in-memory stores and devices of these
 * suites complete through them, in an order fixed by the program.
 *
 * `turn()` is one loop turn of a run: one setImmediate, then virtual time moves on by an
 * amount drawn from the clock's own random stream (mostly a fraction of a millisecond, at times
 * tens of milliseconds, at times straight to the next timer if it is due within MAX_STALL_MS: a
 * slow or stalled machine), firing
 * the timers due meanwhile in due order (ties: creation order); `step()` is that step alone,
 * for suites that turn the loop themselves. `until(p)` turns until `p` settles. Mocha keeps the real timers (it took them when it loaded), so its timeouts still
 * work; install() and uninstall() bracket one run (uninstall after the run's clean-up: timers
 * still pending are dropped).
 */
import { rng } from '../cache/helpers';

const START_MS = 1000;
const TIMEOUT_MAX = 2 ** 31 - 1;
/**
 * Longest stall step() draws (a jump to the next timer): past the pace timers (at most
 * ROUND_WAIT_MAX_MS, CLEAN_MARK_DELAY_MS), short of the backing-store timeouts (a stall of a
 * minute makes a write fail with ETIMEDOUT, rightly, but says nothing about the model).
 */
const MAX_STALL_MS = 1500;

class VirtualTimer {
  constructor(
    readonly due: number,
    readonly seq: number,
    readonly fn: () => void,
  ) {}
  unref(): this {
    return this;
  }
  ref(): this {
    return this;
  }
  hasRef(): boolean {
    return true;
  }
}

export class VirtualClock {
  private now = START_MS;
  private seq = 0;
  private timers = new Set<VirtualTimer>();
  private readonly draw: () => number;
  private saved: { setTimeout: typeof setTimeout; clearTimeout: typeof clearTimeout; now: () => number } | null = null;
  /** Timers fired so far (a run reports it: it shows the clock drove the run). */
  fired = 0;

  constructor(seed: number) {
    this.draw = rng(seed);
  }

  install(): void {
    if (this.saved !== null) throw new Error('virtual clock installed twice');
    this.saved = { setTimeout: globalThis.setTimeout, clearTimeout: globalThis.clearTimeout, now: performance.now };
    const realClear = globalThis.clearTimeout;
    globalThis.setTimeout = ((fn: (...args: unknown[]) => void, ms?: number, ...args: unknown[]) => {
      // As Node: a delay below 1 ms, above TIMEOUT_MAX or not a number is 1 ms.
      const delay = ms !== undefined && ms >= 1 && ms <= TIMEOUT_MAX ? ms : 1;
      const t = new VirtualTimer(this.now + delay, this.seq++, () => fn(...args));
      this.timers.add(t);
      return t;
    }) as unknown as typeof setTimeout;
    globalThis.clearTimeout = ((t: unknown) => {
      if (t instanceof VirtualTimer) this.timers.delete(t);
      else realClear(t as NodeJS.Timeout);
    }) as typeof clearTimeout;
    performance.now = () => this.now;
  }

  uninstall(): void {
    if (this.saved === null) return;
    globalThis.setTimeout = this.saved.setTimeout;
    globalThis.clearTimeout = this.saved.clearTimeout;
    performance.now = this.saved.now;
    this.saved = null;
    this.timers.clear();
  }

  /** The earliest pending timer (creation order among equal due times). */
  private first(): VirtualTimer | null {
    let best: VirtualTimer | null = null;
    for (const t of this.timers) if (best === null || t.due < best.due || (t.due === best.due && t.seq < best.seq)) best = t;
    return best;
  }

  /** Moves virtual time on by `ms`, firing every timer due by then, in due order. */
  advance(ms: number): void {
    const to = this.now + ms;
    for (;;) {
      const t = this.first();
      if (t === null || t.due > to) break;
      this.timers.delete(t);
      this.now = Math.max(this.now, t.due);
      this.fired++;
      t.fn();
    }
    this.now = to;
  }

  /** Fires the earliest pending timer (and those due with it); false when none is pending. */
  next(): boolean {
    const t = this.first();
    if (t === null) return false;
    this.advance(t.due - this.now);
    return true;
  }

  /** A drawn step of virtual time (see the file comment). */
  step(): void {
    const x = this.draw();
    const t = this.first();
    if (x < 0.85) this.advance(this.draw() * 0.5);
    else if (x < 0.97 || t === null || t.due - this.now > MAX_STALL_MS) this.advance(this.draw() * 20);
    else this.advance(t.due - this.now);
  }

  /** One loop turn of the run, then a drawn step of virtual time. */
  async turn(): Promise<void> {
    await new Promise<void>((r) => setImmediate(r));
    this.step();
  }

  /** Turns until `p` settles; its value (or its rejection). */
  async until<T>(p: Promise<T>): Promise<T> {
    let done = false;
    const watched = p.finally(() => (done = true));
    watched.catch(() => undefined);
    while (!done) await this.turn();
    return watched;
  }
}
