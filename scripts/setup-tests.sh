#!/usr/bin/env bash
# Makes this machine ready for the full test suite (`npm test` runs this first):
#  1. the host tools the tests drive: QEMU (TCG guests), qemu-storage-daemon, qemu-img, qemu-nbd,
#     nbdkit, fio, and what the guest image is built from (static busybox, cpio, gzip, xz, zstd,
#     mkfs.ext4, libaio), and a single-node Ceph cluster's daemons and CLI plus librbd's headers
#     (ceph-mon, ceph-osd, ceph-common, librbd-dev) for the RBD backing. Missing ones are installed with apt-get (through sudo when not root);
#     a machine without apt-get gets the list of missing tools and exit status 1.
#  2. the addon rebuilt when it was built before librbd's headers were there (npm ci runs first
#     on a fresh machine, and the RBD backing is compiled only against librbd).
#  3. the guest kernel + initramfs in $VBC_VM_DIR (default <repo>/.vm), built by
#     test/e2e/vm/prepare-guest.sh (Debian's linux-image-amd64).
# Fast and silent when everything is present: commands are looked up, apt is not touched, and
# prepare-guest.sh only checks its build key. `npm run test:unit` needs none of this.
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# A non-root login shell's PATH has no sbin, where ldconfig, mkfs.ext4 and losetup live.
PATH="$PATH:/usr/sbin:/sbin"
say() { echo "setup-tests: $*" >&2; }

# tool|Debian package that provides it ("lib:" = a shared library, "static:" = a static binary,
# "file:" = a file such as a header)
REQUIREMENTS=(
  "qemu-system-x86_64|qemu-system-x86"
  "qemu-storage-daemon|qemu-system-common"
  "qemu-img|qemu-utils"
  "qemu-nbd|qemu-utils"
  "nbdkit|nbdkit"
  "fio|fio"
  "lib:libaio.so.1|libaio1"
  "static:/bin/busybox|busybox-static"
  "cpio|cpio"
  "gzip|gzip"
  "xz|xz-utils"
  "zstd|zstd"
  "mkfs.ext4|e2fsprogs"
  "losetup|mount"
  "python3|python3"
  "ceph-mon|ceph-mon"
  "ceph-osd|ceph-osd"
  "monmaptool|ceph-common"
  "ceph|ceph-common"
  "rbd|ceph-common"
  "file:/usr/include/rbd/librbd.h|librbd-dev"
)

present() {
  local tool="$1"
  case "$tool" in
    lib:*) ldconfig -p 2>/dev/null | grep -q "${tool#lib:} " ;;
    file:*) [[ -f "${tool#file:}" ]] ;;
    static:*) [[ -x "${tool#static:}" ]] && ! ldd "${tool#static:}" >/dev/null 2>&1 ;;
    *) command -v "$tool" >/dev/null 2>&1 ;;
  esac
}

missing_tools=()
missing_pkgs=()
for req in "${REQUIREMENTS[@]}"; do
  tool="${req%%|*}"
  pkg="${req##*|}"
  if ! present "$tool"; then
    missing_tools+=("${tool#*:}")
    [[ " ${missing_pkgs[*]} " == *" $pkg "* ]] || missing_pkgs+=("$pkg")
  fi
done

SUDO=()
if [[ "$(id -u)" -ne 0 ]]; then
  if command -v sudo >/dev/null; then SUDO=(sudo); fi
fi

apt_get() {
  if [[ "$(id -u)" -ne 0 && ${#SUDO[@]} -eq 0 ]]; then
    say "need root or sudo to run: apt-get $*"
    exit 1
  fi
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get "$@"
}

if ((${#missing_tools[@]})); then
  if ! command -v apt-get >/dev/null; then
    say "missing tools: ${missing_tools[*]}"
    say "this machine has no apt-get: install them with its package manager (Debian packages: ${missing_pkgs[*]}),"
    say "or run only the tests that need none of them: npm run test:unit"
    exit 1
  fi
  say "installing ${missing_pkgs[*]} (missing: ${missing_tools[*]})"
  apt_get update -qq
  apt_get install -y -qq --no-install-recommends "${missing_pkgs[@]}" ca-certificates >/dev/null
  for req in "${REQUIREMENTS[@]}"; do
    present "${req%%|*}" || { say "still missing after apt-get install: ${req%%|*}"; exit 1; }
  done
fi

# The RBD backing is compiled only when librbd's headers are present (binding.gyp): rebuild an
# addon that was built without them.
ADDON="$REPO_DIR/build/Release/vhost_blk_cache.node"
if [[ -f "$ADDON" ]] && ! node -e "process.exit(require(process.argv[1]).rbd.available ? 0 : 1)" "$ADDON" 2>/dev/null; then
  say "rebuilding the addon with librbd (the RBD backing)"
  (cd "$REPO_DIR" && npm run --silent rebuild:native >/dev/null)
fi

# The guest image is built here when missing; the e2e suites rerun prepare-guest.sh, which
# rebuilds it when the kernel or the packages copied into it changed (a few seconds of checks,
# so not repeated here). The kernel is resolved through apt-cache: refresh the package lists once
# if they do not know linux-image-amd64 yet (a fresh container), so prepare-guest.sh can run as
# any user.
export VBC_VM_DIR="${VBC_VM_DIR:-$REPO_DIR/.vm}"
if ! [[ -f "$VBC_VM_DIR/vmlinuz" && -f "$VBC_VM_DIR/initramfs.cpio.gz" && -f "$VBC_VM_DIR/guest.env" ]]; then
  if ! apt-cache depends linux-image-amd64 2>/dev/null | grep -q 'Depends: linux-image-[0-9]'; then
    command -v apt-get >/dev/null || { say "no apt-get: cannot fetch the guest kernel (linux-image-amd64)"; exit 1; }
    apt_get update -qq
  fi
  say "building the guest image in $VBC_VM_DIR (downloads the Debian kernel; about a minute)"
  if ! out="$(bash "$REPO_DIR/test/e2e/vm/prepare-guest.sh" 2>&1)"; then
    echo "$out" >&2
    say "building the guest image failed (test/e2e/vm/prepare-guest.sh)"
    exit 1
  fi
fi
