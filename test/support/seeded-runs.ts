/**
 * Which runs a seeded randomized suite makes: its CI list, or the ones an environment variable
 * names, `NAME=SEEDS[:SIZE[:MORE]]` with SEEDS one seed (`7`: what a failure prints to rerun it)
 * or a range (`100..399`: a soak over fresh seeds), SIZE the run's length in the suite's unit
 * and MORE a suite-specific field. `rerun` is the one line a failure prints.
 */
export interface SeededRun {
  seed: number;
  /** The suite's default when the variable does not give one. */
  size: number;
  more?: string;
}

/** The runs `name` asks for, or null when it is unset. */
export function seededRunsFromEnv(name: string, defaultSize: number): SeededRun[] | null {
  const v = process.env[name];
  if (v === undefined || v === '') return null;
  const m = /^(\d+)(?:\.\.(\d+))?(?::(\d+))?(?::([\w-]+))?$/.exec(v);
  if (m === null) throw new Error(`${name}=${v}: want SEED or FIRST..LAST, then optionally :SIZE and :MORE`);
  const first = Number(m[1]);
  const last = m[2] === undefined ? first : Number(m[2]);
  const size = m[3] === undefined ? defaultSize : Number(m[3]);
  const runs: SeededRun[] = [];
  for (let seed = first; seed <= last; seed++) runs.push({ seed, size, ...(m[4] !== undefined ? { more: m[4] } : {}) });
  return runs;
}

/** The command that reruns one run of the suite compiled to `file` (dist/test/...). */
export function rerun(name: string, run: SeededRun, file: string): string {
  return `${name}=${run.seed}:${run.size}${run.more !== undefined ? `:${run.more}` : ''} npx mocha --no-config --exit --timeout 600000 ${file}`;
}
