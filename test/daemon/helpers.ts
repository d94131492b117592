/** Test helpers for the in-process daemon: self-verifying 4 KiB blocks through our front end. */
import { strict as assert } from 'node:assert';
import type { VhostUserFrontend } from '../../src/frontend/vhost-user-frontend';
import { VIRTIO_BLK_S_OK } from '../../src/virtio-blk/spec';
import { STAMP_BLOCK, stamp } from '../support/stamps';

export const BLOCK = STAMP_BLOCK;
export { stamp };

export async function writeBlocks(fe: VhostUserFrontend, vol: string, blocks: number[], gen: number): Promise<void> {
  const q = fe.ring(0);
  const rs = await Promise.all(blocks.map((blk) => q.write(blk * 8, stamp(vol, blk, gen))));
  for (const r of rs) assert.equal(r.status, VIRTIO_BLK_S_OK);
}

/** Reads 4 KiB blocks through the front end (the second queue when there is one). */
export async function readBlocks(fe: VhostUserFrontend, blocks: number[]): Promise<Buffer[]> {
  const q = fe.ring((fe.config?.numQueues ?? 1) > 1 ? 1 : 0);
  const rs = await Promise.all(blocks.map((blk) => q.read(blk * 8, BLOCK)));
  return rs.map((r) => {
    assert.equal(r.status, VIRTIO_BLK_S_OK);
    return Buffer.from(r.data as Uint8Array);
  });
}

export async function checkBlocks(fe: VhostUserFrontend, vol: string, blocks: number[], gen: number): Promise<void> {
  const got = await readBlocks(fe, blocks);
  got.forEach((b, i) => {
    const blk = blocks[i] as number;
    assert.ok(b.equals(stamp(vol, blk, gen)), `${vol} block ${blk} holds generation ${gen}`);
  });
}

export function range(n: number, from = 0): number[] {
  return Array.from({ length: n }, (_, i) => from + i);
}
