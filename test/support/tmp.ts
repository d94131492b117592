/** Temporary directories of the suites: one place for the naming (vbc-<tag>-XXXXXX in $TMPDIR). */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

/** Creates a fresh directory under the OS temp dir; the caller removes it. */
export function tmpDir(tag: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), `vbc-${tag}-`));
}
