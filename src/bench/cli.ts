/**
 * The frame every side-by-side benchmark (bench/*.ts) shares, written once:
 * - parseBenchArgs(): --runtime S, --reps N and the benchmark's own numeric options (sizes in
 *   MiB, depths) checked to be positive numbers, --dir DIR (default: a new temporary folder), and
 *   the effective command line to print (every option with its value, defaults included);
 *   --help prints the options with their defaults and exits; benchPositionals() does the same
 *   for the micro-benchmarks that take positional arguments;
 * - openBench(): the working folder, the targets to stop (last started first) and the commands
 *   to print; report() prints the machine's load at start and end and the commands, close()
 *   stops the targets and removes a temporary folder;
 * - benchMain(): runs main(), prints a failure's stack and sets the exit code.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { machineNote } from './measure';
import { benchDir, type Target } from './targets';

type ExtraOptions = NonNullable<ParseArgsConfig['options']>;

export interface BenchArgs<K extends string> {
  /** Each numeric option, checked. */
  num: Record<K | 'runtime' | 'reps', number>;
  /** --dir, when given. */
  dir: string | undefined;
  /** The benchmark's other options as parseArgs returns them. */
  values: Record<string, string | boolean | (string | boolean)[] | undefined>;
  /** `node dist/bench/NAME.js` with every numeric option and every defaulted one, as run. */
  command: string;
}

export function parseBenchArgs<K extends string>(
  defaults: Record<K, number> & { runtime: number; reps: number },
  extra: ExtraOptions = {},
  argv: readonly string[] = process.argv.slice(2),
): BenchArgs<K> {
  const options: ExtraOptions = { ...extra, dir: { type: 'string' } };
  for (const [name, def] of Object.entries<number>(defaults)) options[name] = { type: 'string', default: String(def) };
  const script = path.basename(process.argv[1] ?? 'bench.js');
  exitOnHelp(benchUsage(script, options), argv);
  const { values } = parseArgs({ args: [...argv], options });
  const num = {} as Record<K | 'runtime' | 'reps', number>;
  for (const name of Object.keys(defaults) as (K | 'runtime' | 'reps')[]) num[name] = positiveNumber(values[name], `--${name}`);
  const shown = Object.keys(options).filter((k) => options[k]?.default !== undefined || (k === 'dir' && values.dir !== undefined));
  const command = [`node dist/bench/${script}`, ...shown.map((k) => `--${k} ${String(values[k])}`)].join(' ');
  return { num, dir: values.dir as string | undefined, values, command };
}

/** `v` as a number, which must be finite and above 0 (`what` names it in the error). */
export function positiveNumber(v: unknown, what: string): number {
  const n = typeof v === 'string' && v.trim() !== '' ? Number(v) : NaN;
  if (!Number.isFinite(n) || n <= 0) throw new Error(`${what} must be a positive number, not '${String(v)}'`);
  return n;
}

/**
 * Prints `usage` and exits when the arguments ask for --help (or -h), before a benchmark with
 * its own strict parseArgs refuses them as unknown.
 */
export function exitOnHelp(usage: string, argv: readonly string[] = process.argv.slice(2)): void {
  if (!argv.includes('--help') && !argv.includes('-h')) return;
  process.stdout.write(`${usage}\n`);
  process.exit(0);
}

/**
 * The positional arguments of a benchmark run as `node dist/bench/NAME.js [A [B ...]]` (the
 * micro-benchmarks): --help or -h prints `usage` and exits; an option or more arguments than
 * `defaults` is refused; missing ones take their defaults (as strings, for the caller to check).
 */
export function benchPositionals(usage: string, defaults: readonly string[], argv: readonly string[] = process.argv.slice(2)): string[] {
  exitOnHelp(usage, argv);
  const option = argv.find((a) => a.startsWith('-'));
  if (option !== undefined) throw new Error(`unknown option '${option}'\n${usage}`);
  if (argv.length > defaults.length) throw new Error(`at most ${defaults.length} arguments\n${usage}`);
  return defaults.map((d, i) => argv[i] ?? d);
}

/** --help: every option, with its default (numbers: --runtime in s, sizes in MiB). */
export function benchUsage(script: string, options: ExtraOptions): string {
  const lines = [`Usage: node dist/bench/${script} [options]`, '', 'Options (default):'];
  for (const [name, o] of Object.entries(options)) {
    const arg = o.type === 'boolean' ? '' : name === 'dir' ? ' DIR' : ' VALUE';
    const def = o.default !== undefined ? ` (${String(o.default)})` : name === 'dir' ? ' (a new temporary folder, removed at the end)' : '';
    lines.push(`  --${name}${arg}${def}`);
  }
  lines.push('  --help');
  return lines.join('\n');
}

export interface BenchRun {
  readonly dir: string;
  /** Long-lived targets: their commands are printed by report(); close() stops them, last first. */
  readonly targets: Target[];
  /** Further command lines report() prints (e.g. one daemon started per repetition). */
  readonly commands: string[];
  /** Prints the load at start and now, then the commands (targets', then `commands`, then the benchmark's). */
  report(): void;
  /** Stops the targets and removes the folder unless --dir named it. */
  close(): Promise<void>;
}

export function openBench(args: BenchArgs<string>, tag = ''): BenchRun {
  const loadBefore = machineNote();
  const dir = benchDir(args.dir, tag);
  const targets: Target[] = [];
  const commands: string[] = [];
  return {
    dir,
    targets,
    commands,
    report(): void {
      process.stdout.write(`\nMachine at start: ${loadBefore}\nMachine at end:   ${machineNote()}\n\nCommands:\n\n`);
      for (const c of [...targets.map((t) => t.command), ...commands, args.command]) process.stdout.write(`    ${c}\n`);
    },
    async close(): Promise<void> {
      for (const t of [...targets].reverse()) await t.stop();
      if (args.dir === undefined) fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Runs a benchmark's main(); a failure prints its stack and sets the exit code. */
export function benchMain(main: () => Promise<void>): void {
  main().catch((err: unknown) => {
    process.stderr.write(`${(err as Error).stack ?? String(err)}\n`);
    process.exitCode = 1;
  });
}
