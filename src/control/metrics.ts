/**
 * Prometheus metrics (prom-client), computed from the daemon's statistics at scrape time so the
 * hot path never touches prom-client. Per-volume series carry a `volume` label; the request
 * latency histogram `vbc_request_latency_seconds` also a `type` label (read, write, flush,
 * discard, write-zeroes). Plus prom-client's default process_* and nodejs_* series (CPU, memory,
 * file descriptors, GC, event-loop delay).
 *
 * Served on the control socket (GET /metrics) and, with --metrics-listen HOST:PORT, over TCP by
 * MetricsServer (GET /metrics only).
 */
import * as http from 'node:http';
import { collectDefaultMetrics, Counter, Gauge, Histogram, type MetricObjectWithValues, type MetricValueWithName, Registry } from 'prom-client';
import type { CacheStats, VolumeStats as CacheVolumeStats } from '../cache/stats';
import type { ListenAddress } from '../config/config';
import { LATENCY_BUCKETS_S, type TypeLatency } from '../metrics/request-latency';
import type { Logger } from '../util/logger';
import type { DispatchStats } from '../virtio-blk/dispatch';
import type { ControlledDaemon, DaemonStats } from './daemon-api';

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
  ['admissionsRefused', 'vbc_cache_admissions_refused_total', 'blocks not inserted by the sequential cut-off'],
  ['firstTouchesRefused', 'vbc_cache_first_touches_refused_total', 'read-miss blocks seen for the first time that adaptive admission did not insert'],
  ['refusedGhostHits', 'vbc_cache_refused_ghost_hits_total', 'blocks inserted (read again or written) while remembered as refused by admission (raise the admission share)'],
  ['readsJoined', 'vbc_cache_reads_joined_total', 'blocks of read misses taken from a backing read of them in flight (read-ahead or another miss) instead of read again'],
  ['ghostHits', 'vbc_cache_ghost_hits_total', 'blocks inserted while in the ghost history (recently evicted or overwritten)'],
  ['invalidations', 'vbc_cache_invalidations_total', 'blocks invalidated by writes, discards and write-zeroes'],
  ['invalidateHits', 'vbc_cache_invalidate_hits_total', 'invalidations that removed a cached block'],
  ['ramHits', 'vbc_cache_ram_hits_total', 'hits served from a RAM segment buffer'],
  ['storageHits', 'vbc_cache_storage_hits_total', 'hits read from the cache device'],
  ['sharedReads', 'vbc_cache_shared_reads_total', "block reads of a clone looked up under its parent's key (also counted by the parent)"],
  ['sharedHits', 'vbc_cache_shared_hits_total', "shared reads found in the cache"],
  ['checksumErrors', 'vbc_cache_checksum_errors_total', 'cache-device blocks that failed their CRC-32C check (served from the backing store)'],
  ['destaged', 'vbc_cache_destaged_blocks_total', 'write-back blocks written back to the backing store (their rate: the destage rate)'],
  ['destageRounds', 'vbc_cache_destage_rounds_total', 'write-back destage rounds done (blocks per round: destaged / rounds)'],
  ['destageErrors', 'vbc_cache_destage_errors_total', 'write-back destage rounds that failed (retried)'],
  ['flushes', 'vbc_cache_writeback_flushes_total', 'guest flushes of write-back volumes'],
];

type Sample = [volume: string, value: number];
type LatencyLabel = 'volume' | 'type' | 'le';

/**
 * A prom-client Histogram whose series are read from RequestLatency recorders at scrape time.
 * prom-client's observe() costs 0.3-0.6 µs per call (label hashing; measured on this machine),
 * a fifth of the daemon's CPU per request, so the hot path counts into fixed arrays instead
 * (src/metrics/request-latency.ts, same bucket bounds) and this class renders them. The
 * Registry reads getForPromString() when a metric has one, get() otherwise: both are answered.
 */
const LATENCY_NAME = 'vbc_request_latency_seconds';
const LATENCY_HELP = 'time from the arrival of a request (its batch from the rings) to its completion, for requests that reach the store';

class RecordedLatencyHistogram extends Histogram<LatencyLabel> {
  constructor(private readonly source: () => { volume: string; types: TypeLatency[] }[]) {
    super({
      name: LATENCY_NAME,
      help: LATENCY_HELP,
      labelNames: ['volume', 'type'],
      buckets: [...LATENCY_BUCKETS_S],
      registers: [],
    });
  }

  override get(): Promise<MetricObjectWithValues<MetricValueWithName<LatencyLabel>>> {
    return Promise.resolve(this.snapshot());
  }

  getForPromString(): Promise<MetricObjectWithValues<MetricValueWithName<LatencyLabel>>> {
    return Promise.resolve(this.snapshot());
  }

  private snapshot(): MetricObjectWithValues<MetricValueWithName<LatencyLabel>> {
    const values: MetricValueWithName<LatencyLabel>[] = [];
    const name = LATENCY_NAME;
    for (const { volume, types } of this.source()) {
      for (const t of types) {
        const labels = { volume, type: t.type };
        t.buckets.forEach((count, i) => values.push({ metricName: `${name}_bucket`, labels: { ...labels, le: LATENCY_BUCKETS_S[i] as number }, value: count }));
        values.push({ metricName: `${name}_bucket`, labels: { ...labels, le: '+Inf' }, value: t.count });
        values.push({ metricName: `${name}_sum`, labels, value: t.sumSeconds });
        values.push({ metricName: `${name}_count`, labels, value: t.count });
      }
    }
    // prom-client's typings declare `type` as an enum; at run time (and in the text) it is the string.
    const metric = { name, help: LATENCY_HELP, type: 'histogram', values, aggregator: 'sum', collect: () => undefined };
    return metric as unknown as MetricObjectWithValues<MetricValueWithName<LatencyLabel>>;
  }
}

export function createMetrics(source: ControlledDaemon): Metrics {
  const registry = new Registry();
  // prom-client's process and Node.js series (CPU, memory, open fds, GC pauses, event-loop delay
  // percentiles: a stalled loop is a stalled guest), under their standard names.
  collectDefaultMetrics({ register: registry });
  // One Daemon.stats() per scrape: every metric's collect() runs in the same turn.
  let snapshot: DaemonStats | null = null;
  const daemon = {
    stats(): DaemonStats {
      if (snapshot === null) {
        snapshot = source.stats();
        setImmediate(() => (snapshot = null));
      }
      return snapshot;
    },
    volumeNames: () => source.volumeNames(),
    getVolume: (name: string) => source.getVolume(name),
  };
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
  perVolume('gauge', 'vbc_cache_dirty_blocks', 'write-back blocks not destaged yet', cacheSamples('dirtyBlocks'));
  perVolume('gauge', 'vbc_cache_oldest_dirty_seconds', 'age of the oldest write-back block not destaged yet', () => cacheSamples('oldestDirtyMs')().map(([v, ms]) => [v, ms / 1000]));
  perVolume('gauge', 'vbc_cache_writeback_flush_latency_seconds', 'mean latency of the guest flushes of a write-back volume', () => cacheSamples('flushLatencyUs')().map(([v, us]) => [v, us / 1e6]));
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
  cacheWide('counter', 'vbc_cache_blocks_carried_total', 'valid blocks kept in place by the hand (not rewritten)', (c) => c.blocksCarried);
  cacheWide('counter', 'vbc_cache_device_write_bytes_total', 'bytes written to the cache device by segment writes (headers and refilled runs)', (c) => c.deviceWriteBytes);
  cacheWide('counter', 'vbc_cache_segments_skipped_total', 'segments passed with every block carried forward (not written)', (c) => c.segmentsSkipped);
  cacheWide('counter', 'vbc_cache_kills_marked_total', 'writes over clean cached blocks that marked their segments in the superblock instead of waiting for the header rewrite', (c) => c.killsMarked);
  cacheWide('gauge', 'vbc_cache_marked_segments', 'segments marked in the superblock now (their clean blocks are dropped by a start after a daemon crash)', (c) => c.markedSegments);
  cacheWide('gauge', 'vbc_cache_admit_share', 'share of first-touch read misses admitted outside the admitting regions, adapted by ghost hits', (c) => c.admitShare);
  cacheWide('gauge', 'vbc_cache_decay_period', 'carries per reuse-counter decrement, adapted by ghost hits (high: frequency, 1: recency)', (c) => c.decayPeriod);
  cacheWide('gauge', 'vbc_cache_empty_slots', 'cache slots holding no block', (c) => c.emptySlots);
  new Gauge({
    name: 'vbc_build_info',
    help: 'always 1; the label says the version of the running daemon',
    labelNames: ['version'],
    registers: [registry],
    collect() {
      this.set({ version: daemon.stats().version }, 1);
    },
  });
  new Gauge({
    name: 'vbc_cache_disabled',
    help: '1 once a cache-device write error turned caching of new data off',
    registers: [registry],
    collect() {
      this.set(daemon.stats().cache?.disabled === true ? 1 : 0);
    },
  });
  registry.registerMetric(
    new RecordedLatencyHistogram(() =>
      daemon.volumeNames().flatMap((volume) => {
        const v = daemon.getVolume(volume);
        return v === undefined ? [] : [{ volume, types: v.latencyByType() }];
      }),
    ),
  );
  return { registry };
}

/** --metrics-listen: GET /metrics over TCP for Prometheus (no other route, no control). */
export class MetricsServer {
  private constructor(
    private readonly server: http.Server,
    readonly address: { host: string; port: number },
  ) {}

  static async start(listen: ListenAddress, daemon: ControlledDaemon, log: Logger): Promise<MetricsServer> {
    const { registry } = createMetrics(daemon);
    const server = http.createServer((req, res) => {
      const path = new URL(req.url ?? '/', 'http://localhost').pathname;
      if (req.method !== 'GET' || path !== '/metrics') {
        res.writeHead(404, { 'content-type': 'text/plain' });
        res.end('only GET /metrics here\n');
        return;
      }
      registry.metrics().then(
        (text) => {
          res.writeHead(200, { 'content-type': registry.contentType, 'content-length': Buffer.byteLength(text) });
          res.end(text);
        },
        (err: Error) => {
          res.writeHead(500, { 'content-type': 'text/plain' });
          res.end(`${err.message}\n`);
        },
      );
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(listen.port, listen.host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    const a = server.address();
    const address = typeof a === 'object' && a !== null ? { host: a.address, port: a.port } : { host: listen.host, port: listen.port };
    log.info({ metrics: `${address.host}:${address.port}` }, 'metrics listening (GET /metrics)');
    return new MetricsServer(server, address);
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      this.server.close(() => resolve());
      this.server.closeAllConnections();
    });
  }
}
