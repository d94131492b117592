/**
 * Benchmark targets as child processes: our daemon (`vhost-blk-cache serve`), qemu-storage-daemon
 * (the reference vhost-user-blk back end) and nbdkit (a network backing store). Each start*()
 * spawns the program, waits until its sockets accept connections (or the process exits, or the
 * timeout passes: then it is killed and the start rejects with its output), and returns a Target
 * whose `command` is the exact command line, printable for reports.
 *
 * Our daemon's control socket answers GET /stats (see src/control/server.ts); fetchStats() reads it
 * (src/control/client.ts)
 * and statsDelta() turns two readings into the counters of the interval between them.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import type { CacheStats, VolumeCounters } from '../cache/stats';
import type { CacheMode } from '../config/config';
import { controlJson } from '../control/client';
import { DAEMON_NODE_FLAGS } from '../daemon/node-flags';
import { VhostError } from '../native/errors';

export interface Target {
  readonly name: string;
  readonly pid: number;
  /** argv[0] and its arguments, as spawned. */
  readonly argv: readonly string[];
  /** The command line, shell-quoted. */
  readonly command: string;
  /** stdout + stderr so far (the last 64 KiB). */
  output(): string;
  /** Whether the process is still running. */
  readonly running: boolean;
  /** Sends `signal` (default SIGTERM; SIGKILL after killAfterMs) and waits for the exit. */
  stop(signal?: NodeJS.Signals, killAfterMs?: number): Promise<void>;
}

export interface SpawnOptions {
  /** Paths of unix sockets that must accept a connection before the target counts as ready. */
  sockets: readonly string[];
  /** Readiness timeout (default 15 s). */
  timeoutMs?: number;
  env?: NodeJS.ProcessEnv;
}

const OUTPUT_LIMIT = 64 * 1024;

/** Shell-quotes one word (only when needed). */
function shellQuote(word: string): string {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(word) ? word : `'${word.replace(/'/g, "'\\''")}'`;
}

function formatCommand(argv: readonly string[]): string {
  return argv.map(shellQuote).join(' ');
}

/** Resolves true if a unix socket at `p` accepts a connection (the connection is closed at once). */
export function canConnect(p: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(p);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

/** Spawns argv and waits for readiness (see the module comment). */
export async function spawnTarget(name: string, argv: readonly string[], opts: SpawnOptions): Promise<Target> {
  for (const s of opts.sockets) fs.rmSync(s, { force: true });
  const proc: ChildProcess = spawn(argv[0], argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'], env: opts.env ?? process.env });
  let out = '';
  const append = (d: Buffer): void => {
    out += d.toString();
    if (out.length > OUTPUT_LIMIT) out = out.slice(out.length - OUTPUT_LIMIT);
  };
  proc.stdout?.on('data', append);
  proc.stderr?.on('data', append);
  let exitInfo: string | null = null;
  const exited = new Promise<void>((resolve) => {
    proc.once('exit', (code, signal) => {
      exitInfo = `exit code ${code}, signal ${signal}`;
      resolve();
    });
    proc.once('error', (err) => {
      exitInfo = err.message;
      resolve();
    });
  });
  const target: Target = {
    name,
    pid: proc.pid ?? -1,
    argv: [...argv],
    command: formatCommand(argv),
    output: () => out,
    get running() {
      return exitInfo === null;
    },
    async stop(signal: NodeJS.Signals = 'SIGTERM', killAfterMs = 10_000) {
      if (exitInfo !== null) return;
      proc.kill(signal);
      const t = setTimeout(() => proc.kill('SIGKILL'), killAfterMs);
      await exited;
      clearTimeout(t);
    },
  };
  const deadline = Date.now() + (opts.timeoutMs ?? 15_000);
  for (const s of opts.sockets) {
    while (!(fs.existsSync(s) && (await canConnect(s)))) {
      if (exitInfo !== null) throw new VhostError(`${name} did not start (${exitInfo}): ${out.trim()}`, 'ECHILD');
      if (Date.now() > deadline) {
        await target.stop('SIGKILL');
        throw new VhostError(`${name}: socket ${s} not ready after ${opts.timeoutMs ?? 15_000} ms: ${out.trim()}`, 'ETIMEDOUT');
      }
      await new Promise((r) => setTimeout(r, 20));
    }
  }
  return target;
}

// ------------------------------------------------------------------ our daemon

/** The installed CLI of this package (bin/vhost-blk-cache). */
export const VBC_BIN = path.resolve(__dirname, '..', '..', '..', 'bin', 'vhost-blk-cache');

export interface VbcVolume {
  name: string;
  socketPath: string;
  backing: string;
  /** Bytes (creates a sparse backing file when missing). */
  size?: number;
  /** A window of the backing store (bytes), as the config's backingOffset / backingLength. */
  backingOffset?: number;
  backingLength?: number;
  cacheMode?: CacheMode;
  numQueues?: number;
  /** The volume options of the same names (config file only). */
  shareParent?: boolean;
  traceReads?: string;
}

export interface VbcOptions {
  volumes: readonly VbcVolume[];
  cache?: { path: string; size: number; blockSize?: number; segmentSize?: number; direct?: boolean };
  control?: string;
  ioEngine?: 'auto' | 'io_uring' | 'threadpool';
  logLevel?: string;
  /** node flags for the daemon process (e.g. --cpu-prof). */
  nodeArgs?: readonly string[];
  /**
   * Where to write the JSON config for more than one volume (default: next to the first socket).
   * One volume is started with plain flags.
   */
  configPath?: string;
}

export interface VbcTarget extends Target {
  readonly control: string | undefined;
  readonly socketPaths: readonly string[];
}

/** Builds the argv of `vhost-blk-cache serve` for `o` (writes the config file for several volumes). */
function vbcArgv(o: VbcOptions): string[] {
  const argv = [process.execPath, ...DAEMON_NODE_FLAGS, ...(o.nodeArgs ?? []), VBC_BIN, 'serve'];
  const flagsOnly = (v: VbcVolume): boolean => v.name === 'vol0' && v.shareParent === undefined && v.traceReads === undefined;
  if (o.volumes.length === 1 && flagsOnly(o.volumes[0])) {
    const v = o.volumes[0];
    argv.push('--socket-path', v.socketPath, '--backing', v.backing);
    if (v.size !== undefined) argv.push('--size', String(v.size));
    if (v.numQueues !== undefined) argv.push('--num-queues', String(v.numQueues));
    if (v.cacheMode !== undefined) argv.push('--cache-mode', v.cacheMode);
    if (o.cache !== undefined) {
      argv.push('--cache', o.cache.path, '--cache-size', String(o.cache.size));
      if (o.cache.blockSize !== undefined) argv.push('--cache-block-size', String(o.cache.blockSize));
      if (o.cache.segmentSize !== undefined) argv.push('--cache-segment-size', String(o.cache.segmentSize));
      if (o.cache.direct !== undefined) argv.push(o.cache.direct ? '--cache-direct' : '--no-cache-direct');
    }
    if (o.control !== undefined) argv.push('--control', o.control);
    if (o.ioEngine !== undefined) argv.push('--io-engine', o.ioEngine);
  } else {
    const config = {
      ...(o.cache !== undefined ? { cache: o.cache } : {}),
      ...(o.control !== undefined ? { control: o.control } : {}),
      ...(o.ioEngine !== undefined ? { ioEngine: o.ioEngine } : {}),
      volumes: o.volumes.map((v) => ({
        name: v.name,
        socketPath: v.socketPath,
        backing: v.backing,
        ...(v.size !== undefined ? { size: v.size } : {}),
        ...(v.backingOffset !== undefined ? { backingOffset: v.backingOffset } : {}),
        ...(v.backingLength !== undefined ? { backingLength: v.backingLength } : {}),
        ...(v.cacheMode !== undefined ? { cacheMode: v.cacheMode } : {}),
        ...(v.numQueues !== undefined ? { numQueues: v.numQueues } : {}),
        ...(v.shareParent !== undefined ? { shareParent: v.shareParent } : {}),
        ...(v.traceReads !== undefined ? { traceReads: v.traceReads } : {}),
      })),
    };
    const file = o.configPath ?? `${o.volumes[0].socketPath}.config.json`;
    fs.writeFileSync(file, `${JSON.stringify(config, null, 2)}\n`);
    argv.push('--config', file);
  }
  // A benchmark killed abruptly (e.g. by SIGPIPE) leaves no daemon behind.
  argv.push('--log-level', o.logLevel ?? 'warn', '--exit-with-parent');
  return argv;
}

export async function startVbc(o: VbcOptions): Promise<VbcTarget> {
  const socketPaths = o.volumes.map((v) => v.socketPath);
  const sockets = o.control !== undefined ? [...socketPaths, o.control] : socketPaths;
  const t = await spawnTarget('vhost-blk-cache', vbcArgv(o), { sockets, timeoutMs: 60_000 });
  return Object.assign(t, { control: o.control, socketPaths });
}

// ------------------------------------------------------------------ qemu-storage-daemon

export interface QsdOptions {
  socketPath: string;
  /** A raw image file, an NBD export on a unix socket, or an RBD image (QEMU's rbd driver). */
  image?: string;
  nbd?: { socket: string; export?: string };
  rbd?: { pool: string; image: string; conf: string };
  numQueues?: number;
  /** cache.direct (default off: the host page cache is used, like our daemon without --direct). */
  direct?: boolean;
  /** Blockdev discard=unmap (default true). */
  discard?: boolean;
  writable?: boolean;
}

export function qsdArgv(o: QsdOptions): string[] {
  let blockdev: string;
  if (o.nbd !== undefined) {
    blockdev = `driver=nbd,node-name=f0,server.type=unix,server.path=${o.nbd.socket}`;
    if (o.nbd.export !== undefined) blockdev += `,export=${o.nbd.export}`;
  } else if (o.rbd !== undefined) {
    blockdev = `driver=rbd,node-name=f0,pool=${o.rbd.pool},image=${o.rbd.image},conf=${o.rbd.conf}`;
  } else if (o.image !== undefined) {
    blockdev = `driver=file,node-name=f0,filename=${o.image},cache.direct=${o.direct === true ? 'on' : 'off'}`;
  } else {
    throw new VhostError('qemu-storage-daemon needs an image, an NBD export or an RBD image', 'EINVAL');
  }
  if (o.discard !== false) blockdev += ',discard=unmap';
  const exp = [
    'type=vhost-user-blk,id=e0,node-name=f0,addr.type=unix',
    `addr.path=${o.socketPath}`,
    `writable=${o.writable === false ? 'off' : 'on'}`,
    `num-queues=${o.numQueues ?? 1}`,
  ].join(',');
  return ['qemu-storage-daemon', '--blockdev', blockdev, '--export', exp];
}

export async function startQsd(o: QsdOptions): Promise<Target> {
  return spawnTarget('qemu-storage-daemon', qsdArgv(o), { sockets: [o.socketPath] });
}

// ------------------------------------------------------------------ nbdkit

export interface NbdkitOptions {
  socket: string;
  /** Size of the memory export in bytes. */
  size: number;
  /** Delay filter: per-read and per-write delays in ms (omitted: no filter). */
  readDelayMs?: number;
  writeDelayMs?: number;
  /** Worker threads (nbdkit --threads). */
  threads?: number;
}

function nbdkitArgv(o: NbdkitOptions): string[] {
  const argv = ['nbdkit', '--foreground', '--exit-with-parent', '--unix', o.socket];
  if (o.threads !== undefined) argv.push('--threads', String(o.threads));
  const delay = o.readDelayMs !== undefined || o.writeDelayMs !== undefined;
  if (delay) argv.push('--filter=delay');
  argv.push('memory', `size=${o.size}`);
  if (o.readDelayMs !== undefined) argv.push(`rdelay=${o.readDelayMs}ms`);
  if (o.writeDelayMs !== undefined) argv.push(`wdelay=${o.writeDelayMs}ms`);
  return argv;
}

export async function startNbdkit(o: NbdkitOptions): Promise<Target> {
  return spawnTarget('nbdkit', nbdkitArgv(o), { sockets: [o.socket] });
}

/**
 * The slow network store the NBD benchmarks share: nbdkit's memory plugin of `size` bytes behind
 * the delay filter (`delayMs` per read and per write), and qemu-storage-daemon serving it over
 * vhost-user-blk at `qsdSocket` (the reference). `targets` lists both for stopping (in reverse).
 */
export interface SlowNbd {
  nbd: Target;
  qsd: Target;
  /** The export's URI for our daemon's --backing. */
  uri: string;
  targets: Target[];
}

export async function startSlowNbd(o: { dir: string; size: number; delayMs: number; qsdSocket: string }): Promise<SlowNbd> {
  const socket = path.join(o.dir, 'nbd.sock');
  const nbd = await startNbdkit({ socket, size: o.size, readDelayMs: o.delayMs, writeDelayMs: o.delayMs });
  try {
    const qsd = await startQsd({ socketPath: o.qsdSocket, nbd: { socket }, numQueues: 1 });
    return { nbd, qsd, uri: `nbd+unix:///?socket=${socket}`, targets: [nbd, qsd] };
  } catch (err) {
    await nbd.stop();
    throw err;
  }
}

/**
 * The directory a benchmark works in: `given` (created when missing), else a new one under the
 * OS temp dir named vbc-bench-<tag>XXXXXX (the caller removes it).
 */
export function benchDir(given?: string, tag = ''): string {
  if (given === undefined) return fs.mkdtempSync(path.join(os.tmpdir(), `vbc-bench-${tag}`));
  fs.mkdirSync(given, { recursive: true });
  return given;
}

// ------------------------------------------------------------------ control socket

/** The counters compared between two /stats readings (whole cache, or one volume of it). */
const COUNTER_KEYS = [
  'reads', 'readHits', 'insertions', 'evictions', 'invalidations', 'invalidateHits', 'ramHits', 'storageHits',
] as const satisfies readonly (keyof VolumeCounters)[];

/** Cache-wide counters of the device work (CacheStats), compared between two readings. */
const DEVICE_KEYS = ['segmentWrites', 'headerRewrites', 'rewriteBatches', 'killsMarked', 'fdatasyncs'] as const satisfies readonly (keyof CacheStats)[];

/** The cache counters of /stats (whole cache, or one volume of it) the benchmarks read. */
export type CacheCounters = Pick<VolumeCounters, (typeof COUNTER_KEYS)[number]>;

export interface CacheSnapshot
  extends CacheCounters,
    Pick<CacheStats, 'blocks' | 'wraps' | 'segmentsSkipped' | 'segmentReads' | 'segmentWrites' | 'readLatencyUs' | 'segmentReadLatencyUs' | 'segmentWriteLatencyUs'>,
    Pick<CacheStats, (typeof DEVICE_KEYS)[number]> {
  volumes: Record<string, CacheCounters>;
}

export interface DaemonStatsSnapshot {
  cache: CacheSnapshot | null;
}

export async function fetchStats(control: string): Promise<DaemonStatsSnapshot> {
  return (await controlJson(control, 'GET', '/stats')) as DaemonStatsSnapshot;
}

/** Cache activity between two /stats readings. */
export interface CacheDelta extends CacheCounters {
  /** readHits / reads over the interval (null without reads). */
  readHitRate: number | null;
  /** invalidateHits / invalidations over the interval (null without invalidations). */
  invalidateHitRate: number | null;
  wraps: number;
  segmentsSkipped: number;
  /** Mean segment read / write latency over the interval (µs; null without such I/O). */
  segmentReadLatencyUs: number | null;
  segmentWriteLatencyUs: number | null;
  /** Mean cache-device read latency over the daemon's life (µs; /stats gives no count for it). */
  readLatencyUs: number;
  /** The whole cache's device work over the interval (every volume of it, whatever `volumes` says). */
  device: Record<(typeof DEVICE_KEYS)[number], number>;
}

/** Counter differences b - a; `volumes` restricts them to those volumes of the cache (default: all). */
export function statsDelta(a: CacheSnapshot, b: CacheSnapshot, volumes?: readonly string[]): CacheDelta {
  const c = {} as CacheCounters;
  for (const k of COUNTER_KEYS) {
    if (volumes === undefined) c[k] = b[k] - a[k];
    else c[k] = volumes.reduce((s, v) => s + ((b.volumes[v]?.[k] ?? 0) - (a.volumes[v]?.[k] ?? 0)), 0);
  }
  const weighted = (m0: number, n0: number, m1: number, n1: number): number | null =>
    n1 > n0 ? (m1 * n1 - m0 * n0) / (n1 - n0) : null;
  return {
    ...c,
    readHitRate: c.reads > 0 ? c.readHits / c.reads : null,
    invalidateHitRate: c.invalidations > 0 ? c.invalidateHits / c.invalidations : null,
    wraps: b.wraps - a.wraps,
    segmentsSkipped: b.segmentsSkipped - a.segmentsSkipped,
    segmentReadLatencyUs: weighted(a.segmentReadLatencyUs, a.segmentReads, b.segmentReadLatencyUs, b.segmentReads),
    segmentWriteLatencyUs: weighted(a.segmentWriteLatencyUs, a.segmentWrites, b.segmentWriteLatencyUs, b.segmentWrites),
    readLatencyUs: b.readLatencyUs,
    device: Object.fromEntries(DEVICE_KEYS.map((k) => [k, b[k] - a[k]])) as CacheDelta['device'],
  };
}

/** A zero-filled (sparse) or random-filled image file of `size` bytes. */
export function makeImage(file: string, size: number, fill: 'sparse' | 'random' = 'sparse'): void {
  fs.writeFileSync(file, '');
  if (fill === 'sparse') {
    fs.truncateSync(file, size);
    return;
  }
  const fd = fs.openSync(file, 'w');
  try {
    const chunk = Buffer.alloc(1 << 20);
    for (let off = 0; off < size; off += chunk.length) {
      for (let i = 0; i < chunk.length; i += 4) chunk.writeUInt32LE(((off + i) * 2654435761) >>> 0, i);
      fs.writeSync(fd, chunk, 0, Math.min(chunk.length, size - off), off);
    }
  } finally {
    fs.closeSync(fd);
  }
}
