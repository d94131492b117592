/**
 * Prometheus metrics (prom-client), computed from Daemon.stats() at scrape time so the hot
 * path never touches them. Counters carry a `volume` label.
 */
import { Counter, Gauge, Registry } from 'prom-client';
import type { Daemon } from '../daemon/daemon';

export interface Metrics {
  registry: Registry;
}

type VolumeCounterKey = 'reads' | 'writes' | 'flushes' | 'discards' | 'writeZeroes' | 'ioErrors' | 'rejected' | 'bytesRead' | 'bytesWritten';

const VOLUME_COUNTERS: [VolumeCounterKey, string, string][] = [
  ['reads', 'vbc_read_requests_total', 'virtio-blk read requests'],
  ['writes', 'vbc_write_requests_total', 'virtio-blk write requests'],
  ['flushes', 'vbc_flush_requests_total', 'virtio-blk flush requests'],
  ['discards', 'vbc_discard_requests_total', 'virtio-blk discard requests'],
  ['writeZeroes', 'vbc_write_zeroes_requests_total', 'virtio-blk write-zeroes requests'],
  ['ioErrors', 'vbc_io_errors_total', 'requests answered VIRTIO_BLK_S_IOERR after a store error'],
  ['rejected', 'vbc_rejected_requests_total', 'requests rejected before any I/O (range, alignment, read-only)'],
  ['bytesRead', 'vbc_read_bytes_total', 'bytes read by the guest'],
  ['bytesWritten', 'vbc_written_bytes_total', 'bytes written by the guest'],
];

type CacheCounterKey = 'reads' | 'readHits' | 'insertions' | 'evictions' | 'invalidations' | 'invalidateHits' | 'ramHits' | 'storageHits';

const CACHE_COUNTERS: [CacheCounterKey, string, string][] = [
  ['reads', 'vbc_cache_reads_total', 'block reads looked up in the cache'],
  ['readHits', 'vbc_cache_read_hits_total', 'block reads served from the cache'],
  ['insertions', 'vbc_cache_insertions_total', 'blocks inserted into the cache'],
  ['evictions', 'vbc_cache_evictions_total', 'blocks evicted by CLOCK'],
  ['invalidations', 'vbc_cache_invalidations_total', 'blocks invalidated by writes, discards and write-zeroes'],
  ['invalidateHits', 'vbc_cache_invalidate_hits_total', 'invalidations that removed a cached block'],
  ['ramHits', 'vbc_cache_ram_hits_total', 'hits served from a RAM segment buffer'],
  ['storageHits', 'vbc_cache_storage_hits_total', 'hits read from the cache device'],
];

export function createMetrics(daemon: Daemon): Metrics {
  const registry = new Registry();
  for (const [key, name, help] of CACHE_COUNTERS) {
    new Counter({
      name,
      help,
      labelNames: ['volume'],
      registers: [registry],
      collect() {
        this.reset();
        const c = daemon.stats().cache;
        if (c === null) return;
        for (const [vol, v] of Object.entries(c.volumes)) this.inc({ volume: vol }, v[key]);
      },
    });
  }
  new Gauge({
    name: 'vbc_cache_blocks',
    help: 'cache blocks held per volume',
    labelNames: ['volume'],
    registers: [registry],
    collect() {
      this.reset();
      const c = daemon.stats().cache;
      if (c === null) return;
      for (const [vol, v] of Object.entries(c.volumes)) this.set({ volume: vol }, v.blocks);
    },
  });
  new Gauge({
    name: 'vbc_cache_disabled',
    help: '1 once a cache-device write error turned caching of new data off',
    registers: [registry],
    collect() {
      const c = daemon.stats().cache;
      this.set(c !== null && c.disabled ? 1 : 0);
    },
  });
  for (const [key, name, help] of VOLUME_COUNTERS) {
    new Counter({
      name,
      help,
      labelNames: ['volume'],
      registers: [registry],
      collect() {
        this.reset();
        for (const v of daemon.stats().volumes) this.inc({ volume: v.name }, v.requests[key]);
      },
    });
  }
  new Gauge({
    name: 'vbc_volume_connected',
    help: '1 while a front end is connected to the volume',
    labelNames: ['volume'],
    registers: [registry],
    collect() {
      this.reset();
      for (const v of daemon.stats().volumes) this.set({ volume: v.name }, v.connected ? 1 : 0);
    },
  });
  new Gauge({
    name: 'vbc_volume_inflight_requests',
    help: 'requests being served',
    labelNames: ['volume'],
    registers: [registry],
    collect() {
      this.reset();
      for (const v of daemon.stats().volumes) this.set({ volume: v.name }, v.inflight);
    },
  });
  return { registry };
}
