/**
 * Loads the C++ addon (built by node-gyp into build/Release) and registers the JS error class
 * it uses to build errors. Every other module imports the addon from here, typed by the
 * interfaces in ./types.ts.
 *
 * The addon detaches ArrayBuffers (guest memory windows, when a front end goes away). V8
 * assumes no ArrayBuffer was ever detached until one is (its ArrayBufferDetaching protector),
 * and the first detach throws away all optimized code that relied on it: the whole hot path,
 * re-optimized over the following seconds under load. Detaching one buffer here, before any
 * code is optimized, makes that happen at start instead of at the first guest disconnect.
 */
import * as path from 'node:path';
import { VhostError } from './errors';
import type { NativeAddon } from './types';

function load(): NativeAddon {
  const root = path.resolve(__dirname, '..', '..', '..');
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const addon = require(path.join(root, 'build', 'Release', 'vhost_blk_cache.node')) as NativeAddon;
  addon.setErrorClass(VhostError);
  const detached = new ArrayBuffer(0);
  structuredClone(detached, { transfer: [detached] });
  return addon;
}

export const native: NativeAddon = load();
