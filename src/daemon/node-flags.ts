/**
 * The Node/V8 flags the daemon runs with. The installed command passes them from its shebang
 * (bin/vhost-blk-cache: `#!/usr/bin/env -S node FLAGS`), the benchmarks pass them when they spawn
 * the daemon, and a test keeps the shebang equal to this list. A running daemon cannot set them
 * itself: V8 reads them when it sizes the heap, before any of our code runs.
 *
 * --initial-old-space-size: with V8's default start limit the daemon's 10-13 MiB heap was
 * fully collected every ~2 s under SPC-1 (30 mark-compacts a minute, pauses up to 46 ms on the
 * 2-core VM); starting the old generation at 64 MiB leaves it to the young-generation scavenges
 * (no mark-compact in a 60 s run, one every ~13 s after the first at 107 s), halving GC time
 * (docs/benchmarks.md, "GC pauses in the SPC-1 tail"). Costs up to ~50 MiB more resident heap.
 */
export const DAEMON_NODE_FLAGS: readonly string[] = ['--initial-old-space-size=64'];
