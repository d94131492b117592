{
  "$schema": "./node_modules/@stryker-mutator/core/schema/stryker-schema.json",
  "_comment": "Mutation testing of src/cache and src/virtio-blk (README, Development). One file at a time: npm run test:mutation -- --mutate src/cache/in-flight.ts; narrow mochaOptions.spec to the tests that cover the file (the race and model suites take minutes per surviving mutant).",
  "packageManager": "npm",
  "testRunner": "mocha",
  "checkers": [
    "typescript"
  ],
  "tsconfigFile": "tsconfig.json",
  "typescriptChecker": {
    "prioritizePerformanceOverAccuracy": true
  },
  "buildCommand": "tsc -p .",
  "mutate": [
    "src/cache/**/*.ts",
    "src/virtio-blk/**/*.ts"
  ],
  "mochaOptions": {
    "spec": [
      "dist/test/cache/*.test.js",
      "dist/test/virtio-blk/*.test.js",
      "dist/test/frontend/ring-resume.test.js"
    ]
  },
  "coverageAnalysis": "perTest",
  "concurrency": 1,
  "timeoutMS": 60000,
  "ignorePatterns": [
    ".vm",
    "data",
    "reports",
    ".stryker-tmp*"
  ],
  "reporters": [
    "clear-text",
    "progress",
    "json"
  ],
  "jsonReporter": {
    "fileName": "reports/mutation/mutation.json"
  },
  "tempDirName": ".stryker-tmp",
  "dryRunTimeoutMinutes": 20
}
