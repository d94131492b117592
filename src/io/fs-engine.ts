/**
 * IoEngine on node:fs (the libuv threadpool): the portable fallback when io_uring is not
 * available. Every call costs a cross-thread hand-off; the io_uring engine avoids it.
 */
import * as fs from 'node:fs';
import { native } from '../native/binding';
import { VhostError } from '../native/errors';
import { sliceIov } from '../util/iov';
import { type IoEngine, ioError, readvCheckedOf, readvThenOf, type SyncRegion, syncRegionOf, writeAllSync } from './io-engine';

/** The error of an exact read that reached end of file at `pos`. */
export function endOfFile(fd: number, pos: number): VhostError {
  return new VhostError(`readv fd ${fd}: end of file at byte ${pos}`, 'EIO');
}

function readvAsync(fd: number, bufs: Uint8Array[], pos: number): Promise<number> {
  return new Promise((resolve, reject) => {
    fs.readv(fd, bufs, pos, (err, n) => (err ? reject(err) : resolve(n)));
  });
}

function writevAsync(fd: number, bufs: Uint8Array[], pos: number): Promise<number> {
  return new Promise((resolve, reject) => {
    fs.writev(fd, bufs, pos, (err, n) => (err ? reject(err) : resolve(n)));
  });
}

export class FsEngine implements IoEngine {
  readonly kind = 'threadpool' as const;

  async readv(fd: number, bufs: readonly Uint8Array[], offset: number, exact = false): Promise<void> {
    let rest = sliceIov(bufs, 0);
    let pos = offset;
    while (rest.length > 0) {
      let n: number;
      try {
        n = await readvAsync(fd, rest, pos);
      } catch (err) {
        throw ioError(err, 'readv');
      }
      if (n === 0) {
        if (exact) throw endOfFile(fd, pos);
        for (const b of rest) b.fill(0);
        return;
      }
      pos += n;
      rest = sliceIov(rest, n);
    }
  }

  readvThen(fd: number, bufs: readonly Uint8Array[], offset: number, done: (err: Error | null) => void): void {
    readvThenOf(this, fd, bufs, offset, done);
  }

  readvChecked(fd: number, bufs: readonly Uint8Array[], offset: number, blockSize: number, crcs: Uint32Array, at: number, done: (err: Error | null, ok: boolean) => void): void {
    readvCheckedOf(this, fd, bufs, offset, blockSize, crcs, at, done);
  }

  async writev(fd: number, bufs: readonly Uint8Array[], offset: number): Promise<void> {
    let rest = sliceIov(bufs, 0);
    let pos = offset;
    while (rest.length > 0) {
      let n: number;
      try {
        n = await writevAsync(fd, rest, pos);
      } catch (err) {
        throw ioError(err, 'writev');
      }
      if (n === 0) throw new VhostError('writev: no progress', 'EIO');
      pos += n;
      rest = sliceIov(rest, n);
    }
  }

  writeSync(fd: number, bytes: Uint8Array, offset: number): void {
    writeAllSync(fd, bytes, offset);
  }

  syncRegion(fd: number, offset: number, length: number): SyncRegion {
    return syncRegionOf(this, fd, offset, length);
  }

  fdatasync(fd: number): Promise<void> {
    return new Promise((resolve, reject) => {
      fs.fdatasync(fd, (err) => (err ? reject(ioError(err, 'fdatasync')) : resolve()));
    });
  }

  /** node:fs has no sync_file_range: the addon runs it on the same threadpool (async: a bad argument rejects). */
  async startWriteout(fd: number, offset: number, length: number): Promise<void> {
    return native.startWriteout(fd, offset, length);
  }

  /** node:fs has no fallocate: the addon runs it on the same threadpool. */
  fallocate(fd: number, mode: number, offset: number, length: number): Promise<void> {
    return native.fallocate(fd, mode, offset, length);
  }

  blockRange(fd: number, op: 'discard' | 'zeroout', offset: number, length: number): Promise<void> {
    return native.blockRange(fd, op, offset, length);
  }

  close(): void {}
}
