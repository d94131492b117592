/**
 * Prometheus metrics (prom-client), computed from Daemon.stats() at scrape time so the hot
 * path never touches them. Per-volume series carry a `volume` label.
 */
import { Counter, Gauge, Registry } from 'prom-client';
import type { CacheStats, VolumeStats as CacheVolumeStats } from '../cache/stats';
import type { Daemon } from '../daemon/daemon';
import type { DispatchStats } from '../virtio-blk/dispatch';

export interface Metrics {
  registry: Registry;
}

type RequestKey = keyof DispatchStats;
type CacheKey = keyof CacheVolumeStats;

const REQUEST_COUNTERS: [RequestKey, string, string][] = [
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

const CACHE_COUNTERS: [CacheKey, string, string][] = [
  ['reads', 'vbc_cache_reads_total', 'block reads looked up in the cache'],
  ['readHits', 'vbc_cache_read_hits_total', 'block reads served from the cache'],
  ['insertions', 'vbc_cache_insertions_total', 'blocks inserted into the cache'],
  ['evictions', 'vbc_cache_evictions_total', 'blocks evicted by the log hand'],
  ['prefetched', 'vbc_cache_prefetched_total', 'blocks inserted by sequential read-ahead'],
  ['prefetchHits', 'vbc_cache_prefetch_hits_total', 'read-ahead blocks later read while cached'],
  ['ghostHits', 'vbc_cache_ghost_hits_total', 'blocks inserted while in the ghost history (recently evicted or overwritten)'],
  ['invalidations', 'vbc_cache_invalidations_total', 'blocks invalidated by writes, discards and write-zeroes'],
  ['invalidateHits', 'vbc_cache_invalidate_hits_total', 'invalidations that removed a cached block'],
  ['ramHits', 'vbc_cache_ram_hits_total', 'hits served from a RAM segment buffer'],
  ['storageHits', 'vbc_cache_storage_hits_total', 'hits read from the cache device'],
  ['checksumErrors', 'vbc_cache_checksum_errors_total', 'cache-device blocks that failed their CRC-32C check (served from the backing store)'],
];

type Sample = [volume: string, value: number];

export function createMetrics(daemon: Daemon): Metrics {
  const registry = new Registry();
  /** One labelled series per volume, filled from `samples()` at every scrape. */
  const perVolume = (type: 'counter' | 'gauge', name: string, help: string, samples: () => Sample[]): void => {
    const Kind = type === 'counter' ? Counter : Gauge;
    new Kind({
      name,
      help,
      labelNames: ['volume'],
      registers: [registry],
      collect(this: Counter | Gauge) {
        this.reset();
        for (const [volume, value] of samples()) {
          if (this instanceof Gauge) this.set({ volume }, value);
          else this.inc({ volume }, value);
        }
      },
    });
  };
  const requestSamples = (key: RequestKey) => (): Sample[] => daemon.stats().volumes.map((v) => [v.name, v.requests[key]]);
  const cacheSamples = (key: CacheKey) => (): Sample[] =>
    Object.entries(daemon.stats().cache?.volumes ?? {}).map(([name, v]) => [name, v[key]]);

  for (const [key, name, help] of REQUEST_COUNTERS) perVolume('counter', name, help, requestSamples(key));
  for (const [key, name, help] of CACHE_COUNTERS) perVolume('counter', name, help, cacheSamples(key));
  perVolume('gauge', 'vbc_cache_blocks', 'cache blocks held per volume', cacheSamples('blocks'));
  perVolume('gauge', 'vbc_volume_connected', '1 while a front end is connected to the volume', () =>
    daemon.stats().volumes.map((v) => [v.name, v.connected ? 1 : 0]),
  );
  perVolume('gauge', 'vbc_volume_inflight_requests', 'requests being served', () => daemon.stats().volumes.map((v) => [v.name, v.inflight]));
  const cacheWide = (type: 'counter' | 'gauge', name: string, help: string, value: (c: CacheStats) => number): void => {
    const Kind = type === 'counter' ? Counter : Gauge;
    new Kind({
      name,
      help,
      registers: [registry],
      collect(this: Counter | Gauge) {
        this.reset();
        const c = daemon.stats().cache;
        if (!c) return;
        if (this instanceof Gauge) this.set(value(c));
        else this.inc(value(c));
      },
    });
  };
  cacheWide('counter', 'vbc_cache_segments_cleaned_total', 'log segments the hand entered to refill (chosen by cleaning)', (c) => c.segmentsCleaned);
  cacheWide('counter', 'vbc_cache_blocks_carried_total', 'valid blocks kept in place and rewritten with their segment', (c) => c.blocksCarried);
  cacheWide('counter', 'vbc_cache_segments_skipped_total', 'segments passed with every block carried forward (not written)', (c) => c.segmentsSkipped);
  cacheWide('gauge', 'vbc_cache_empty_slots', 'cache slots holding no block', (c) => c.emptySlots);
  new Gauge({
    name: 'vbc_cache_disabled',
    help: '1 once a cache-device write error turned caching of new data off',
    registers: [registry],
    collect() {
      this.set(daemon.stats().cache?.disabled === true ? 1 : 0);
    },
  });
  return { registry };
}
