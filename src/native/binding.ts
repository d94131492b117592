/**
 * Loads the C++ addon (built by node-gyp into build/Release) and registers the JS error class
 * it uses to build errors. Every other module imports the addon from here, typed by the
 * interfaces in ./types.ts.
 */
import * as path from 'node:path';
import { VhostError } from './errors';
import type { NativeAddon } from './types';

function load(): NativeAddon {
  const root = path.resolve(__dirname, '..', '..', '..');
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const addon = require(path.join(root, 'build', 'Release', 'vhost_blk_cache.node')) as NativeAddon;
  addon.setErrorClass(VhostError);
  return addon;
}

export const native: NativeAddon = load();
