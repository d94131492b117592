/**
 * BufferPool: a lease's buffer goes back to the pool only when its last user released it, in a
 * later check phase; misuse throws; the pool is bounded.
 */
import { strict as assert } from 'node:assert';
import { BufferPool } from '../../src/util/buffer-pool';

const nextCheck = (): Promise<void> => new Promise((r) => setImmediate(r));

describe('buffer pool', () => {
  it('reuses a buffer once every user released it, not before a later check phase', async () => {
    const pool = new BufferPool(1 << 20, 65536);
    const a = pool.take(8192);
    assert.equal(a.buf.byteLength, 8192);
    a.hold();
    a.release();
    await nextCheck();
    assert.equal(pool.pooledBytes, 0, 'one user left');
    assert.notEqual(pool.take(8192).buf, a.buf);
    a.release();
    assert.equal(pool.pooledBytes, 0, 'not in the same turn');
    await nextCheck();
    assert.equal(pool.pooledBytes, 8192);
    assert.equal(pool.take(4096).buf.byteLength, 4096, 'exact lengths only');
    assert.equal(pool.take(8192).buf, a.buf);
    assert.equal(pool.pooledBytes, 0);
  });

  it('throws on a release after the last one and on a hold after it', () => {
    const pool = new BufferPool(1 << 20, 65536);
    const a = pool.take(4096);
    a.release();
    assert.throws(() => a.release(), /released twice/);
    assert.throws(() => a.hold(), /after its release/);
  });

  it('keeps at most maxBytes of free buffers and none longer than maxLength', async () => {
    const pool = new BufferPool(3 * 4096, 8192);
    const leases = [pool.take(4096), pool.take(4096), pool.take(8192), pool.take(16384)];
    for (const l of leases) l.release();
    await nextCheck();
    assert.equal(pool.pooledBytes, 2 * 4096, 'the 8 KiB one did not fit, the 16 KiB one is too long');
    assert.notEqual(pool.take(16384).buf, leases[3].buf);
  });
});
