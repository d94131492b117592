/**
 * RbdStore against a real single-node Ceph cluster (test/support/ceph-cluster.ts): every request
 * type with self-verifying data, many in flight, errors (missing pool, image, snapshot,
 * keyring, unreachable monitors), snapshots and identity, the resize fence, and an OSD stopped
 * (SIGSTOP) under I/O: requests wait, time out after backingTimeoutMs, and the store works
 * again once the OSD is back.
 */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { RbdStore } from '../../src/backing/rbd/rbd-store';
import { native } from '../../src/native/binding';
import type { VhostError } from '../../src/native/errors';
import { CephCluster } from '../support/ceph-cluster';
import { BLOCK } from './nbd-servers';
import { freePort } from '../support/net';
import { splitAt } from '../support/scatter';
import { stamped, verifyStamped } from '../support/stamps';

const MiB = 1 << 20;

/** Resolves once cond() holds (checked every 20 ms), or fails after timeoutMs. */
async function until(what: string, cond: () => boolean | Promise<boolean>, timeoutMs = 30_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('RbdStore on a single-node Ceph cluster @host', function () {
  this.timeout(120_000);
  let ceph: CephCluster;
  const stores: RbdStore[] = [];
  let n = 0;

  before(async () => {
    ceph = await CephCluster.start();
  });
  after(async () => {
    for (const s of stores) await s.close().catch(() => undefined);
    await ceph?.stop();
  });

  async function image(bytes: number, opts: { backingTimeoutMs?: number; readOnly?: boolean } = {}): Promise<{ name: string; store: RbdStore }> {
    const name = `img${n++}`;
    await ceph.createImage(name, bytes);
    const store = await RbdStore.open(`rbd:${ceph.pool}/${name}:conf=${ceph.conf}`, opts);
    stores.push(store);
    return { name, store };
  }

  it("opens images with librbd's own cache off, whatever the configuration says", async () => {
    const conf = path.join(path.dirname(ceph.conf), 'rbd-cache-on.conf');
    fs.writeFileSync(conf, fs.readFileSync(ceph.conf, 'utf8').replace('[global]', '[global]\nrbd_cache = true'));
    const name = `img${n++}`;
    await ceph.createImage(name, MiB);
    const store = await RbdStore.open(`rbd:${ceph.pool}/${name}:conf=${conf}`);
    stores.push(store);
    assert.equal(store.info.librbdCache, 'false');
  });

  it('shares one cluster connection between the images of one configuration until the last one closes', async () => {
    const connections = (): number => (native.rbd.connections as () => number)();
    const before = connections();
    // A timeout no other test uses: its own connection key.
    const opts = { backingTimeoutMs: 7_001 };
    await ceph.createImage('shared-a', 1 << 20);
    await ceph.createImage('shared-b', 1 << 20);
    const a = await RbdStore.open(`rbd:${ceph.pool}/shared-a:conf=${ceph.conf}`, opts);
    assert.equal(connections(), before + 1);
    const b = await RbdStore.open(`rbd:${ceph.pool}/shared-b:conf=${ceph.conf}`, opts);
    assert.equal(connections(), before + 1);
    await a.write(0, [Buffer.alloc(4096, 1)]);
    await b.write(0, [Buffer.alloc(4096, 2)]);
    const out = Buffer.alloc(4096);
    await a.read(0, [out]);
    assert.ok(out.every((x) => x === 1));
    await a.close();
    assert.equal(connections(), before + 1);
    await b.read(0, [out]);
    assert.ok(out.every((x) => x === 2));
    await b.close();
    assert.equal(connections(), before);
  });

  it('reads, writes (scatter lists), flushes, discards and writes zeroes', async () => {
    const { name, store } = await image(8 * MiB);
    assert.equal(store.size, 8 * MiB);
    assert.equal(store.kind, 'rbd');
    assert.deepEqual(store.features, { flush: true, discard: true, writeZeroes: true });
    const data = stamped(BLOCK * 3, 64 * BLOCK, 1);
    await store.write(BLOCK * 3, splitAt(data, [512, 4096, 100, 12_000]));
    await store.flush();
    const back = Buffer.alloc(64 * BLOCK);
    await store.read(BLOCK * 3, splitAt(back, [7, 4089, 8192]));
    verifyStamped(back, BLOCK * 3, 1);
    // The data reached the cluster: the rbd tool sees it.
    const file = path.join(ceph.dir, 'export');
    await ceph.rbd('export', `${ceph.pool}/${name}`, file);
    verifyStamped(fs.readFileSync(file).subarray(BLOCK * 3, BLOCK * 67), BLOCK * 3, 1);
    // Write-zeroes (with and without unmap) reads back as zeros, neighbours intact; a discard
    // is advisory (librbd skips partial objects) but one of whole objects deallocates them.
    await store.writeZeroes(BLOCK * 20, BLOCK * 2, true);
    await store.writeZeroes(BLOCK * 30, BLOCK * 3, false);
    await store.discard(BLOCK * 10, BLOCK * 4);
    await store.read(BLOCK * 3, [back]);
    for (const [from, count] of [[20, 2], [30, 3]]) {
      assert.ok(back.subarray((from - 3) * BLOCK, (from - 3 + count) * BLOCK).every((b) => b === 0), `blocks ${from}+${count} are zero`);
    }
    verifyStamped(back.subarray(0, 17 * BLOCK), BLOCK * 3, 1);
    verifyStamped(back.subarray(22 * BLOCK - 3 * BLOCK, 30 * BLOCK - 3 * BLOCK), 22 * BLOCK, 1);
    verifyStamped(back.subarray(33 * BLOCK - 3 * BLOCK), 33 * BLOCK, 1);
    const tail = stamped(4 * MiB, 4 * MiB, 3);
    await store.write(4 * MiB, [tail]);
    await store.discard(4 * MiB, 4 * MiB);
    await store.read(4 * MiB, [tail]);
    assert.ok(tail.every((b) => b === 0), 'a discarded whole object reads as zeros');
    // Unaligned byte ranges are fine for librbd.
    const odd = Buffer.from('hello rbd');
    await store.write(12_345, [odd]);
    const oddBack = Buffer.alloc(odd.length);
    await store.read(12_345, [oddBack]);
    assert.deepEqual(oddBack, odd);
  });

  it('keeps hundreds of requests in flight and every block lands where it belongs', async () => {
    const { store } = await image(16 * MiB);
    const blocks = Array.from({ length: 512 }, (_, i) => (i * 37) % 4096);
    await Promise.all(blocks.map((b) => store.write(b * BLOCK, [stamped(b * BLOCK, BLOCK, 2)])));
    assert.equal(store.pendingInLibrbd, 0);
    const bufs = blocks.map(() => Buffer.alloc(BLOCK));
    await Promise.all(blocks.map((b, i) => store.read(b * BLOCK, [bufs[i] as Buffer])));
    blocks.forEach((b, i) => verifyStamped(bufs[i] as Buffer, b * BLOCK, 2));
  });

  it('rejects out-of-range requests before they reach librbd', async () => {
    const { store } = await image(1 * MiB);
    await assert.rejects(store.read(MiB - BLOCK, [Buffer.alloc(2 * BLOCK)]), (e: VhostError) => e.code === 'EINVAL' && /beyond/.test(e.message));
    await assert.rejects(store.discard(-1, 10), (e: VhostError) => e.code === 'EINVAL');
  });

  it('names what is missing: pool, image, snapshot, configuration, keyring', async () => {
    await ceph.createImage('present', MiB);
    const open = (spec: string): Promise<RbdStore> => RbdStore.open(spec, { backingTimeoutMs: 5000 });
    const c = `conf=${ceph.conf}`;
    await assert.rejects(open(`rbd:nopool/present:${c}`), (e: VhostError) => e.code === 'ENOENT' && /pool 'nopool' does not exist/.test(e.message));
    await assert.rejects(open(`rbd:rbd/absent:${c}`), (e: VhostError) => e.code === 'ENOENT' && /image 'rbd\/absent' does not exist/.test(e.message));
    await assert.rejects(open(`rbd:rbd/present@nosnap:${c}`), (e: VhostError) => e.code === 'ENOENT' && /snapshot 'nosnap' .* does not exist/.test(e.message));
    await assert.rejects(open(`rbd:rbd/present:conf=${ceph.dir}/none.conf`), (e: VhostError) => e.code === 'ENOENT' && /cannot read the Ceph configuration/.test(e.message));
    // A client that must authenticate (cephx) and has no keyring.
    const cephx = path.join(ceph.dir, 'cephx.conf');
    fs.writeFileSync(cephx, fs.readFileSync(ceph.conf, 'utf8').replace(/auth_client_required = none/, 'auth_client_required = cephx') + `keyring = ${ceph.dir}/no.keyring\n`);
    await assert.rejects(open(`rbd:rbd/present:conf=${cephx}:id=vbc`), (e: VhostError) => e.code === 'ENOENT' && /no keyring for client\.vbc/.test(e.message));
  });

  it('releases the eventfd of a failed open: the native image can open again, no fd leaks', async () => {
    await ceph.createImage('retry', MiB);
    const Ctor = native.rbd.RbdImage;
    assert.ok(Ctor);
    const img = new Ctor(() => undefined);
    const fds = (): number => fs.readdirSync('/proc/self/fd').length;
    const opts = { pool: ceph.pool, conf: ceph.conf, readOnly: false, mountTimeoutSec: 5 };
    await assert.rejects(img.open({ ...opts, image: 'absent' }), (e: VhostError) => e.code === 'ENOENT');
    const before = fds();
    for (let i = 0; i < 5; i++) await assert.rejects(img.open({ ...opts, image: 'absent' }), (e: VhostError) => e.code === 'ENOENT');
    assert.equal(fds(), before, 'failed opens leave no file descriptor behind');
    const info = await img.open({ ...opts, image: 'retry' });
    assert.equal(info.size, MiB);
    assert.equal(await img.close(), undefined, 'a clean close');
  });

  it('fails to open within the timeout when no monitor answers', async () => {
    const lonely = path.join(ceph.dir, 'lonely.conf');
    fs.writeFileSync(lonely, fs.readFileSync(ceph.conf, 'utf8').replace(/mon_host = .*/, `mon_host = v2:127.0.0.1:${await freePort()}`));
    const t0 = Date.now();
    // librados' mount timeout and the open's own bound are both 2 s: either may fire first.
    await assert.rejects(
      RbdStore.open(`rbd:rbd/x:conf=${lonely}`, { backingTimeoutMs: 2000 }),
      (e: VhostError) => e.code === 'ETIMEDOUT' && /no monitor answered|opening the image timed out/.test(e.message),
    );
    assert.ok(Date.now() - t0 < 20_000);
  });

  it('fails to open within the timeout while the OSD does not answer, and recovers', async () => {
    await ceph.createImage('stalled', MiB);
    ceph.stopOsd();
    try {
      const t0 = Date.now();
      await assert.rejects(
        RbdStore.open(`rbd:${ceph.pool}/stalled:conf=${ceph.conf}`, { backingTimeoutMs: 1500 }),
        (e: VhostError) => e.code === 'ETIMEDOUT' && /opening the image timed out/.test(e.message),
      );
      assert.ok(Date.now() - t0 < 10_000);
    } finally {
      ceph.resumeOsd();
    }
    const store = await RbdStore.open(`rbd:${ceph.pool}/stalled:conf=${ceph.conf}`);
    stores.push(store);
    await store.write(0, [stamped(0, BLOCK, 1)]);
  });

  it('opens snapshots read-only with their own data and identity', async () => {
    const { name, store } = await image(4 * MiB);
    await store.write(0, [stamped(0, 16 * BLOCK, 1)]);
    await store.flush();
    await ceph.rbd('snap', 'create', `${ceph.pool}/${name}@s1`);
    await store.write(0, [stamped(0, 16 * BLOCK, 2)]);
    const snap = await RbdStore.open(`rbd:${ceph.pool}/${name}@s1:conf=${ceph.conf}`);
    stores.push(snap);
    assert.equal(snap.readOnly, true);
    assert.deepEqual(snap.features, { flush: true, discard: false, writeZeroes: false });
    assert.notEqual(snap.identity, store.identity);
    assert.match(snap.identity, new RegExp(`^rbd:${ceph.fsid}:\\d+:${snap.info.imageId}@\\d+#size=${4 * MiB}$`));
    const buf = Buffer.alloc(16 * BLOCK);
    await snap.read(0, [buf]);
    verifyStamped(buf, 0, 1);
    await store.read(0, [buf]);
    verifyStamped(buf, 0, 2);
    await assert.rejects(snap.write(0, [buf]), (e: VhostError) => e.code === 'EROFS');
    await snap.close();
  });

  it('gives a re-created image with the same name a new identity', async () => {
    const { name, store } = await image(MiB);
    const first = store.identity;
    await store.close();
    await ceph.rbd('rm', `${ceph.pool}/${name}`);
    await ceph.createImage(name, MiB);
    const again = await RbdStore.open(`rbd:${ceph.pool}/${name}:conf=${ceph.conf}`);
    stores.push(again);
    assert.notEqual(again.identity, first);
    assert.equal(again.size, MiB);
  });

  it('fences the store when the image is resized under it', async () => {
    const { name, store } = await image(2 * MiB);
    await store.write(0, [stamped(0, BLOCK, 1)]);
    await ceph.rbd('resize', '--size', '4M', `${ceph.pool}/${name}`);
    const buf = Buffer.alloc(BLOCK);
    // The header update reaches the store asynchronously: wait until requests are refused.
    await until('the fence', async () => {
      try {
        await store.read(0, [buf]);
        return false;
      } catch (e) {
        assert.equal((e as VhostError).code, 'EIO');
        assert.match((e as VhostError).message, /changed size from 2097152 to 4194304/);
        return true;
      }
    });
    await assert.rejects(store.write(0, [buf]), (e: VhostError) => e.code === 'EIO');
  });

  it('carries requests across an OSD outage shorter than the timeout', async () => {
    const { store } = await image(4 * MiB, { backingTimeoutMs: 60_000 });
    await store.write(0, [stamped(0, 32 * BLOCK, 1)]);
    ceph.stopOsd();
    let settled = 0;
    const writes = Array.from({ length: 16 }, (_, b) => store.write(b * BLOCK, [stamped(b * BLOCK, BLOCK, 2)]).finally(() => settled++));
    try {
      await until('16 requests held by librbd', () => store.pendingInLibrbd === 16);
      assert.equal(settled, 0, 'nothing completes while the OSD is stopped');
    } finally {
      ceph.resumeOsd();
    }
    await Promise.all(writes);
    const buf = Buffer.alloc(32 * BLOCK);
    await store.read(0, [buf]);
    verifyStamped(buf.subarray(0, 16 * BLOCK), 0, 2);
    verifyStamped(buf.subarray(16 * BLOCK), 16 * BLOCK, 1);
  });

  it('times requests out while the OSD is stopped, forgets their buffers and recovers', async () => {
    const { store } = await image(4 * MiB, { backingTimeoutMs: 1500 });
    await store.write(0, [stamped(0, 8 * BLOCK, 1)]);
    ceph.stopOsd();
    const readBuf = Buffer.alloc(8 * BLOCK, 0xee);
    try {
      const t0 = Date.now();
      const results = await Promise.allSettled([
        store.read(0, [readBuf]),
        store.write(8 * BLOCK, [stamped(8 * BLOCK, BLOCK, 9)]),
        store.flush(),
      ]);
      const waited = Date.now() - t0;
      results.forEach((r, i) => {
        const what = ['read', 'write', 'flush'][i];
        assert.equal(r.status, 'rejected', `the ${what} completed while the OSD was stopped`);
        assert.equal((r.reason as VhostError).code, 'ETIMEDOUT', what);
      });
      assert.ok(waited >= 1400, `waited ${waited} ms`);
      assert.equal(store.pendingInLibrbd, 3, 'librbd still holds the timed-out requests');
    } finally {
      ceph.resumeOsd();
    }
    // librbd finishes them once the OSD is back; the timed-out read never touches readBuf.
    await until('librbd to finish the abandoned requests', () => store.pendingInLibrbd === 0);
    assert.ok(readBuf.every((b) => b === 0xee), 'a timed-out read does not write into the caller buffer');
    const buf = Buffer.alloc(8 * BLOCK);
    await store.read(0, [buf]);
    verifyStamped(buf, 0, 1);
  });

  it('never lets a timed-out write land over a newer write of the same block', async () => {
    const { store } = await image(MiB, { backingTimeoutMs: 1000 });
    await store.write(0, [stamped(0, 4 * BLOCK, 1)]);
    ceph.stopOsd();
    let newer: Promise<void>;
    try {
      await assert.rejects(store.write(0, [stamped(0, 4 * BLOCK, 2)]), (e: VhostError) => e.code === 'ETIMEDOUT');
      // The guest retries with newer data while librbd still holds the old write.
      newer = store.write(0, [stamped(0, 4 * BLOCK, 3)]);
      await until('both writes held by librbd', () => store.pendingInLibrbd === 2);
    } finally {
      ceph.resumeOsd();
    }
    await newer;
    await until('librbd to finish the abandoned write', () => store.pendingInLibrbd === 0);
    const buf = Buffer.alloc(4 * BLOCK);
    await store.read(0, [buf]);
    verifyStamped(buf, 0, 3);
  });

  it('closes promptly while the cluster holds requests (the image is abandoned)', async () => {
    const { store } = await image(MiB, { backingTimeoutMs: 1000 });
    ceph.stopOsd();
    try {
      await assert.rejects(store.write(0, [stamped(0, BLOCK, 1)]), (e: VhostError) => e.code === 'ETIMEDOUT');
      await store.close();
      await assert.rejects(store.read(0, [Buffer.alloc(BLOCK)]), (e: VhostError) => e.code === 'ESHUTDOWN');
    } finally {
      ceph.resumeOsd();
    }
  });
});
