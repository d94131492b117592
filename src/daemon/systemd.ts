/**
 * systemd conventions (sd_listen_fds(3), sd_notify(3)), without libsystemd:
 *
 * - Socket activation: when LISTEN_PID is our pid, LISTEN_FDS sockets start at fd 3 and
 *   LISTEN_FDNAMES (colon-separated, FileDescriptorName= of the .socket unit) names them. A
 *   volume takes the socket named after it (its socketPath, if any, is then not created). The
 *   variables are removed from the environment once read, so children do not inherit them.
 * - Notification: when NOTIFY_SOCKET is set, READY=1 once every volume listens and STOPPING=1
 *   when a shutdown starts, as one datagram each (native sendUnixDatagram; Node has no unix
 *   datagram sockets).
 */
import type { DaemonConfig } from '../config/config';
import { native } from '../native/binding';
import type { Logger } from '../util/logger';

/** The first inherited fd (SD_LISTEN_FDS_START). */
export const LISTEN_FDS_START = 3;

/** Inherited sockets by name (an unnamed socket is called "unknown", as systemd does). */
export type ActivatedSockets = Map<string, number>;

/** Reads and removes LISTEN_PID / LISTEN_FDS / LISTEN_FDNAMES; empty when not activated. */
export function takeActivatedSockets(env: NodeJS.ProcessEnv = process.env, pid = process.pid): ActivatedSockets {
  const out: ActivatedSockets = new Map();
  const listenPid = env.LISTEN_PID;
  const count = Number(env.LISTEN_FDS ?? '0');
  const names = (env.LISTEN_FDNAMES ?? '').split(':');
  delete env.LISTEN_PID;
  delete env.LISTEN_FDS;
  delete env.LISTEN_FDNAMES;
  if (listenPid === undefined || Number(listenPid) !== pid || !Number.isInteger(count) || count <= 0) return out;
  for (let i = 0; i < count; i++) {
    const name = names[i] !== undefined && names[i] !== '' ? (names[i] as string) : 'unknown';
    if (!out.has(name)) out.set(name, LISTEN_FDS_START + i);
  }
  return out;
}

/** Gives each volume named like an activated socket that socket (fd instead of socketPath). */
export function applyActivatedSockets(config: DaemonConfig, sockets: ActivatedSockets): void {
  config.volumes = config.volumes.map((v) => {
    const fd = sockets.get(v.name);
    if (fd === undefined) return v;
    const next = { ...v, fd };
    delete next.socketPath;
    return next;
  });
}

/** sd_notify: one state string ("READY=1") to $NOTIFY_SOCKET; failures are logged, never thrown. */
export function notifySystemd(state: string, log: Logger, env: NodeJS.ProcessEnv = process.env): void {
  const path = env.NOTIFY_SOCKET;
  if (path === undefined || path === '') return;
  try {
    native.sendUnixDatagram(path, Buffer.from(state));
  } catch (err) {
    log.warn({ notifySocket: path, state, err: (err as Error).message }, 'sd_notify failed');
  }
}
