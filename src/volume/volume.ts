/**
 * A volume: one exported disk. It ties the vhost-user export (socket, rings) to the virtio-blk
 * dispatcher and to the volume's store (the backing store, wrapped by the cache when the
 * volume is cached).
 *
 * Life cycle: open() -> serving (front ends come and go; each disconnect returns the export to
 * listening) -> close(): stop accepting, wait for in-flight requests, flush, close the store.
 */
import * as fs from 'node:fs';
import type { BackingStore } from '../backing/backing-store';
import type { VolumeConfig } from '../config/config';
import { VhostError } from '../native/errors';
import type { TypeLatency, VolumeLatency } from '../metrics/request-latency';
import type { Logger } from '../util/logger';
import { VhostExport } from '../vhost/device';
import { blkFeatures, encodeBlkConfig, SEG_MAX, SIZE_MAX, type BlkGeometry } from '../virtio-blk/config';
import { BLK_CONFIG_OFFSET_WRITEBACK } from '../virtio-blk/spec';
import { BlkDispatcher, type DispatchStats, type DispatchTarget } from '../virtio-blk/dispatch';

export interface VolumeStats {
  name: string;
  connected: boolean;
  sizeBytes: number;
  readOnly: boolean;
  cacheMode: string;
  backing: string;
  inflight: number;
  requests: DispatchStats;
  /** Request latency percentiles (µs), since start and over the last window. */
  latency: VolumeLatency;
}

export class Volume implements DispatchTarget {
  readonly sizeBytes: number;
  readonly logicalBlockSize: number;
  readonly readOnly: boolean;
  readonly serial: string;
  writeback = true;
  /** Write-back blocks of another backing object discarded when it was added (daemon.ts). */
  discardedDirty = 0;
  private readonly dispatcher: BlkDispatcher;
  private readonly export: VhostExport;
  private readonly geometry: BlkGeometry;
  private closing: Promise<void> | null = null;

  /** Takes ownership of `store`; closes it if the export cannot be created. */
  static open(cfg: VolumeConfig, store: BackingStore, logger: Logger): Volume {
    try {
      return new Volume(cfg, store, logger.child({ volume: cfg.name }));
    } catch (err) {
      void store.close().catch(() => undefined);
      throw err;
    }
  }

  private constructor(
    readonly config: VolumeConfig,
    readonly store: BackingStore,
    private readonly log: Logger,
  ) {
    const lbs = config.logicalBlockSize;
    this.logicalBlockSize = lbs;
    this.sizeBytes = Math.floor(store.size / lbs) * lbs;
    if (this.sizeBytes === 0) throw new VhostError(`volume ${config.name}: backing store is smaller than one block`, 'EINVAL');
    this.readOnly = config.readOnly || store.readOnly;
    this.serial = config.serial;
    this.geometry = {
      sizeBytes: this.sizeBytes,
      logicalBlockSize: lbs,
      physicalBlockSize: Math.max(lbs, 4096),
      optimalIoSize: 0,
      numQueues: config.numQueues,
      readOnly: this.readOnly,
      discard: store.features.discard,
      writeZeroes: store.features.writeZeroes,
      writeback: this.writeback,
    };
    this.dispatcher = new BlkDispatcher(this, (q, tag, status) => this.export.complete(q, tag, status), log);
    this.export = new VhostExport({
      ...(config.socketPath !== undefined ? { socketPath: config.socketPath } : {}),
      ...(config.fd !== undefined ? { fd: config.fd } : {}),
      socketMode: config.socketMode,
      ...(config.allowUids !== undefined ? { allowUids: config.allowUids } : {}),
      maxQueues: config.numQueues,
      maxQueueSize: config.queueSize,
      maxSegments: SEG_MAX,
      maxSegmentSize: SIZE_MAX,
      deviceFeatures: blkFeatures(this.geometry),
      config: encodeBlkConfig(this.geometry),
      logger: log,
      onRequests: (queue, count, segs, table) => this.dispatcher.handleBatch(queue, count, segs, table),
      onConfigWrite: (offset, data) => this.onConfigWrite(offset, data),
    });
    const owner = config.socketOwner;
    if (owner !== undefined && config.socketPath !== undefined) {
      try {
        fs.chownSync(config.socketPath, owner.uid, owner.gid);
      } catch (err) {
        this.export.close();
        const e = err as NodeJS.ErrnoException;
        throw new VhostError(`volume ${config.name}: chown ${config.socketPath} to ${owner.spec}: ${e.message}`, e.code ?? 'EIO');
      }
    }
    log.info(
      { socket: config.socketPath ?? `fd:${config.fd}`, backing: config.backing, sizeBytes: this.sizeBytes, readOnly: this.readOnly, queues: config.numQueues },
      'volume ready',
    );
  }

  get name(): string {
    return this.config.name;
  }

  get connected(): boolean {
    return this.export.connected;
  }

  stats(): VolumeStats {
    return {
      name: this.name,
      connected: this.connected,
      sizeBytes: this.sizeBytes,
      readOnly: this.readOnly,
      cacheMode: this.config.cacheMode,
      backing: this.config.backing,
      inflight: this.dispatcher.inflightCount,
      requests: { ...this.dispatcher.stats },
      latency: this.dispatcher.latency.summary(),
    };
  }

  /** Per-type latency histograms (Prometheus buckets) for the metrics endpoint. */
  latencyByType(): TypeLatency[] {
    return this.dispatcher.latency.byType();
  }

  /** The guest toggled the write cache (virtio-blk CONFIG_WCE): only the writeback byte may change. */
  private onConfigWrite(offset: number, data: Uint8Array): void {
    if (offset !== BLK_CONFIG_OFFSET_WRITEBACK || data.byteLength !== 1) {
      this.log.warn({ offset, length: data.byteLength }, 'SET_CONFIG outside the writeback byte ignored');
      return;
    }
    this.writeback = data[0] !== 0;
    this.geometry.writeback = this.writeback;
    this.export.setConfig(encodeBlkConfig(this.geometry));
    this.log.info({ writeback: this.writeback }, 'guest changed the write cache mode');
  }

  /** Stops serving: no new requests, waits for the in-flight ones, flushes and closes the store. */
  close(): Promise<void> {
    if (this.closing === null) this.closing = this.doClose();
    return this.closing;
  }

  private async doClose(): Promise<void> {
    // Finish what was started while the front end is still connected, so the guest gets its
    // answers; requests that arrive meanwhile are left unanswered and QEMU resubmits them to
    // the next back end after it reconnects (it rewinds last_avail_idx to the used index).
    this.dispatcher.stop();
    await this.dispatcher.drain();
    this.export.close();
    if (!this.readOnly) {
      await this.store.flush().catch((err: Error) => this.log.error({ err: err.message }, 'final flush failed'));
    }
    await this.store.close();
    this.log.info('volume closed');
  }
}
