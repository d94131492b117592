/**
 * The `vhost-blk-cache` command. Without a subcommand it follows the vhost-user spec's
 * back-end program conventions (`--socket-path`, `--fd`, `--print-capabilities`, and for
 * block devices `--blk-file` and `--read-only`); `serve` is the same with every option.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Command, Option } from 'commander';
import {
  CACHE_MODES,
  DEFAULTS,
  parseSize,
  validateConfig,
  type DaemonConfig,
} from '../config/config';
import { addBenchCommand } from '../bench/runner';
import { runDaemon } from '../daemon/daemon';
import { controlJson } from '../control/client';
import type { DaemonStats } from '../control/daemon-api';
import { applyActivatedSockets, type ActivatedSockets, LISTEN_FDS_START, takeActivatedSockets } from '../daemon/systemd';
import { createDaemonLogger, LOG_FORMATS, type LogFormat } from '../util/logger';
import { VERSION } from '../util/version';
import { renderStatsTable } from './stats-table';

/** The JSON the vhost-user spec defines for back-end programs (VHostUserBackendCapabilities). */
export const CAPABILITIES = { type: 'block', features: ['read-only', 'blk-file'] };

interface ServeFlags {
  config?: string;
  socketPath?: string;
  fd?: string;
  socketMode?: string;
  socketOwner?: string;
  allowUid?: string[];
  backing?: string;
  blkFile?: string;
  size?: string;
  name?: string;
  readOnly?: boolean;
  numQueues?: string;
  queueSize?: string;
  serial?: string;
  logicalBlockSize?: string;
  direct?: boolean;
  exclusive?: boolean;
  cache?: string;
  cacheSize?: string;
  cacheBlockSize?: string;
  cacheSegmentSize?: string;
  cacheMode?: string;
  sequentialCutoff?: string;
  cacheMetadata?: string;
  cacheDirect?: boolean;
  control?: string;
  metricsListen?: string;
  ioEngine?: string;
  backingTimeout?: string;
  flushOnStop?: boolean;
  /** Not part of the config: how this process runs, with --config too. */
  exitWithParent?: boolean;
  discardDirty?: string[];
  logLevel: string;
  logFile?: string;
  logFormat?: LogFormat;
  printCapabilities?: boolean;
  check?: boolean;
}

function addServeOptions(cmd: Command): Command {
  return cmd
    .option('--config <file>', 'JSON config file (cache section and a list of volumes)')
    .option('--socket-path <path>', 'vhost-user socket to listen on')
    .option('--fd <n>', 'inherited listening or connected vhost-user socket')
    .option('--socket-mode <octal>', 'mode of the created socket file', '0600')
    .option('--socket-owner <user[:group]>', "chown the created socket (e.g. libvirt's qemu user)")
    .option('--allow-uid <uid[,uid...]>', 'only front ends running as these uids may connect (repeatable)', (v: string, prev: string[] | undefined) => [...(prev ?? []), v])
    .option(
      '--backing <file|uri>',
      'backing file, block device, NBD URI (nbd://host/export, nbd+unix:///export?socket=path) or RBD image (rbd:pool/image[@snap][:conf=path][:id=user])',
    )
    .option('--blk-file <file>', 'same as --backing (vhost-user back-end convention)')
    .option('--size <bytes>', 'create a sparse backing file of this size if it does not exist (e.g. 10G)')
    .option('--name <name>', 'volume name (identity in the cache and in statistics)', 'vol0')
    .option('--read-only', 'export read-only (VIRTIO_BLK_F_RO)')
    .option('--num-queues <n>', 'most queues a front end may use', String(DEFAULTS.numQueues))
    .option('--queue-size <n>', 'largest virtqueue size accepted', String(DEFAULTS.queueSize))
    .option('--serial <id>', 'serial number answered to GET_ID (at most 20 bytes)')
    .addOption(new Option('--logical-block-size <bytes>', 'logical block size').choices(['512', '4096']).default('512'))
    .option('--direct', 'open the backing file with O_DIRECT')
    .option('--exclusive', 'nothing else ever writes the backing store: a warm start trusts the cache of a block device or NBD export without verifying a sample')
    .option('--cache <path>', 'cache device or file (shared by every volume)')
    .option('--cache-size <bytes>', 'create or size the cache file (e.g. 8G)')
    .option('--cache-block-size <bytes>', 'cache block size, 4K..64K', String(DEFAULTS.cacheBlockSize))
    .option('--cache-segment-size <bytes>', 'log segment size', String(DEFAULTS.segmentSize))
    .addOption(new Option('--cache-mode <mode>', 'cache mode of the volume').choices([...CACHE_MODES]).default('writethrough'))
    .option('--sequential-cutoff <bytes>', 'do not cache sequential streams longer than this (e.g. 4M; 0 = off)')
    .option('--cache-metadata <path>', 'metadata file for warm restarts (default: the metadata area of the cache device)')
    .option('--cache-direct', 'cache device I/O with O_DIRECT, bypassing the page cache (default for a block device)')
    .option('--no-cache-direct', 'cache device I/O through the page cache (default for a file)')
    .option('--control <path>', 'control socket (HTTP over a unix socket)')
    .option('--metrics-listen <host:port>', 'serve Prometheus metrics (GET /metrics) over TCP, e.g. 127.0.0.1:9100')
    .addOption(new Option('--io-engine <engine>', 'I/O engine').choices(['auto', 'io_uring', 'threadpool']).default('auto'))
    .option('--backing-timeout <seconds>', 'how long requests wait for an unreachable network backing store', '60')
    .option('--flush-on-stop', 'a clean stop writes every write-back block back to its backing store first')
    .option('--exit-with-parent', 'stop cleanly (as on SIGTERM) once the process that started the daemon exits')
    .option('--check', 'check the configuration (flags or --config), print it as the daemon would run it (JSON) and exit without serving')
    .option(
      '--discard-dirty <volume>',
      "discard the write-back blocks the cache holds for another backing file or image of this volume's name (their data is lost; refused without it); repeatable",
      (v: string, prev: string[] | undefined) => [...(prev ?? []), v],
    )
    .addOption(
      new Option('--log-level <level>', 'log level').choices(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']).default('info'),
    )
    .option('--log-file <path>', 'write the log here instead of stderr (SIGHUP reopens it)')
    .addOption(logFormatOption());
}

function logFormatOption(): Option {
  return new Option('--log-format <format>', 'log lines: pretty on a terminal and JSON otherwise (auto), or forced')
    .choices([...LOG_FORMATS])
    .default('auto');
}

function intFlag(v: string, flag: string): number {
  if (!/^\d+$/.test(v)) throw new Error(`${flag}: expected a whole number, got ${JSON.stringify(v)}`);
  return Number(v);
}

/**
 * Builds the daemon configuration from flags (or from --config FILE). Sockets inherited from
 * systemd (`activated`) replace the socket path of the volume named like them; with flags, such
 * a socket stands in for --socket-path / --fd.
 */
export function configFromFlags(f: ServeFlags, activated: ActivatedSockets = new Map()): DaemonConfig {
  const config = configFromFlagsOnly(f, activated.get(f.name ?? 'vol0'));
  applyActivatedSockets(config, activated);
  if (f.discardDirty !== undefined) {
    for (const name of f.discardDirty) {
      if (!config.volumes.some((v) => v.name === name)) throw new Error(`--discard-dirty: no volume named ${JSON.stringify(name)}`);
    }
    config.discardDirty = f.discardDirty;
  }
  return config;
}

function configFromFlagsOnly(f: ServeFlags, activatedFd: number | undefined): DaemonConfig {
  if (f.config !== undefined) {
    let raw: unknown;
    try {
      raw = JSON.parse(fs.readFileSync(f.config, 'utf8'));
    } catch (err) {
      throw new Error(`cannot read config ${f.config}: ${(err as Error).message}`);
    }
    return validateConfig(raw);
  }
  const backing = f.backing ?? f.blkFile;
  if (backing === undefined) throw new Error('give --backing FILE (or --blk-file, or --config FILE)');
  if (f.socketPath !== undefined && f.fd !== undefined) throw new Error('give only one of --socket-path and --fd');
  const fd = f.fd !== undefined ? intFlag(f.fd, '--fd') : f.socketPath === undefined ? activatedFd : undefined;
  if (f.socketPath === undefined && fd === undefined) {
    throw new Error('give --socket-path or --fd (or a systemd socket named after --name)');
  }
  // Raw values as a config file would hold them: validateConfig checks everything once.
  const volume = {
    name: f.name ?? 'vol0',
    ...(f.socketPath !== undefined ? { socketPath: f.socketPath } : {}),
    ...(fd !== undefined ? { fd } : {}),
    socketMode: parseInt(f.socketMode ?? '0600', 8),
    ...(f.socketOwner !== undefined ? { socketOwner: f.socketOwner } : {}),
    ...(f.allowUid !== undefined ? { allowUids: f.allowUid.flatMap((v) => v.split(',')).map((v) => intFlag(v.trim(), '--allow-uid')) } : {}),
    backing,
    ...(f.size !== undefined ? { size: parseSize(f.size, '--size') } : {}),
    readOnly: f.readOnly === true,
    cacheMode: f.cacheMode ?? 'writethrough',
    ...(f.sequentialCutoff !== undefined ? { sequentialCutoff: f.sequentialCutoff } : {}),
    serial: f.serial ?? f.name ?? 'vol0',
    numQueues: intFlag(f.numQueues ?? String(DEFAULTS.numQueues), '--num-queues'),
    queueSize: intFlag(f.queueSize ?? String(DEFAULTS.queueSize), '--queue-size'),
    logicalBlockSize: intFlag(f.logicalBlockSize ?? '512', '--logical-block-size'),
    direct: f.direct === true,
    exclusive: f.exclusive === true,
  };
  const cache =
    f.cache === undefined
      ? null
      : {
          path: f.cache,
          ...(f.cacheSize !== undefined ? { size: f.cacheSize } : {}),
          blockSize: f.cacheBlockSize ?? DEFAULTS.cacheBlockSize,
          segmentSize: f.cacheSegmentSize ?? DEFAULTS.segmentSize,
          ...(f.cacheMetadata !== undefined ? { metadataPath: f.cacheMetadata } : {}),
          ...(f.cacheDirect !== undefined ? { direct: f.cacheDirect } : {}),
        };
  const timeout = Number(f.backingTimeout ?? '60');
  if (!Number.isFinite(timeout) || timeout <= 0) throw new Error(`--backing-timeout: expected seconds > 0, got ${f.backingTimeout}`);
  return validateConfig({
    ...(cache !== null ? { cache } : {}),
    volumes: [volume],
    ...(f.control !== undefined ? { control: f.control } : {}),
    ...(f.metricsListen !== undefined ? { metricsListen: f.metricsListen } : {}),
    ioEngine: f.ioEngine ?? 'auto',
    backingTimeoutMs: Math.round(timeout * 1000),
    flushOnStop: f.flushOnStop === true,
  });
}

/**
 * What --check prints: the configuration as the daemon would run it. A volume given by flags
 * without --socket-path or --fd takes its socket from systemd, which a check run (ExecStartPre)
 * does not get: it is checked as if activated and named in the output (`systemdSocket`).
 */
function checkedConfig(f: ServeFlags): unknown {
  if (f.config !== undefined || f.socketPath !== undefined || f.fd !== undefined) return configFromFlags(f);
  const name = f.name ?? 'vol0';
  const config = configFromFlags(f, new Map([[name, LISTEN_FDS_START]]));
  const volumes = config.volumes.map((v) => {
    const out = { ...v, systemdSocket: name };
    delete out.fd;
    return out;
  });
  return { ...config, volumes };
}

async function serve(f: ServeFlags): Promise<void> {
  if (f.printCapabilities === true) {
    process.stdout.write(`${JSON.stringify(CAPABILITIES)}\n`);
    return;
  }
  if (f.check === true) {
    // Nothing is opened: safe beside a running daemon, e.g. to check an edit before a restart.
    process.stdout.write(`${JSON.stringify(checkedConfig(f), null, 2)}\n`);
    return;
  }
  const activated = takeActivatedSockets();
  const config = configFromFlags(f, activated);
  const dl = createDaemonLogger(f.logLevel, f.logFile, f.logFormat);
  const unusedSockets = [...activated.keys()].filter((name) => !config.volumes.some((v) => v.name === name));
  if (unusedSockets.length > 0) dl.logger.warn({ sockets: unusedSockets }, 'systemd sockets named after no volume are not served');
  await runDaemon(config, dl, { exitWithParent: f.exitWithParent === true });
}

/** `npm start`: a sparse demo image and a cache under a data folder, and the QEMU command to attach. */
async function demo(opts: { data: string; logLevel: string; logFormat: LogFormat }): Promise<void> {
  const dir = path.resolve(opts.data);
  fs.mkdirSync(dir, { recursive: true });
  const socketPath = path.join(dir, 'demo.sock');
  const config = configFromFlags({
    socketPath,
    backing: path.join(dir, 'demo.img'),
    size: '1G',
    name: 'demo',
    serial: 'vbc-demo',
    cache: path.join(dir, 'cache.img'),
    cacheSize: '256M',
    control: path.join(dir, 'control.sock'),
    logLevel: opts.logLevel,
  });
  process.stdout.write(
    [
      `vhost-blk-cache demo: serving ${path.join(dir, 'demo.img')} (1 GiB, sparse) through the cache ${path.join(dir, 'cache.img')}`,
      'Attach a guest with:',
      `  qemu-system-x86_64 -accel kvm:tcg -m 512 -object memory-backend-memfd,id=mem,size=512M,share=on -numa node,memdev=mem \\`,
      `    -chardev socket,id=c0,path=${socketPath},reconnect=1 -device vhost-user-blk-pci,chardev=c0 ...`,
      'Stop with Ctrl-C (the cache is saved and warm on the next start).',
      '',
    ].join('\n'),
  );
  await runDaemon(config, createDaemonLogger(opts.logLevel, undefined, opts.logFormat));
}

function buildProgram(): Command {
  const program = new Command('vhost-blk-cache')
    .description('vhost-user-blk back end with a shared, persistent host-side block cache')
    .enablePositionalOptions()
    .version(VERSION, '-V, --version', 'print the version and exit')
    .option('--print-capabilities', 'print the vhost-user back-end capabilities (JSON) and exit');
  addServeOptions(program).action((flags: ServeFlags) => serve(flags));

  addServeOptions(program.command('serve').description('serve one volume (flags) or many (--config)')).action((flags: ServeFlags) =>
    serve(flags),
  );

  program
    .command('demo')
    .description('serve a demo disk image through a demo cache (creates both under --data)')
    .option('--data <dir>', 'data folder', process.env.VBC_DATA ?? 'data')
    .option('--log-level <level>', 'log level', 'info')
    .addOption(logFormatOption())
    .action((o: { data: string; logLevel: string; logFormat: LogFormat }) => demo(o));
  addControlCommands(program);
  addBenchCommand(program, parseSize);
  return program;
}

const DEFAULT_CONTROL = process.env.VBC_CONTROL ?? 'data/control.sock';

function print(v: unknown): void {
  process.stdout.write(`${JSON.stringify(v, null, 2)}\n`);
}

/** stats / volumes / add-volume / remove-volume: clients of a running daemon's control socket. */
function addControlCommands(program: Command): void {
  const control = new Option('--control <path>', 'control socket of the daemon').default(DEFAULT_CONTROL);
  program
    .command('stats')
    .description('show statistics of a running daemon')
    .addOption(control)
    .option('--json', 'print the raw JSON')
    .option('--watch [seconds]', 'refresh a compact table every N seconds (default 2)')
    .action(async (o: { control: string; json?: boolean; watch?: string | boolean }) => {
      if (o.json === true) return print(await controlJson(o.control, 'GET', '/stats'));
      const interval = o.watch === undefined ? 0 : o.watch === true ? 2 : Number(o.watch);
      if (!Number.isFinite(interval) || interval < 0) throw new Error(`--watch: expected seconds, got ${o.watch}`);
      let prev: DaemonStats | null = null;
      for (;;) {
        const s = (await controlJson(o.control, 'GET', '/stats')) as DaemonStats;
        const table = renderStatsTable(s, prev, interval);
        process.stdout.write(interval > 0 && process.stdout.isTTY ? `\x1b[H\x1b[2J${table}\n` : `${table}\n`);
        if (interval === 0) return;
        prev = s;
        await new Promise((r) => setTimeout(r, interval * 1000));
      }
    });
  program
    .command('volumes')
    .description('list the volumes of a running daemon')
    .addOption(control)
    .action(async (o: { control: string }) => print(await controlJson(o.control, 'GET', '/volumes')));
  program
    .command('add-volume')
    .description('add a volume to a running daemon (JSON as in the config file, or flags)')
    .addOption(control)
    .option('--json <volume>', 'the volume as JSON')
    .option('--name <name>')
    .option('--socket-path <path>')
    .option('--backing <file|uri>')
    .option('--size <bytes>')
    .option('--read-only')
    .option('--exclusive')
    .addOption(new Option('--cache-mode <mode>').choices([...CACHE_MODES]))
    .option('--cache-max-bytes <bytes>')
    .option('--sequential-cutoff <bytes>')
    .option('--serial <id>')
    .option('--num-queues <n>')
    .option('--discard-dirty', "discard the write-back blocks the cache holds for another backing file or image of this volume's name (their data is lost; refused without it)")
    .action(async (o: Record<string, string | boolean | undefined>) => {
      let body: Record<string, unknown>;
      if (typeof o.json === 'string') {
        body = JSON.parse(o.json) as Record<string, unknown>;
      } else {
        body = {};
        for (const k of ['name', 'socketPath', 'backing', 'size', 'cacheMode', 'cacheMaxBytes', 'sequentialCutoff', 'serial']) {
          if (o[k] !== undefined) body[k] = o[k];
        }
        if (o.readOnly === true) body.readOnly = true;
        if (o.exclusive === true) body.exclusive = true;
        if (o.numQueues !== undefined) body.numQueues = intFlag(String(o.numQueues), '--num-queues');
      }
      print(await controlJson(String(o.control), 'POST', `/volumes${o.discardDirty === true ? '?discardDirty=1' : ''}`, body));
    });
  program
    .command('flush <volume>')
    .description("write a write-back volume's dirty blocks back to its backing store (waits until done)")
    .addOption(control)
    .action(async (name: string, o: { control: string }) => print(await controlJson(o.control, 'POST', `/volumes/${encodeURIComponent(name)}/flush`)));
  program
    .command('set-cache-mode <volume> <mode>')
    .description(`switch a volume's cache mode (${CACHE_MODES.join(', ')}); out of writeback it waits until every dirty block is written back`)
    .addOption(control)
    .action(async (name: string, mode: string, o: { control: string }) =>
      print(await controlJson(o.control, 'POST', `/volumes/${encodeURIComponent(name)}/cache-mode`, { mode })),
    );
  program
    .command('remove-volume <name>')
    .description('remove a volume from a running daemon')
    .addOption(control)
    .option('--force', 'remove it even while a front end is connected or write-back blocks are not written back (they stay in the cache)')
    .action(async (name: string, o: { control: string; force?: boolean }) =>
      print(await controlJson(o.control, 'DELETE', `/volumes/${encodeURIComponent(name)}${o.force === true ? '?force=1' : ''}`)),
    );
}

export async function main(argv: string[]): Promise<void> {
  await buildProgram().parseAsync(argv);
}
