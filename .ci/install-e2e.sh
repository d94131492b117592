#!/usr/bin/env bash
# Installs what the real-QEMU end-to-end tests (mocha --grep @e2e) need on a Debian 12 host or CI
# runner, then builds the guest kernel + initramfs into $VBC_VM_DIR (default <repo>/.vm).
# Run as root (or with sudo available). Idempotent.
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PACKAGES=(
  qemu-system-x86   # qemu-system-x86_64 (TCG), vhost-user-blk-pci
  qemu-utils        # qemu-img, qemu-nbd
  qemu-system-common
  busybox-static    # the guest userland (must be statically linked)
  cpio              # initramfs archives
  gzip
  xz-utils          # kernel modules may ship .ko.xz
  zstd              # ... or .ko.zst
  fio               # copied into the guest with its shared libraries
  e2fsprogs         # mkfs.ext4, copied into the guest
  libaio1           # fio's libaio engine
)

SUDO=()
[[ "$(id -u)" -eq 0 ]] || SUDO=(sudo)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
# qemu-storage-daemon is in qemu-system-common on Debian 12 (the reference back end for the
# harness's own smoke test).
if ((${#missing[@]})); then
  "${SUDO[@]}" apt-get update -qq
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
command -v qemu-storage-daemon >/dev/null || { echo "qemu-storage-daemon not found" >&2; exit 1; }

# prepare-guest.sh resolves the kernel through apt-cache and needs root only for apt-get update;
# refresh the lists here so it can run as the user who runs the tests.
apt-cache depends linux-image-amd64 2>/dev/null | grep -q 'Depends: linux-image-[0-9]' ||
  "${SUDO[@]}" apt-get update -qq
bash "$REPO_DIR/test/e2e/vm/prepare-guest.sh"
