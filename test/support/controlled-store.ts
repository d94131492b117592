/**
 * A BackingStore in memory whose operations complete when the test says (held-io.ts). Without
 * a controller (`io === null`) every operation takes effect at once and settles one microtask
 * later. With one, each read captures its bytes at the effect step the test chooses, so a read
 * issued before a write and captured before the write applied returns the OLD data even if it
 * completes after the write: the race a real slow store has and a copy-on-completion store
 * hides.
 */
import type { BackingStore } from '../../src/backing/backing-store';
import { gatherIov, iovLength, scatterIov } from '../../src/util/iov';
import type { HeldIo } from './held-io';

export class ControlledStore implements BackingStore {
  readonly kind = 'controlled';
  readonly readOnly = false;
  readonly features = { flush: true, discard: true, writeZeroes: true };
  readonly location = 'controlled';
  /** Like a file: every change by anyone else shows in the identity (none happen here). */
  readonly changesVisible = true;
  readonly data: Uint8Array;
  io: HeldIo | null = null;
  reads = 0;

  constructor(
    readonly size: number,
    readonly identity = 'controlled-1',
  ) {
    this.data = new Uint8Array(size);
  }

  private op(label: string, kind: 'read' | 'write', offset: number, length: number, effect: () => void): Promise<void> {
    if (this.io === null) {
      effect();
      return Promise.resolve();
    }
    return this.io.hold(`backing ${label} [${offset}, ${offset + length})`, kind, offset, length, effect);
  }

  currentIdentity(): Promise<string> {
    return Promise.resolve(this.identity);
  }

  read(offset: number, bufs: readonly Uint8Array[]): Promise<void> {
    this.reads++;
    return this.op('read', 'read', offset, iovLength(bufs), () => scatterIov(this.data, offset, bufs));
  }

  write(offset: number, bufs: readonly Uint8Array[]): Promise<void> {
    return this.op('write', 'write', offset, iovLength(bufs), () => gatherIov(bufs, this.data, offset));
  }

  discard(offset: number, length: number): Promise<void> {
    return this.op('discard', 'write', offset, length, () => this.data.fill(0, offset, offset + length));
  }

  writeZeroes(offset: number, length: number): Promise<void> {
    return this.op('write-zeroes', 'write', offset, length, () => this.data.fill(0, offset, offset + length));
  }

  async flush(): Promise<void> {}

  async close(): Promise<void> {}
}
