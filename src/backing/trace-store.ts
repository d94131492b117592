/**
 * A BackingStore that records the reads made through it and passes every operation on: one
 * line `R <offset> <length>` (bytes, decimal) per read, in the order they arrive, appended to a
 * file (volume option traceReads). The daemon puts it outermost, so the trace is what the guest
 * asked for (e.g. a boot, replayed by bench/boot-storm.ts). Lines go through a buffered write
 * stream; close() ends it before closing the inner store.
 */
import * as fs from 'node:fs';
import { iovLength } from '../util/iov';
import type { BackingStore } from './backing-store';

export class TraceStore implements BackingStore {
  readonly kind: string;
  readonly size: number;
  readonly readOnly: boolean;
  readonly location: string;
  readonly identity: string;
  readonly changesVisible: boolean;
  readonly features: BackingStore['features'];
  private readonly out: fs.WriteStream;

  constructor(
    private readonly inner: BackingStore,
    file: string,
  ) {
    this.kind = inner.kind;
    this.size = inner.size;
    this.readOnly = inner.readOnly;
    this.location = inner.location;
    this.identity = inner.identity;
    this.changesVisible = inner.changesVisible;
    this.features = inner.features;
    this.out = fs.createWriteStream(file, { flags: 'a', mode: 0o600 });
  }

  currentIdentity(): Promise<string> {
    return this.inner.currentIdentity();
  }

  read(offset: number, bufs: readonly Uint8Array[]): Promise<void> {
    this.out.write(`R ${offset} ${iovLength(bufs)}\n`);
    return this.inner.read(offset, bufs);
  }

  write(offset: number, bufs: readonly Uint8Array[]): Promise<void> {
    return this.inner.write(offset, bufs);
  }

  flush(): Promise<void> {
    return this.inner.flush();
  }

  discard(offset: number, length: number): Promise<void> {
    return this.inner.discard(offset, length);
  }

  writeZeroes(offset: number, length: number, unmap: boolean): Promise<void> {
    return this.inner.writeZeroes(offset, length, unmap);
  }

  async close(): Promise<void> {
    await new Promise<void>((resolve) => this.out.end(resolve));
    await this.inner.close();
  }
}
