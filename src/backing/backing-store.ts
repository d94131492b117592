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
   * Stable identity of the data behind the store, for cache metadata: a restart with a
   * different identity must not reuse cached blocks (file: device, inode, size; nbd: uri, size).
   */
  readonly identity: string;
  readonly features: {
    flush: boolean;
    discard: boolean;
    writeZeroes: boolean;
  };
  read(offset: number, bufs: readonly Uint8Array[]): Promise<void>;
  write(offset: number, bufs: readonly Uint8Array[]): Promise<void>;
  flush(): Promise<void>;
  discard(offset: number, length: number): Promise<void>;
  /** unmap: the store may deallocate (punch a hole) as long as the range reads as zeros. */
  writeZeroes(offset: number, length: number, unmap: boolean): Promise<void>;
  close(): Promise<void>;
}
