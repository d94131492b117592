/**
 * The package's version (package.json's `version`), read once: `vhost-blk-cache --version`, the
 * daemon's "ready" log line, `version` in GET /stats and the `vbc_build_info` metric. A copy of
 * the compiled tree without its package.json still runs: its version reads 'unknown'.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

function readVersion(): string {
  // package.json sits at the package root, three levels above dist/src/util/.
  try {
    const v = (JSON.parse(fs.readFileSync(path.join(__dirname, '..', '..', '..', 'package.json'), 'utf8')) as { version?: unknown }).version;
    return typeof v === 'string' ? v : 'unknown';
  } catch {
    return 'unknown';
  }
}

export const VERSION: string = readVersion();
