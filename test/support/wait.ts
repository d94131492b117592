/**
 * Waiting for a condition instead of a duration: `waitFor` re-checks `cond` on every timer turn
 * (a few ms apart) until it holds, and fails with `what` after `timeoutMs` (a hang, not a pace).
 */
export async function waitFor(cond: () => boolean, what: string, timeoutMs = 10000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise<void>((r) => setTimeout(r, 5));
  }
}
