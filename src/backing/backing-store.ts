/**
 * What a volume reads and writes: a raw file or block device, an NBD export, or a cached
 * store wrapping one of those. All offsets and lengths are bytes; callers have already
 * checked them against `size` and the logical block size.
 *
 * Contract: a rejected promise carries a VhostError (code = errno name or a store-specific
 * code); the request it belongs to fails with VIRTIO_BLK_S_IOERR, nothing else does. Buffers
 * are guest memory views or cache buffers; the store must not keep them after settling.
 */
export interface BackingStore {
  /** 'file', 'block', 'nbd', 'cached' ... for logs. */
  readonly kind: string;
  /** Size in bytes. */
  readonly size: number;
  readonly readOnly: boolean;
  /**
   * Names the storage itself: two open stores with the same location read and write the same
   * data (file: device + inode; block device: device number; NBD: server address + export).
   */
  readonly location: string;
  /**
   * Identity of the data when the store was opened, compared by the cache with the one
   * recorded at the last clean close (currentIdentity()): any difference drops the volume's
   * cached blocks. Written `OBJECT#STAMP` (identityObject()): OBJECT names which file or image
   * this is (files: location, inode generation, birth time; block devices, NBD exports and
   * RBD images: their location), STAMP its last change (files: ctime, mtime and size; others:
   * size). Write-back blocks not yet written back survive a changed stamp (our own destaging
   * changes it) but never a changed object (cache.ts registerVolume).
   */
  readonly identity: string;
  /**
   * True when `identity` changes with every change made to the data by anyone else (files);
   * false when such changes are invisible (block devices, NBD exports): a warm start then
   * verifies a sample of the cached blocks unless the operator declared exclusive ownership.
   */
  readonly changesVisible: boolean;
  /**
   * The identity now, for the cache to record at a clean close: called after the final flush.
   * It also waits, when the data changed very recently, until a later change made by anyone
   * else would show in it (file timestamps have a coarse granularity).
   */
  currentIdentity(): Promise<string>;
  /**
   * Optional, for stores whose data can change behind our back while open (NBD): `fenced`
   * reports that the store no longer serves this data (every request fails), `writesMayBeLost`
   * that writes acknowledged since the last successful flush may have been lost (the server's
   * connection dropped). Called synchronously when the store notices.
   */
  watch?(events: BackingEvents): void;
  /**
   * Optional, for stores that read an immutable parent where they have no data of their own
   * (an RBD clone): the cache keys those blocks by the parent, shared by every clone of it.
   */
  readonly sharing?: SharedBlocks;
  readonly features: {
    flush: boolean;
    discard: boolean;
    writeZeroes: boolean;
  };
  read(offset: number, bufs: readonly Uint8Array[]): Promise<void>;
  /**
   * Optional: read() reporting to a callback (null or the VhostError) instead of a promise,
   * called exactly once (maybe from this call), never throwing out of it; done must not throw.
   * The dispatcher uses it when present: a cache hit then settles without a promise.
   */
  readThen?(offset: number, bufs: readonly Uint8Array[], done: (err: Error | null) => void): void;
  write(offset: number, bufs: readonly Uint8Array[]): Promise<void>;
  flush(): Promise<void>;
  discard(offset: number, length: number): Promise<void>;
  /** unmap: the store may deallocate (punch a hole) as long as the range reads as zeros. */
  writeZeroes(offset: number, length: number, unmap: boolean): Promise<void>;
  close(): Promise<void>;
}

export interface BackingEvents {
  fenced(): void;
  writesMayBeLost(): void;
}

/**
 * Where a store reads its parent: bytes [0, sharedBytes) of a unit the store does not own read
 * the parent's bytes at the same offset, and the parent's data never changes. Any write-like
 * operation makes the units it touches owned (RBD copies up whole objects).
 */
export interface SharedBlocks {
  /** Names the parent's data for good (RBD: cluster fsid, pool id, namespace, image id, snapshot id). */
  readonly parent: string;
  readonly sharedBytes: number;
  /** Bytes per unit of ownership (RBD: the object size). */
  readonly unitBytes: number;
  /** One byte per unit covering [0, sharedBytes) as the store found it at open: 1 = owned. */
  readonly owned: Uint8Array;
}

/** Separates an identity's object from its change stamp (the stamp never contains it). */
const IDENTITY_STAMP = '#';

/** An identity made of the object it names and that object's change stamp (see BackingStore.identity). */
export function makeIdentity(object: string, stamp: string): string {
  return `${object}${IDENTITY_STAMP}${stamp}`;
}

/** [object, stamp] of an identity (stamp null when it has none). */
function splitIdentity(identity: string): [string, string | null] {
  const at = identity.lastIndexOf(IDENTITY_STAMP);
  return at < 0 ? [identity, null] : [identity.slice(0, at), identity.slice(at + 1)];
}

/** The object part of an identity: which file or image, whatever its content. */
export function identityObject(identity: string): string {
  return splitIdentity(identity)[0];
}

/** The same identity with `suffix` added to its object part (e.g. a window of the store). */
export function identityWithin(identity: string, suffix: string): string {
  const [object, stamp] = splitIdentity(identity);
  return stamp === null ? object + suffix : makeIdentity(object + suffix, stamp);
}
