/**
 * Opens a volume's backing store from its `backing` string: an NBD URI (nbd://, nbd+unix://),
 * an RBD image (rbd:POOL/IMAGE[@SNAP][:conf=PATH][:id=USER]) or a path to a raw image file or
 * block device; with `backingOffset` / `backingLength`, a window of it (WindowStore).
 */
import type { VolumeConfig } from '../config/config';
import type { IoEngine } from '../io/io-engine';
import { VhostError } from '../native/errors';
import type { Logger } from '../util/logger';
import type { BackingStore } from './backing-store';
import { FileStore } from './file-store';
import { NbdStore } from './nbd/nbd-store';
import { RbdStore } from './rbd/rbd-store';
import { isRbdSpec } from './rbd/spec';
import { WindowStore } from './window-store';

export interface OpenContext {
  engine: IoEngine;
  backingTimeoutMs: number;
  logger: Logger;
}

/**
 * Whether `backing` is for the NBD URI parser: every nbd* scheme, in any case (nbds://, nbd+vsock://
 * included, so that the parser rejects what the client does not support instead of the string
 * being taken as a file path).
 */
export function isNbdUri(backing: string): boolean {
  return /^nbd[a-z0-9+.-]*:\/\//i.test(backing);
}

export async function openBackingStore(cfg: VolumeConfig, ctx: OpenContext): Promise<BackingStore> {
  const store = await openWholeStore(cfg, ctx);
  if (cfg.backingOffset === undefined && cfg.backingLength === undefined) return store;
  const offset = cfg.backingOffset ?? 0;
  const length = cfg.backingLength ?? store.size - offset;
  if (length <= 0 || offset + length > store.size) {
    await store.close();
    throw new VhostError(`${cfg.backing}: window ${offset}+${length} does not fit the store's ${store.size} bytes`, 'EINVAL');
  }
  return new WindowStore(store, offset, length);
}

async function openWholeStore(cfg: VolumeConfig, ctx: OpenContext): Promise<BackingStore> {
  if (isNbdUri(cfg.backing)) {
    const store = await NbdStore.open(cfg.backing, { backingTimeoutMs: ctx.backingTimeoutMs, logger: ctx.logger, connections: 4 });
    if (cfg.logicalBlockSize % store.blockSize !== 0) {
      await store.close();
      throw new VhostError(
        `${cfg.backing}: the server's minimum block size ${store.blockSize} does not divide the logical block size ${cfg.logicalBlockSize}`,
        'EINVAL',
      );
    }
    return store;
  }
  if (isRbdSpec(cfg.backing)) {
    return RbdStore.open(cfg.backing, { readOnly: cfg.readOnly, backingTimeoutMs: ctx.backingTimeoutMs, logger: ctx.logger });
  }
  return FileStore.open(cfg.backing, {
    readOnly: cfg.readOnly,
    direct: cfg.direct,
    ...(cfg.size !== undefined ? { createSize: cfg.size } : {}),
    engine: ctx.engine,
  });
}
