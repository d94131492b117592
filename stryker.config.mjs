// Mutation testing of src/cache and src/virtio-blk (README, Development; results in
// docs/mutation.md). One file at a time, selected by VBC_MUTATE:
//   VBC_MUTATE=src/cache/log.ts npm run test:mutation
// Each file runs only the fast suites that cover it (SUITES). The exhaustive race suite
// (races.test.js, minutes per mutant) is left out, and the trust model (model-trust.test.js)
// everywhere but for cached-store.ts (its trust and failure paths have no other fast test);
// the model suite runs its five seeded runs as 1000-operation slices (VBC_MODEL_OPS, inherited
// by the test runner processes; its fixed-size block-size and reproducibility runs, and the trust
// model's replay run, are skipped by MODEL_GREP). `--incremental` reruns only the mutants whose
// code or covering tests changed since the last run of that file. Without VBC_MUTATE every file
// is mutated against all those suites (hours).

import process from 'node:process';

const cache = (names) => names.map((n) => `dist/test/cache/${n}.test.js`);

/** The fast suites that exercise each file. */
const SUITES = {
  'src/cache/cached-store.ts': cache(['cached-store', 'cached-store-trust', 'shared-keys', 'in-flight', 'integrity', 'model', 'daemon-integrity', 'model-trust']),
  'src/cache/log.ts': cache(['log', 'log-races', 'log-durable', 'writeback', 'metadata', 'cached-store', 'integrity', 'model']),
  'src/cache/cache-map.ts': cache(['cache-map', 'writeback', 'bda', 'cached-store', 'metadata', 'integrity', 'model']),
  'src/cache/in-flight.ts': cache(['in-flight', 'cached-store', 'model']),
  'src/virtio-blk/dispatch.ts': ['dist/test/virtio-blk/dispatch.test.js'],
};

/** Every test but the model suites' fixed-size runs (block sizes, same seeds, a seed replays). */
const MODEL_GREP = '^(?!.*(KiB cache blocks|the same seeds give the same run|a seed replays)).*$';

const target = process.env.VBC_MUTATE;
if (target !== undefined && !(target in SUITES)) {
  throw new Error(`VBC_MUTATE=${target}: not one of ${Object.keys(SUITES).join(', ')}`);
}
process.env.VBC_MODEL_OPS ??= '1000';
const name = target !== undefined ? target.replace(/\W+/g, '-') : 'all';

export default {
  packageManager: 'npm',
  testRunner: 'mocha',
  checkers: ['typescript'],
  tsconfigFile: 'tsconfig.json',
  typescriptChecker: { prioritizePerformanceOverAccuracy: true },
  buildCommand: 'tsc -p .',
  mutate: target !== undefined ? [target] : Object.keys(SUITES),
  mochaOptions: { spec: target !== undefined ? SUITES[target] : [...new Set(Object.values(SUITES).flat())], grep: MODEL_GREP },
  coverageAnalysis: 'perTest',
  concurrency: 1,
  timeoutMS: 15000,
  ignorePatterns: ['.vm', 'data', 'reports', '.stryker-tmp*'],
  reporters: ['clear-text', 'progress', 'json'],
  jsonReporter: { fileName: `reports/mutation/${name}.json` },
  incrementalFile: `reports/mutation/${name}.incremental.json`,
  tempDirName: '.stryker-tmp',
  dryRunTimeoutMinutes: 20,
};
