/**
 * What the control socket and the metrics endpoint need from the daemon. Owned here so that
 * src/control depends on no daemon code; src/daemon implements it (Daemon implements
 * ControlledDaemon) and starts the servers.
 */
import type { CacheStats } from '../cache/stats';
import type { CacheMode, VolumeConfig } from '../config/config';
import type { TypeLatency } from '../metrics/request-latency';
import type { VolumeStats } from '../volume/volume';

/** GET /stats. */
export interface DaemonStats {
  /** The package version of the running daemon. */
  version: string;
  uptimeSeconds: number;
  ioEngine: string;
  /** null when the daemon runs without a cache. */
  cache: CacheStats | null;
  volumes: VolumeStats[];
}

export interface ControlledVolume {
  readonly name: string;
  readonly config: VolumeConfig;
  /** Write-back blocks of another backing object discarded when the volume was added. */
  readonly discardedDirty: number;
  /** Per-type request latency histograms (Prometheus buckets). */
  latencyByType(): TypeLatency[];
}

export interface ControlledDaemon {
  stats(): DaemonStats;
  volumeNames(): string[];
  getVolume(name: string): ControlledVolume | undefined;
  /**
   * `discardDirty`: write-back blocks the cache holds for another backing object of the
   * volume's name are discarded (how many: `discardedDirty`) instead of refusing it (EBUSY).
   */
  addVolume(cfg: VolumeConfig, opts?: { discardDirty?: boolean }): Promise<ControlledVolume>;
  /**
   * Refused (EBUSY) while a front end is connected, or while the volume holds write-back blocks
   * not destaged (the refusal says how many), unless forced.
   */
  removeVolume(name: string, force?: boolean): Promise<void>;
  /** Destages every write-back block of the volume; resolves with how many were written back. */
  flushVolume(name: string): Promise<{ destaged: number }>;
  /**
   * Switches the volume's cache mode. Out of write-back it resolves once every dirty block is
   * written back (how many it destaged); rejects when the backing store kept failing for the
   * backing timeout (the new mode applies all the same, the blocks stay dirty and are destaged).
   */
  setCacheMode(name: string, mode: CacheMode): Promise<{ from: CacheMode; destaged: number }>;
}
