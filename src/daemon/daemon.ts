/**
 * The daemon: one I/O engine, at most one shared cache, and any number of volumes, each on
 * its own vhost-user socket. Volumes can be added and removed while the others keep serving.
 *
 * Shutdown order (SIGINT/SIGTERM): every volume stops taking requests and finishes the
 * in-flight ones, the stores are flushed and closed, then the cache writes its buffered
 * segments and saves its metadata for a warm restart.
 *
 * When a cache exists, every volume goes through a CachedStore whatever its cache mode ('none'
 * included), so its writes always invalidate cached blocks and its close records the backing
 * store's identity. Two volumes on one backing store (same location: file, device, NBD export)
 * are refused unless both are read-only: one would serve blocks the other made stale.
 */
import type { BackingStore } from '../backing/backing-store';
import { Cache } from '../cache/cache';
import { CachedStore } from '../cache/cached-store';
import { openBackingStore } from '../backing/open';
import { TraceStore } from '../backing/trace-store';
import { WindowStore } from '../backing/window-store';
import type { CacheMode, DaemonConfig, VolumeConfig } from '../config/config';
import { createIoEngine } from '../io/index';
import type { IoEngine } from '../io/io-engine';
import type { ControlledDaemon, DaemonStats } from '../control/daemon-api';
import { MetricsServer } from '../control/metrics';
import { ControlServer } from '../control/server';
import { VhostError } from '../native/errors';
import type { DaemonLogger, Logger } from '../util/logger';
import { VERSION } from '../util/version';
import { Volume } from '../volume/volume';
import { notifySystemd } from './systemd';

/** A volume's claim on its backing store (see the file comment). */
interface Claim {
  name: string;
  readOnly: boolean;
  /** The byte range of the store the volume uses (a window, or the whole store). */
  start: number;
  end: number;
}

export class Daemon implements ControlledDaemon {
  private readonly volumes = new Map<string, Volume>();
  /** The cached stores of the volumes (write-back destaging: flush, removal). */
  private readonly cached = new Map<string, CachedStore>();
  private readonly pending = new Set<string>();
  /** Backing store location -> the volumes (open or opening) using it. */
  private readonly claims = new Map<string, Claim[]>();
  private readonly started = Date.now();
  private stopping: Promise<void> | null = null;
  private control: ControlServer | null = null;
  private metrics: MetricsServer | null = null;

  private constructor(
    readonly config: DaemonConfig,
    readonly engine: IoEngine,
    readonly cache: Cache | null,
    private readonly log: Logger,
  ) {}

  static async start(config: DaemonConfig, log: Logger): Promise<Daemon> {
    const engine = createIoEngine(config.ioEngine);
    let cache: Cache | null = null;
    if (config.cache !== null) {
      try {
        // Cache.open locks the device: a second daemon on a live cache gets EBUSY.
        cache = await Cache.open({
          path: config.cache.path,
          ...(config.cache.size !== undefined ? { size: config.cache.size } : {}),
          blockSize: config.cache.blockSize,
          segmentSize: config.cache.segmentSize,
          ...(config.cache.metadataPath !== undefined ? { metadataPath: config.cache.metadataPath } : {}),
          ...(config.cache.direct !== undefined ? { direct: config.cache.direct } : {}),
          engine,
          logger: log.child({ cache: config.cache.path }),
        });
      } catch (err) {
        engine.close();
        throw err;
      }
      log.info({ cache: config.cache.path, warm: cache.warm, blocks: cache.geometry.slots }, cache.warm ? 'cache loaded warm' : 'cache started cold');
    }
    const d = new Daemon(config, engine, cache, log);
    try {
      for (const v of config.volumes) await d.addVolume(v, { discardDirty: config.discardDirty?.includes(v.name) === true });
      if (config.control !== undefined) d.control = await ControlServer.start(config.control, d, log);
      if (config.metricsListen !== undefined) d.metrics = await MetricsServer.start(config.metricsListen, d, log);
    } catch (err) {
      await d.shutdown();
      throw err;
    }
    log.info({ version: VERSION, volumes: config.volumes.map((v) => v.socketPath ?? `fd:${v.fd}`), ioEngine: engine.kind }, 'ready to accept connections');
    return d;
  }

  volumeNames(): string[] {
    return [...this.volumes.keys()];
  }

  getVolume(name: string): Volume | undefined {
    return this.volumes.get(name);
  }

  async addVolume(cfg: VolumeConfig, opts: { discardDirty?: boolean } = {}): Promise<Volume> {
    if (this.stopping !== null) throw new VhostError('daemon is shutting down', 'ESHUTDOWN');
    if (this.volumes.has(cfg.name) || this.pending.has(cfg.name)) {
      throw new VhostError(`volume ${cfg.name} already exists`, 'EEXIST');
    }
    for (const v of this.volumes.values()) {
      if (cfg.socketPath !== undefined && v.config.socketPath === cfg.socketPath) {
        throw new VhostError(`socket ${cfg.socketPath} already used by volume ${v.name}`, 'EADDRINUSE');
      }
    }
    this.pending.add(cfg.name);
    let claimed: { location: string; claim: Claim } | null = null;
    try {
      let store: BackingStore = await openBackingStore(cfg, {
        engine: this.engine,
        backingTimeoutMs: this.config.backingTimeoutMs,
        logger: this.log.child({ volume: cfg.name }),
      });
      try {
        const start = store instanceof WindowStore ? store.offset : 0;
        claimed = this.claim(store.location, { name: cfg.name, readOnly: cfg.readOnly || store.readOnly, start, end: start + store.size });
        if (this.cache !== null) {
          const cached = await CachedStore.open({
            backing: store,
            cache: this.cache,
            name: cfg.name,
            mode: cfg.cacheMode,
            backingTimeoutMs: this.config.backingTimeoutMs,
            flushOnStop: this.config.flushOnStop,
            logger: this.log.child({ volume: cfg.name }),
            exclusive: cfg.exclusive,
            shareParent: cfg.shareParent,
            sequentialCutoff: cfg.sequentialCutoff,
            discardDirty: opts.discardDirty === true,
            ...(cfg.cacheMaxBytes !== undefined ? { maxBytes: cfg.cacheMaxBytes } : {}),
          });
          const v = cached.verification;
          if (v !== null) {
            const fields = { volume: cfg.name, ...v, ms: Math.round(v.ms) };
            if (v.mismatched > 0) this.log.warn(fields, 'cached blocks differ from the backing store: all of them dropped');
            else this.log.info(fields, 'sample of cached blocks verified against the backing store');
          }
          store = cached;
          this.cached.set(cfg.name, cached);
        }
        if (cfg.traceReads !== undefined) store = new TraceStore(store, cfg.traceReads);
      } catch (err) {
        await store.close();
        throw err;
      }
      const vol = Volume.open(cfg, store, this.log);
      vol.discardedDirty = this.cached.get(cfg.name)?.discardedDirty ?? 0;
      this.volumes.set(cfg.name, vol);
      return vol;
    } catch (err) {
      if (claimed !== null) this.release(claimed.location, claimed.claim);
      throw err;
    } finally {
      this.pending.delete(cfg.name);
    }
  }

  /** Records that a volume uses `location`; throws when another one already does. */
  private claim(location: string, claim: Claim): { location: string; claim: Claim } {
    const others = this.claims.get(location) ?? [];
    const clash = others.find((o) => o.start < claim.end && claim.start < o.end && !(o.readOnly && claim.readOnly));
    if (clash !== undefined) {
      throw new VhostError(
        `volumes ${clash.name} and ${claim.name} would share one backing store (${location}, bytes ${Math.max(clash.start, claim.start)}..${Math.min(clash.end, claim.end)}); ` +
          'refused unless both are read-only',
        'EBUSY',
      );
    }
    this.claims.set(location, [...others, claim]);
    return { location, claim };
  }

  private release(location: string, claim: Claim): void {
    const left = (this.claims.get(location) ?? []).filter((c) => c !== claim);
    if (left.length > 0) this.claims.set(location, left);
    else this.claims.delete(location);
  }

  /**
   * Removes a volume; refused while a front end is connected, or while it holds write-back
   * blocks not destaged, unless forced (a forced removal still tries to destage them first;
   * what stays dirty is kept in the cache for the volume's next registration).
   */
  async removeVolume(name: string, force = false): Promise<void> {
    const vol = this.volumes.get(name);
    if (vol === undefined) throw new VhostError(`no volume named ${name}`, 'ENOENT');
    if (vol.connected && !force) {
      throw new VhostError(`volume ${name} has a connected front end (use force to remove it anyway)`, 'EBUSY');
    }
    const cached = this.cached.get(name);
    const dirty = cached?.destager.dirty ?? 0;
    if (dirty > 0 && !force) {
      const bytes = dirty * (this.cache?.blockSize ?? 0);
      throw new VhostError(`volume ${name} holds ${dirty} write-back blocks (${bytes} bytes) not written back to its backing store: run \`vhost-blk-cache flush ${name}\` first, or use force`, 'EBUSY');
    }
    if (cached !== undefined && dirty > 0) {
      await cached.flushCache().catch((err: Error) => this.log.error({ volume: name, dirty: cached.destager.dirty, err: err.message }, 'forced removal: write-back blocks not destaged stay in the cache'));
    }
    this.volumes.delete(name);
    this.cached.delete(name);
    try {
      await vol.close();
    } finally {
      this.releaseVolume(name);
    }
  }

  private releaseVolume(name: string): void {
    for (const [location, list] of this.claims) {
      for (const c of list) if (c.name === name) this.release(location, c);
    }
  }

  async flushVolume(name: string): Promise<{ destaged: number }> {
    if (!this.volumes.has(name)) throw new VhostError(`no volume named ${name}`, 'ENOENT');
    const cached = this.cached.get(name);
    if (cached === undefined) return { destaged: 0 };
    const before = cached.destager.destaged;
    await cached.flushCache();
    return { destaged: cached.destager.destaged - before };
  }

  async setCacheMode(name: string, mode: CacheMode): Promise<{ from: CacheMode; destaged: number }> {
    const vol = this.volumes.get(name);
    if (vol === undefined) throw new VhostError(`no volume named ${name}`, 'ENOENT');
    const cached = this.cached.get(name);
    if (cached === undefined) throw new VhostError(`volume ${name}: the daemon runs without a cache (--cache): no cache mode to switch`, 'EINVAL');
    const from = cached.mode;
    const before = cached.destager.destaged;
    const switching = cached.setMode(mode);
    // Unless refused, the new mode applies from here on, whatever the destaging does.
    if (cached.mode !== mode) return switching.then(() => ({ from, destaged: 0 }));
    vol.config.cacheMode = mode;
    this.log.info({ volume: name, from, to: mode, dirty: cached.destager.dirty }, 'cache mode switched');
    await switching;
    return { from, destaged: cached.destager.destaged - before };
  }

  stats(): DaemonStats {
    return {
      version: VERSION,
      uptimeSeconds: Math.round((Date.now() - this.started) / 1000),
      ioEngine: this.engine.kind,
      cache: this.cache === null ? null : this.cache.stats(),
      volumes: [...this.volumes.values()].map((v) => v.stats()),
    };
  }

  shutdown(): Promise<void> {
    if (this.stopping === null) this.stopping = this.doShutdown();
    return this.stopping;
  }

  private async doShutdown(): Promise<void> {
    this.log.info('shutting down: draining volumes');
    if (this.control !== null) await this.control.close();
    if (this.metrics !== null) await this.metrics.close();
    const vols = [...this.volumes.values()];
    this.volumes.clear();
    this.cached.clear();
    const results = await Promise.allSettled(vols.map((v) => v.close()));
    for (const r of results) {
      if (r.status === 'rejected') this.log.error({ err: (r.reason as Error).message }, 'volume close failed');
    }
    if (this.cache !== null) {
      try {
        await this.cache.close();
        this.log.info({ cache: this.cache.path }, 'cache saved for a warm restart');
      } catch (err) {
        this.log.error({ err: (err as Error).message }, 'cache close failed: the next start is cold');
      }
    }
    this.log.info({ volumes: vols.map((v) => v.stats()), cache: this.cache?.stats() ?? null }, 'final statistics');
    this.engine.close();
    this.log.info('stopped');
  }
}

/** How often `exitWithParent` looks whether the parent process is still there. */
export const PARENT_POLL_MS = 500;

export interface RunOptions {
  /**
   * Stop cleanly, as on SIGTERM, once the process that started the daemon has exited (its
   * parent pid changed: the daemon was handed to init or a subreaper), like nbdkit's
   * --exit-with-parent: a test harness or benchmark killed abruptly leaves no daemon behind.
   */
  exitWithParent?: boolean;
}

/**
 * Runs a daemon until SIGINT/SIGTERM (SIGHUP reopens the log); resolves after a clean shutdown.
 * The handlers are in place before the daemon starts, so a signal that arrives while it starts
 * (or right after it said ready) still stops it cleanly; after the first signal a second one
 * kills the process (the default action). Tells systemd READY=1 once serving and STOPPING=1
 * when the shutdown starts (NOTIFY_SOCKET).
 */
export async function runDaemon(config: DaemonConfig, dl: DaemonLogger, opts: RunOptions = {}): Promise<void> {
  const log = dl.logger;
  let daemon: Daemon | null = null;
  let signalled = false;
  let stopped: () => void = () => undefined;
  const done = new Promise<void>((resolve) => (stopped = resolve));
  const shutdown = (d: Daemon): void => {
    notifySystemd('STOPPING=1', log);
    d.shutdown().then(stopped, (err: Error) => {
      log.error({ err: err.message }, 'shutdown failed');
      stopped();
    });
  };
  const hup = (): void => {
    dl.reopen();
    log.info('SIGHUP: log reopened');
  };
  const beginStop = (): void => {
    signalled = true;
    process.off('SIGINT', stop);
    process.off('SIGTERM', stop);
    if (daemon !== null) shutdown(daemon);
  };
  const stop = (sig: NodeJS.Signals): void => {
    log.info({ signal: sig }, 'signal received');
    beginStop();
  };
  process.on('SIGHUP', hup);
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
  const parent = process.ppid;
  const orphanWatch =
    opts.exitWithParent === true
      ? setInterval(() => {
          if (process.ppid === parent || signalled) return;
          log.warn({ parent, ppid: process.ppid }, 'parent process exited (--exit-with-parent): stopping');
          beginStop();
        }, PARENT_POLL_MS).unref()
      : null;
  try {
    daemon = await Daemon.start(config, log);
    if (signalled) shutdown(daemon);
    else notifySystemd('READY=1', log);
    await done;
  } finally {
    if (orphanWatch !== null) clearInterval(orphanWatch);
    process.off('SIGHUP', hup);
    process.off('SIGINT', stop);
    process.off('SIGTERM', stop);
  }
}
