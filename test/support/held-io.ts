/**
 * Held I/O: operations of a controllable store or device that happen exactly when a test says.
 *
 * Every operation issued while a `HeldIo` controls its owner becomes a `Held` with two steps
 * the test takes separately:
 *   - `effect()`: the moment the data moves. A read captures the bytes it returns NOW (a write
 *     applied later is not seen, even though the read has not completed); a write applies its
 *     bytes NOW (readers see them before the writer is told).
 *   - `complete()`: the caller's promise settles (after effect()).
 * `pending` lists the held operations in issue order; `issued` is notified of each new one.
 * `stepRandom` and `pumpHeld` drive them in a drawn order (the randomized model runs).
 */

export interface Held {
  /** e.g. `backing read [0, 4096)`, `device write [4096, 24576)`. */
  readonly label: string;
  readonly kind: 'read' | 'write';
  readonly offset: number;
  readonly length: number;
  /** True once effect() ran. */
  done: boolean;
  effect(): void;
  complete(): void;
}

export class HeldIo {
  readonly pending: Held[] = [];
  /** Called synchronously when an operation is held. */
  issued: ((h: Held) => void) | null = null;

  /** Registers an operation; resolves when the test completes it. */
  hold(label: string, kind: Held['kind'], offset: number, length: number, effect: () => void): Promise<void> {
    return new Promise<void>((resolve) => {
      const h: Held = {
        label,
        kind,
        offset,
        length,
        done: false,
        effect: () => {
          if (h.done) throw new Error(`${label}: effect twice`);
          h.done = true;
          effect();
        },
        complete: () => {
          if (!h.done) h.effect();
          const i = this.pending.indexOf(h);
          if (i < 0) throw new Error(`${label}: completed twice`);
          this.pending.splice(i, 1);
          resolve();
        },
      };
      this.pending.push(h);
      this.issued?.(h);
    });
  }

  /**
   * Takes one drawn held operation's next step (`draw` picks the operation, then effect or
   * complete); false when none is held.
   */
  stepRandom(draw: () => number): boolean {
    const p = this.pending;
    if (p.length === 0) return false;
    const h = p[Math.floor(draw() * p.length)] as Held;
    if (!h.done && draw() < 0.5) h.effect();
    else h.complete();
    return true;
  }

  /** Effects and completes everything held, in issue order, until nothing is left. */
  async drain(): Promise<void> {
    for (;;) {
      await settle();
      const h = this.pending[0];
      if (h === undefined) return;
      h.complete();
    }
  }
}

/** Waits until every microtask chain has run (in-memory stores make no other progress). */
export async function settle(): Promise<void> {
  for (let i = 0; i < 3; i++) await new Promise<void>((r) => setImmediate(r));
}

/** The timers a held run steps with its I/O (virtual-clock.ts). */
export interface SteppedClock {
  /** Fires the timers due now. */
  step(): void;
  /** Advances to the next timer and fires it; false when none is set. */
  next(): boolean;
}

/**
 * Drives `io` (drawn steps) and `clock` until `until` settles; false when it cannot any more:
 * nothing held, no timer set and `frozen()` (a device stopped by a crash). While nothing is held
 * and no timer is set the run waits on real I/O (a metadata file) until `until` settles or an
 * operation is held.
 */
export async function pumpHeld(io: HeldIo, clock: SteppedClock, draw: () => number, frozen: () => boolean, until: Promise<unknown>): Promise<boolean> {
  let done = false;
  const over = (): void => void (done = true);
  void until.then(over, over);
  for (;;) {
    await settle();
    clock.step();
    if (done) return true;
    if (io.stepRandom(draw)) continue;
    if (frozen()) return false;
    if (clock.next()) continue;
    await Promise.race([until.then(over, over), new Promise<void>((r) => (io.issued = () => r()))]);
    io.issued = null;
  }
}
