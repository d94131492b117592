/**
 * Exhaustive interleaving explorer. A run is a sequence of events; at each point the enabled
 * events are: start each actor not yet started (in actor order), then for each held operation
 * (held-io.ts, in issue order) its effect step or, once that ran, its completion. `explore`
 * replays the scenario from scratch once per distinct sequence of choices (depth-first,
 * backtracking on the last choice that has an untried alternative) until every interleaving
 * ran, and calls `check` after each. A failure names the schedule that produced it.
 */
import { type Held, type HeldIo, settle } from './held-io';

export interface Actor {
  label: string;
  /** Starts the operation; the promise settles when it is done. */
  start(): Promise<unknown>;
}

export interface Run {
  io: HeldIo;
  actors: Actor[];
  /** Called after every event (e.g. to snapshot the backing store). */
  observe?(event: number): void;
}

export interface RunResult {
  /** Event labels, in order. */
  schedule: string[];
  /** For each actor: the event index at which it started and at which its promise settled. */
  started: number[];
  settled: number[];
  /** Actor results or errors, by actor. */
  results: unknown[];
  errors: unknown[];
}

/** Runs one interleaving: `choices[i]` picks the i-th event (0 past the end); records counts. */
async function runOnce(run: Run, choices: readonly number[], counts: number[]): Promise<RunResult> {
  const n = run.actors.length;
  const res: RunResult = {
    schedule: [],
    started: new Array<number>(n).fill(-1),
    settled: new Array<number>(n).fill(-1),
    results: new Array<unknown>(n),
    errors: new Array<unknown>(n),
  };
  let event = 0;
  for (;;) {
    await settle();
    const enabled: { label: string; fire: () => void }[] = [];
    run.actors.forEach((a, j) => {
      if (res.started[j] >= 0) return;
      enabled.push({
        label: `start ${a.label}`,
        fire: () => {
          res.started[j] = event;
          a.start().then(
            (v) => {
              res.results[j] = v;
              res.settled[j] = event;
            },
            (err: unknown) => {
              res.errors[j] = err;
              res.settled[j] = event;
            },
          );
        },
      });
    });
    for (const h of [...run.io.pending] as Held[]) {
      if (!h.done) enabled.push({ label: `effect ${h.label}`, fire: () => h.effect() });
      else enabled.push({ label: `complete ${h.label}`, fire: () => h.complete() });
    }
    if (enabled.length === 0) break;
    const i = counts.length;
    const pick = i < choices.length ? choices[i] : 0;
    counts.push(enabled.length);
    const e = enabled[pick];
    res.schedule.push(e.label);
    event++;
    e.fire();
    await settle();
    run.observe?.(event);
  }
  const stuck = run.actors.filter((_, j) => res.settled[j] < 0).map((a) => a.label);
  if (stuck.length > 0) throw new Error(`actors never finished: ${stuck.join(', ')}\n  ${res.schedule.join('\n  ')}`);
  return res;
}

/**
 * Runs every interleaving of the scenario `make()` builds (a fresh one per run); `check` throws
 * on a wrong outcome. Resolves with the number of interleavings run.
 */
export async function explore(make: () => Promise<Run>, check: (r: RunResult, run: Run) => Promise<void>, limit = 20000): Promise<number> {
  let choices: number[] = [];
  let runs = 0;
  for (;;) {
    const counts: number[] = [];
    const run = await make();
    const r = await runOnce(run, choices, counts);
    runs++;
    if (process.env.VBC_RACE_TRACE) console.log(`--- ${runs}\n  ${r.schedule.join('\n  ')}`);
    try {
      await check(r, run);
    } catch (err) {
      (err as Error).message += `\n  interleaving ${runs}:\n    ${r.schedule.join('\n    ')}`;
      throw err;
    }
    let i = counts.length - 1;
    while (i >= 0 && (i < choices.length ? choices[i] : 0) + 1 >= counts[i]) i--;
    if (i < 0) return runs;
    if (runs >= limit) throw new Error(`more than ${limit} interleavings: shrink the scenario`);
    const next: number[] = [];
    for (let k = 0; k < i; k++) next.push(k < choices.length ? choices[k] : 0);
    next.push((i < choices.length ? choices[i] : 0) + 1);
    choices = next;
  }
}
