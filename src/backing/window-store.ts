/**
 * A window of a backing store: the bytes [offset, offset + size) of another store, served as a
 * store of their own (a partition of one large image or device, as qemu's raw driver offers with
 * offset=/size=). Requests are shifted by `offset`; callers already checked them against `size`.
 *
 * Contract: `location` names the underlying storage and the window, so two windows of one store
 * are one location only when their ranges overlap (`overlaps`); `identity` adds the window to the
 * inner store's identity, so cached blocks never move between windows.
 */
import { type BackingEvents, type BackingStore, identityWithin } from './backing-store';

export class WindowStore implements BackingStore {
  readonly kind: string;
  readonly readOnly: boolean;
  readonly location: string;
  readonly identity: string;
  readonly changesVisible: boolean;
  readonly features: BackingStore['features'];

  constructor(
    readonly inner: BackingStore,
    readonly offset: number,
    readonly size: number,
  ) {
    this.kind = inner.kind;
    this.readOnly = inner.readOnly;
    this.location = inner.location;
    this.identity = identityWithin(inner.identity, `@${offset}+${size}`);
    this.changesVisible = inner.changesVisible;
    this.features = inner.features;
  }

  async currentIdentity(): Promise<string> {
    return identityWithin(await this.inner.currentIdentity(), `@${this.offset}+${this.size}`);
  }

  watch(events: BackingEvents): void {
    this.inner.watch?.(events);
  }

  read(offset: number, bufs: readonly Uint8Array[]): Promise<void> {
    return this.inner.read(this.offset + offset, bufs);
  }

  write(offset: number, bufs: readonly Uint8Array[]): Promise<void> {
    return this.inner.write(this.offset + offset, bufs);
  }

  flush(): Promise<void> {
    return this.inner.flush();
  }

  discard(offset: number, length: number): Promise<void> {
    return this.inner.discard(this.offset + offset, length);
  }

  writeZeroes(offset: number, length: number, unmap: boolean): Promise<void> {
    return this.inner.writeZeroes(this.offset + offset, length, unmap);
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}
