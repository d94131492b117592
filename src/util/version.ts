/**
 * The package's version (package.json's `version`), read once: `vhost-blk-cache --version`, the
 * daemon's "ready" log line, `version` in GET /stats and the `vbc_build_info` metric.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

/** package.json sits at the repository root, three levels above dist/src/util/. */
export const VERSION: string = (JSON.parse(fs.readFileSync(path.join(__dirname, '..', '..', '..', 'package.json'), 'utf8')) as { version: string }).version;
