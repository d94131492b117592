#!/usr/bin/env bash
# Developer tool: checks that a fresh clone passes the README's commands on a machine that has only
# Node 20 + npm, g++, make, python3, git, ca-certificates and sudo (issue 11, item 1).
#
#   sudo scripts/fresh-machine-check.sh [root|user|noapt|all]...     (default: all)
#
# - A Debian 12 root is built once with debootstrap in $FRESH_ROOT/base (default /work/fresh-root)
#   with those packages and this host's Node install (the node binary, npm, its headers), and a
#   user `dev` with password-less sudo. Each step runs in a fresh copy of it, $FRESH_ROOT/run
#   (a plain copy, not an overlay: the tests look at the file system, e.g. FS_IOC_GETVERSION),
#   with /dev, /dev/pts, /dev/shm, /proc, /sys bound; downloaded .deb files are kept in
#   $FRESH_ROOT/apt-archives between runs.
# - The code checked is this repository's HEAD commit (git clone: uncommitted changes are not seen).
# - Steps (logs and times in $FRESH_ROOT/logs/): `noapt` runs scripts/setup-tests.sh with apt-get
#   hidden and expects it to name the missing tools; `root` runs, as root, `npm install && npm start`
#   (until the daemon answers `stats` on its control socket, then Ctrl-C) and `npm test`; `user`
#   runs, as `dev` (a login shell), `npm ci` and `npm run test:unit`, and `npm test` when
#   FRESH_USER_FULL=1 (its loop-device and socket-owner tests need root and fail there).
# - Where nodejs.org cannot be reached (a sandbox), node-gyp's header download is replaced by
#   seeding its cache with this host's Node headers (the same files the download would give).
# Needs root on the host (debootstrap, mount, chroot); the host's packages are not touched
# beyond installing debootstrap when it is missing. Everything is unmounted at exit.
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROOT="${FRESH_ROOT:-/work/fresh-root}"
MIRROR="${FRESH_MIRROR:-http://deb.debian.org/debian}"
BASE="$ROOT/base" MNT="$ROOT/run" LOGS="$ROOT/logs"
STEPS=("${@:-all}")
[[ " ${STEPS[*]} " == *" all "* ]] && STEPS=(noapt root user)
say() { echo "fresh-machine-check: $*" >&2; }
[[ "$(id -u)" -eq 0 ]] || { say "run as root (debootstrap, mount, chroot)"; exit 1; }

build_base() {
  [[ -f "$BASE/.fresh-base" ]] && return
  if ! [[ -f "$BASE/.fresh-debootstrap" ]]; then
    command -v debootstrap >/dev/null || apt-get install -y -qq debootstrap >/dev/null
    say "debootstrap Debian 12 into $BASE (a few minutes)"
    rm -rf "$BASE" && mkdir -p "$BASE"
    nice debootstrap --include=g++,make,python3,git,ca-certificates,sudo bookworm "$BASE" "$MIRROR" >"$ROOT/debootstrap.log" 2>&1 ||
      { say "debootstrap failed, see $ROOT/debootstrap.log"; exit 1; }
    touch "$BASE/.fresh-debootstrap"
  fi
  # This host's Node (Debian 12's nodejs is 18): the binary, npm (+ npx), the headers.
  local node prefix
  node="$(readlink -f "$(command -v node)")"
  prefix="$(dirname "$(dirname "$node")")"
  install -D "$node" "$BASE/usr/bin/node"
  mkdir -p "$BASE/usr/lib/node_modules" "$BASE/usr/include"
  cp -a "$prefix/lib/node_modules/npm" "$BASE/usr/lib/node_modules/"
  [[ -d "$prefix/include/node" ]] && cp -a "$prefix/include/node" "$BASE/usr/include/"
  ln -sf ../lib/node_modules/npm/bin/npm-cli.js "$BASE/usr/bin/npm"
  ln -sf ../lib/node_modules/npm/bin/npx-cli.js "$BASE/usr/bin/npx"
  chroot "$BASE" useradd -m -s /bin/bash -G sudo dev
  echo 'dev ALL=(ALL) NOPASSWD: ALL' >"$BASE/etc/sudoers.d/dev" && chmod 440 "$BASE/etc/sudoers.d/dev"
  printf '127.0.0.1 localhost\n127.0.1.1 %s\n::1 localhost ip6-localhost ip6-loopback\n' "$(hostname)" >"$BASE/etc/hosts"
  touch "$BASE/.fresh-base"
}

MOUNTS=()
cleanup() {
  local i
  for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do umount -l "${MOUNTS[i]}" 2>/dev/null || true; done
}
trap cleanup EXIT

mount_fresh() {
  if grep -q " $MNT/" /proc/mounts; then say "still mounted under $MNT (umount them first)"; exit 1; fi
  rm -rf --one-file-system "$MNT" && mkdir -p "$LOGS" "$ROOT/apt-archives"
  cp -a "$BASE" "$MNT"
  local d
  for d in dev dev/pts dev/shm proc sys; do
    mount --bind "/$d" "$MNT/$d" && MOUNTS+=("$MNT/$d")
  done
  mount --bind "$ROOT/apt-archives" "$MNT/var/cache/apt/archives" && MOUNTS+=("$MNT/var/cache/apt/archives")
  cp -L /etc/resolv.conf "$MNT/etc/resolv.conf"
  # The network as this host sees it: CAs it added (a TLS-intercepting proxy in a sandbox) are
  # trusted in the root too, by the system store and by Node (NODE_EXTRA_CA_CERTS, as here).
  if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$MNT/usr/local/share/ca-certificates/"
    chroot "$MNT" update-ca-certificates >/dev/null 2>&1
  fi
  [[ -z "${NODE_EXTRA_CA_CERTS:-}" ]] || echo "NODE_EXTRA_CA_CERTS=$NODE_EXTRA_CA_CERTS" >>"$MNT/etc/environment"
  # Sandbox stand-in for node-gyp's download of the headers (see the header comment).
  local v
  v="$(node -p 'process.version.slice(1)')"
  if ! node -e "require('https').get(process.release.headersUrl, (r) => process.exit(r.statusCode < 400 ? 0 : 1)).on('error', () => process.exit(1)).setTimeout(10000, () => process.exit(1))"; then
    say "nodejs.org unreachable: seeding node-gyp's header cache with this host's Node headers"
    for home in root home/dev; do
      mkdir -p "$MNT/$home/.cache/node-gyp/$v/include"
      cp -a "$BASE/usr/include/node" "$MNT/$home/.cache/node-gyp/$v/include/"
      echo 11 >"$MNT/$home/.cache/node-gyp/$v/installVersion"
    done
    chroot "$MNT" chown -R dev:dev /home/dev/.cache
  fi
}

# as USER, in a login shell in the clone: the command, with its log and time
run_in() {
  local user="$1" name="$2" cmd="$3" home start rc=0
  home="$([[ "$user" == root ]] && echo /root || echo "/home/$user")"
  start=$(date +%s)
  say "$name ($user): $cmd"
  nice -n 10 chroot "$MNT" env -i TERM=dumb su - "$user" -c "cd $home/vhost-blk-cache && $cmd" >"$LOGS/$name.log" 2>&1 || rc=$?
  say "$name: exit $rc in $(($(date +%s) - start)) s (log $LOGS/$name.log)"
  grep -E '^ +[0-9]+ (passing|failing|pending)' "$LOGS/$name.log" | sed 's/^ */    /' >&2 || true
  return "$rc"
}

clone_for() {
  local user="$1" home
  home="$([[ "$user" == root ]] && echo /root || echo "/home/$user")"
  git clone -q "$REPO_DIR" "$MNT$home/vhost-blk-cache"
  chroot "$MNT" chown -R "$user:" "$home/vhost-blk-cache"
}

# `npm install && npm start`, then wait until the daemon answers on its control socket, Ctrl-C it
# and expect a clean stop.
start_demo() {
  local user="$1" log="$LOGS/$1-npm-start.log" pid i rc=0 start
  start=$(date +%s)
  say "npm-start ($user): npm install && npm start"
  # shellcheck disable=SC2016
  setsid chroot "$MNT" env -i TERM=dumb su - "$user" -c 'cd ~/vhost-blk-cache && npm install && exec npm start' >"$log" 2>&1 &
  pid=$!
  for ((i = 0; i < 1800; i++)); do
    if chroot "$MNT" su - "$user" -c 'cd ~/vhost-blk-cache && node bin/vhost-blk-cache stats --control data/control.sock' >"$LOGS/$user-stats.log" 2>&1; then break; fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 1
  done
  say "npm install && npm start: $(($(date +%s) - start)) s until the daemon answered (or gave up)"
  kill -INT -- "-$pid" 2>/dev/null || true
  wait "$pid" || rc=$?
  grep -q 'qemu-system-x86_64' "$log" && grep -q "hit rate" "$LOGS/$user-stats.log" && [[ $rc -eq 0 || $rc -eq 130 ]] ||
    { say "npm install && npm start failed (exit $rc): see $log and $LOGS/$user-stats.log"; return 1; }
  say "npm install && npm start: the demo daemon served stats and stopped on Ctrl-C"
}

# scripts/setup-tests.sh on a machine without apt-get: exit 1, naming the missing tools.
check_noapt() {
  local rc=0
  git clone -q "$REPO_DIR" "$MNT/root/vhost-blk-cache"
  # shellcheck disable=SC2016
  chroot "$MNT" bash -c 'mkdir -p /tmp/noapt && for f in /usr/bin/* /usr/sbin/*; do
      case "${f##*/}" in apt-get | apt-cache | apt) ;; *) ln -sf "$f" /tmp/noapt/ ;; esac; done'
  chroot "$MNT" env -i HOME=/root PATH=/tmp/noapt bash /root/vhost-blk-cache/scripts/setup-tests.sh >"$LOGS/noapt.log" 2>&1 || rc=$?
  sed 's/^/    /' "$LOGS/noapt.log" >&2
  [[ $rc -eq 1 ]] && grep -q 'missing tools: qemu-system-x86_64' "$LOGS/noapt.log" ||
    { say "setup-tests.sh without apt-get: expected exit 1 naming the missing tools, got exit $rc"; return 1; }
  say "setup-tests.sh without apt-get: exit 1, names the missing tools"
}

build_base
failed=0
for step in "${STEPS[@]}"; do
  cleanup && MOUNTS=() && mount_fresh
  case "$step" in
    noapt) check_noapt || failed=1 ;;
    root)
      clone_for root
      start_demo root || failed=1
      run_in root root-npm-test 'npm test' || failed=1
      ;;
    user)
      clone_for dev
      run_in dev user-npm-ci 'npm ci' || failed=1
      run_in dev user-test-unit 'npm run test:unit' || failed=1
      if [[ "${FRESH_USER_FULL:-0}" == 1 ]]; then run_in dev user-npm-test 'npm test' || failed=1; fi
      ;;
    *) say "unknown step $step (root, user, noapt, all)"; exit 2 ;;
  esac
done
exit "$failed"
