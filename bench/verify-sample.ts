/**
 * Issue 10: cost of the warm-start sample verification of a volume whose changes are invisible
 * (NBD export or block device). Fills a cache with GiB of one NBD volume (nbdkit pattern
 * plugin: every 8 bytes hold their own offset, so no disk behind it), closes it, reopens it
 * warm and times CachedStore.open (slot scan + VERIFY_SAMPLE_BLOCKS reads from the cache device
 * and from the export, compared).
 *
 * Run: node dist/bench/verify-sample.js [--gib 10] [--dir DIR] [--reps 3]
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { NbdStore } from '../src/backing/nbd/nbd-store';
import { Cache } from '../src/cache/cache';
import { CachedStore, VERIFY_SAMPLE_BLOCKS } from '../src/cache/cached-store';
import { SUPERBLOCK_SIZE } from '../src/cache/segment';
import { createIoEngine } from '../src/io';
import { exitOnHelp, positiveNumber } from '../src/bench/cli';

async function main(): Promise<void> {
  exitOnHelp('Usage: node dist/bench/verify-sample.js [--gib 10] [--dir DIR] [--reps 3]');
  const { values } = parseArgs({ options: { gib: { type: 'string', default: '10' }, dir: { type: 'string' }, reps: { type: 'string', default: '3' } } });
  const bytes = positiveNumber(values.gib, '--gib') * 2 ** 30;
  const reps = positiveNumber(values.reps, '--reps');
  const dir = values.dir ?? fs.mkdtempSync(path.join(os.tmpdir(), 'vbc-verify-'));
  fs.mkdirSync(dir, { recursive: true });
  const sock = path.join(dir, 'nbd.sock');
  const nbdkit = spawn('nbdkit', ['--foreground', '--exit-with-parent', '-U', sock, '-r', 'pattern', `size=${bytes}`], { stdio: 'ignore' });
  while (!fs.existsSync(sock)) await new Promise((r) => setTimeout(r, 20));
  const engine = createIoEngine('auto');
  // The volume fits: 4 KiB blocks plus one 4 KiB header per 512 KiB segment, and a margin.
  const cacheBytes = SUPERBLOCK_SIZE + Math.ceil((bytes * 1.02) / (512 * 1024)) * (512 * 1024 + 4096);
  const cachePath = path.join(dir, 'cache.img');
  // A deep insertion queue for the fill, which waits for the cache to catch up (below).
  const open = (): Promise<Cache> => Cache.open({ path: cachePath, size: cacheBytes, engine, maxQueuedBlocks: 1 << 16 });
  const uri = `nbd+unix:///?socket=${sock}`;
  try {
    let cache = await open();
    let nbd = await NbdStore.open(uri, { connections: 4 });
    const fill = new CachedStore({ backing: nbd, cache, name: 'v', exclusive: true });
    const t0 = Date.now();
    const chunk = 1 << 20;
    const bufs = Array.from({ length: 8 }, () => new Uint8Array(chunk));
    for (let at = 0; at < bytes; at += chunk * bufs.length) {
      await Promise.all(bufs.map((b, i) => (at + i * chunk < bytes ? fill.read(at + i * chunk, [b]) : undefined)));
      const expected = Math.min(bytes, at + chunk * bufs.length) / 4096;
      while ((cache.stats().volumes.v?.blocks ?? 0) < expected - (1 << 15)) await new Promise((r) => setTimeout(r, 2));
    }
    await fill.close();
    const blocks = cache.stats().volumes.v?.blocks ?? 0;
    await cache.close();
    console.log(`filled: ${blocks} blocks (${((blocks * 4096) / 2 ** 30).toFixed(2)} GiB) cached in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    for (let rep = 0; rep < reps; rep++) {
      cache = await open();
      nbd = await NbdStore.open(uri, { connections: 4 });
      const s = await CachedStore.open({ backing: nbd, cache, name: 'v' });
      const v = s.verification;
      console.log(
        `warm open ${rep + 1}: ${cache.warm ? 'warm' : 'COLD'}, sample of ${VERIFY_SAMPLE_BLOCKS}: checked ${v?.checked}, mismatched ${v?.mismatched}, ${v?.ms.toFixed(1)} ms`,
      );
      await s.close();
      await cache.close();
    }
  } finally {
    engine.close();
    nbdkit.kill('SIGTERM');
    if (values.dir === undefined) fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((err: Error) => {
  console.error(err);
  process.exit(1);
});
