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
