/** Assertions shared by the suites. */
import * as assert from 'node:assert/strict';
import { VhostError } from '../../src/native/errors';

/** Asserts that `p` rejects with a VhostError whose code is `code`. */
export async function rejectsWithCode(p: Promise<unknown>, code: string): Promise<void> {
  await assert.rejects(p, (err: unknown) => {
    assert.ok(err instanceof VhostError, `expected VhostError, got ${String(err)}`);
    assert.equal(err.code, code);
    return true;
  });
}
