/**
 * Control socket: HTTP/1.1 over a unix socket (mode 0600), for operators and the CLI.
 *
 *   GET    /stats            JSON: totals, cache, per-volume statistics
 *   GET    /metrics          Prometheus text format (prom-client)
 *   GET    /volumes          JSON: the volumes and their configuration
 *   POST   /volumes          body: a volume object as in the config file; adds it at runtime;
 *                            ?discardDirty=1 discards write-back blocks the cache holds for
 *                            another backing object of that name (answered: discardedDirty)
 *   POST   /volumes/NAME/flush       destages the volume's write-back blocks (waits until done)
 *   POST   /volumes/NAME/cache-mode  body {"mode": MODE}: switches the cache mode; out of
 *                                    write-back it answers once every dirty block is destaged
 *   DELETE /volumes/NAME     removes a volume; ?force=1 even with a connected front end
 *
 * Errors answer JSON {error, code} with 400 (bad input), 404, 409 (busy/exists) or 500.
 */
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import { CACHE_MODES, type CacheMode, validateVolume } from '../config/config';
import type { ControlledDaemon } from './daemon-api';
import { VhostError } from '../native/errors';
import type { Logger } from '../util/logger';
import { createMetrics } from './metrics';

const MAX_BODY = 64 * 1024;

/** Fails with EADDRINUSE if something answers on `socketPath`; removes a stale socket file. */
async function claimSocketPath(socketPath: string): Promise<void> {
  if (!fs.existsSync(socketPath)) return;
  const live = await new Promise<boolean>((resolve) => {
    const c = net.createConnection(socketPath);
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
  if (live) throw new VhostError(`${socketPath} is in use by another process`, 'EADDRINUSE');
  fs.unlinkSync(socketPath);
}

function statusFor(code: string): number {
  switch (code) {
    case 'ECONFIG':
    case 'EINVAL':
      return 400;
    case 'ENOENT':
      return 404;
    case 'EBUSY':
    case 'EEXIST':
    case 'EADDRINUSE':
      return 409;
    default:
      return 500;
  }
}

function send(res: http.ServerResponse, status: number, body: unknown, type = 'application/json'): void {
  const text = type === 'application/json' ? `${JSON.stringify(body, null, 2)}\n` : String(body);
  res.writeHead(status, { 'content-type': type, 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

function readBody(req: http.IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > MAX_BODY) {
        reject(new VhostError('request body too large', 'EINVAL'));
        req.destroy();
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

/** A boolean query parameter (`?force=1`, `?force=true`). */
function flag(url: URL, name: string): boolean {
  const v = url.searchParams.get(name);
  return v === '1' || v === 'true';
}

async function readJson(req: http.IncomingMessage): Promise<unknown> {
  const body = await readBody(req);
  try {
    return JSON.parse(body) as unknown;
  } catch (err) {
    throw new VhostError(`body is not JSON: ${(err as Error).message}`, 'EINVAL');
  }
}

export class ControlServer {
  private constructor(
    private readonly server: http.Server,
    readonly socketPath: string,
  ) {}

  static async start(socketPath: string, daemon: ControlledDaemon, log: Logger): Promise<ControlServer> {
    await claimSocketPath(socketPath);
    const metrics = createMetrics(daemon);
    const server = http.createServer((req, res) => {
      handle(req, res).catch((err: unknown) => {
        const e = err as VhostError;
        const code = typeof e.code === 'string' ? e.code : 'EIO';
        send(res, statusFor(code), { error: e.message, code });
      });
    });
    async function handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
      const url = new URL(req.url ?? '/', 'http://localhost');
      const route = `${req.method} ${url.pathname}`;
      log.debug({ route }, 'control request');
      if (route === 'GET /stats') return send(res, 200, daemon.stats());
      if (route === 'GET /metrics') return send(res, 200, await metrics.registry.metrics(), metrics.registry.contentType);
      if (route === 'GET /volumes') {
        return send(res, 200, daemon.volumeNames().map((n) => daemon.getVolume(n)?.config));
      }
      if (route === 'POST /volumes') {
        const discardDirty = flag(url, 'discardDirty');
        const vol = await daemon.addVolume(validateVolume(await readJson(req), 'volume'), { discardDirty });
        log.info({ volume: vol.name }, 'volume added through the control socket');
        return send(res, 201, discardDirty ? { ...vol.config, discardedDirty: vol.discardedDirty } : vol.config);
      }
      const f = /^POST \/volumes\/([^/]+)\/flush$/.exec(route);
      if (f !== null) {
        const name = decodeURIComponent(f[1] as string);
        const r = await daemon.flushVolume(name);
        log.info({ volume: name, ...r }, 'volume destaged through the control socket');
        return send(res, 200, { flushed: name, ...r });
      }
      const c = /^POST \/volumes\/([^/]+)\/cache-mode$/.exec(route);
      if (c !== null) {
        const name = decodeURIComponent(c[1] as string);
        const mode = ((await readJson(req)) as { mode?: unknown } | null)?.mode;
        if (!CACHE_MODES.includes(mode as CacheMode)) throw new VhostError(`mode: must be one of ${CACHE_MODES.join(', ')}, got ${JSON.stringify(mode)}`, 'EINVAL');
        const r = await daemon.setCacheMode(name, mode as CacheMode);
        log.info({ volume: name, mode, ...r }, 'cache mode switched through the control socket');
        return send(res, 200, { volume: name, mode, ...r });
      }
      const m = /^DELETE \/volumes\/([^/]+)$/.exec(route);
      if (m !== null) {
        const name = decodeURIComponent(m[1] as string);
        const force = flag(url, 'force');
        await daemon.removeVolume(name, force);
        log.info({ volume: name, force }, 'volume removed through the control socket');
        return send(res, 200, { removed: name });
      }
      return send(res, 404, { error: `no route ${route}`, code: 'ENOENT' });
    }
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      // listen() binds synchronously: under this umask the socket is never reachable by others
      // (the chmod below then only confirms the mode).
      const umask = process.umask(0o177);
      try {
        server.listen(socketPath, () => {
          server.off('error', reject);
          resolve();
        });
      } finally {
        process.umask(umask);
      }
    });
    fs.chmodSync(socketPath, 0o600);
    log.info({ control: socketPath }, 'control socket listening');
    return new ControlServer(server, socketPath);
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      this.server.close(() => {
        fs.rmSync(this.socketPath, { force: true });
        resolve();
      });
      this.server.closeAllConnections();
    });
  }
}
