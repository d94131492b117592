/**
 * O_DIRECT alignment, written once for every store that opens a file or device with O_DIRECT
 * (a backing file with --direct, the cache device): the kernel wants the file offset, the length
 * and every iovec's address and length to be multiples of the alignment (the device's logical
 * block size; for a file, its file system's block size), else the read fails with EINVAL.
 *
 * directAlignment() finds that alignment for an open fd; isDirectAligned() says whether a
 * request can go as it is; readDirectIo() reads any request, through an aligned bounce buffer
 * over the enclosing aligned range (copied out) when it is not aligned. Writes are the caller's
 * business: a partial aligned block needs a read-modify-write under a lock only the caller can
 * take (FileStore), or the caller only ever writes aligned buffers (the cache log).
 */
import * as fs from 'node:fs';
import { native } from '../native/binding';
import { scatterIov } from '../util/iov';
import type { IoEngine } from './io-engine';

/** The O_DIRECT alignment of an open file or block device. */
export function directAlignment(fd: number, st: fs.Stats | fs.BigIntStats = fs.fstatSync(fd)): number {
  if (st.isBlockDevice()) return native.logicalBlockSize(fd);
  // st_blksize (the file system block) is a safe O_DIRECT alignment for files.
  return Math.max(512, Number(st.blksize));
}

export function isDirectAligned(offset: number, len: number, bufs: readonly Uint8Array[], alignment: number): boolean {
  return offset % alignment === 0 && len % alignment === 0 && native.isDirectIoAligned(bufs, alignment);
}

/**
 * Reads `len` bytes (the total length of bufs) at `offset` of an O_DIRECT fd into bufs, aligned
 * or not (see IoEngine.readv for `exact`).
 */
export async function readDirectIo(
  engine: IoEngine,
  fd: number,
  offset: number,
  len: number,
  bufs: readonly Uint8Array[],
  alignment: number,
  exact = false,
): Promise<void> {
  if (isDirectAligned(offset, len, bufs, alignment)) return engine.readv(fd, bufs, offset, exact);
  const start = Math.floor(offset / alignment) * alignment;
  const end = Math.ceil((offset + len) / alignment) * alignment;
  const bounce = native.alignedBuffer(end - start, alignment);
  await engine.readv(fd, [bounce], start, exact);
  scatterIov(bounce, offset - start, bufs);
}
