/**
 * Engine selection: io_uring where the kernel allows it, else the libuv threadpool.
 */
import { native } from '../native/binding';
import { VhostError } from '../native/errors';
import type { IoUringProbe } from '../native/types';
import { FsEngine } from './fs-engine';
import type { IoEngine } from './io-engine';
import { UringEngine, type UringEngineOptions } from './uring-engine';

export type { IoEngine } from './io-engine';
export { FsEngine } from './fs-engine';
export { UringEngine } from './uring-engine';

export type IoEnginePreference = 'auto' | 'io_uring' | 'threadpool';

/** Whether io_uring can be used here, and why not (for the log line of a fallback). */
export function probeIoUring(): IoUringProbe {
  return native.IoRing.probe();
}

/**
 * 'auto': io_uring when probeIoUring() says so, else the threadpool. 'io_uring': throws
 * VhostError (the probe's errno name) when it is unavailable. 'threadpool': node:fs.
 * `probeWith` replaces the probe (tests of the fallback on a kernel that has io_uring).
 */
export function createIoEngine(
  preference: IoEnginePreference = 'auto',
  options: UringEngineOptions = {},
  probeWith: () => IoUringProbe = probeIoUring,
): IoEngine {
  if (preference === 'threadpool') return new FsEngine();
  const probe = probeWith();
  if (probe.supported) return new UringEngine(options);
  if (preference === 'io_uring') {
    throw new VhostError(`io_uring unavailable: ${probe.reason ?? 'unknown'}`, probe.code ?? 'EOPNOTSUPP');
  }
  return new FsEngine();
}
