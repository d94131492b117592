#!/usr/bin/env bash
# Builds the guest used by the real-QEMU end-to-end tests (test/e2e/vm/guest.ts):
#   $VM_DIR/vmlinuz            Debian kernel (the one linux-image-amd64 depends on)
#   $VM_DIR/initramfs.cpio.gz  newc cpio, gzip: static busybox, the virtio-blk and ext4 modules
#                              (decompressed, matching the kernel exactly), mkfs.ext4 and fio with
#                              every shared library they load, and /init (see below)
#   $VM_DIR/guest.env          KERNEL_PACKAGE, KERNEL_VERSION, KERNEL_RELEASE, MODULES (load order), BUILD_KEY
# VM_DIR is $VBC_VM_DIR, else <repo>/.vm (git-ignored).
#
# Idempotent: when guest.env holds the BUILD_KEY of this script's content, the kernel package and
# the host packages copied into the guest, nothing is rebuilt. Concurrent runs serialize on a lock in VM_DIR.
#
# Guest contract (/init): mounts proc, sysfs, devtmpfs; insmods MODULES in order; reads the
# token vbc.token=T from the kernel command line; prints "@@VBC-BEGIN T@@", runs /test.sh (which
# the harness appends as a second cpio archive) with stdin/stdout/stderr on the console (ttyS0),
# prints "@@VBC-END T rc=<exit status>@@", then powers off. /test.sh may source /lib/vbc.sh for:
#   vbc_wait_dev DEV [SECONDS]  wait until a block device node exists
#   vbc_pause NAME              print "@@VBC-PAUSE T NAME@@", then block until the host writes
#                               the line "vbc-continue NAME" to the serial console
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$SCRIPT_DIR/../../.." && pwd)"
VM_DIR="${VBC_VM_DIR:-$REPO_DIR/.vm}"
MODULES_WANTED=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk
  crc32c_generic crc16 mbcache jbd2 ext4)
GUEST_BINARIES=(/usr/sbin/mkfs.ext4 /usr/bin/fio)

log() { echo "prepare-guest: $*" >&2; }
die() { log "error: $*"; exit 1; }

for tool in apt-cache apt-get dpkg cpio gzip ldd sha256sum; do
  command -v "$tool" >/dev/null || die "missing host tool: $tool"
done
[[ -x /bin/busybox ]] || die "missing /bin/busybox (apt package busybox-static)"
/bin/busybox --list | grep -x poweroff >/dev/null || die "/bin/busybox lacks applets (need busybox-static)"
file_is_static() { ! ldd "$1" >/dev/null 2>&1; }
file_is_static /bin/busybox || die "/bin/busybox is dynamically linked (install busybox-static)"
for b in "${GUEST_BINARIES[@]}"; do [[ -x "$b" ]] || die "missing $b (install e2fsprogs, fio)"; done

mkdir -p "$VM_DIR"
exec 9>"$VM_DIR/.lock"
flock 9

# The kernel package: linux-image-amd64 is a metapackage depending on linux-image-<release>.
kernel_package() {
  apt-cache depends linux-image-amd64 2>/dev/null |
    awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }'
}
KPKG="$(kernel_package || true)"
if [[ -z "$KPKG" ]]; then
  log "linux-image-amd64 unknown to apt-cache; running apt-get update"
  apt-get update -qq
  KPKG="$(kernel_package)"
fi
[[ -n "$KPKG" ]] || die "cannot resolve the package behind linux-image-amd64"
KVER="$(apt-cache policy "$KPKG" | awk '$1 == "Candidate:" { print $2 }')"

# Rebuild when this script, the kernel or the host packages copied into the guest change.
HOST_PKGS="$(dpkg-query -W -f='${Package}=${Version} ' busybox-static e2fsprogs fio libc6 2>/dev/null || true)"
BUILD_KEY="$( (cat "${BASH_SOURCE[0]}"; echo "$HOST_PKGS") | sha256sum | cut -c1-16)-$KPKG-$KVER"
if [[ -f "$VM_DIR/guest.env" && -f "$VM_DIR/vmlinuz" && -f "$VM_DIR/initramfs.cpio.gz" ]] &&
  grep -qx "BUILD_KEY=$BUILD_KEY" "$VM_DIR/guest.env"; then
  log "up to date ($KPKG $KVER) in $VM_DIR"
  exit 0
fi

WORK="$(mktemp -d "$VM_DIR/build.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

log "downloading $KPKG $KVER"
(cd "$WORK" && apt-get download -q "$KPKG=$KVER" 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2 || true)
DEB="$(ls "$WORK"/"$KPKG"_*.deb 2>/dev/null | head -n1)"
[[ -n "$DEB" ]] || die "apt-get download $KPKG failed"
dpkg -x "$DEB" "$WORK/kpkg"
KREL="$(ls "$WORK/kpkg/lib/modules" | head -n1)"
[[ -n "$KREL" && -f "$WORK/kpkg/boot/vmlinuz-$KREL" ]] || die "unexpected layout of $DEB"
MODTREE="$WORK/kpkg/lib/modules/$KREL"

ROOT="$WORK/root"
mkdir -p "$ROOT"/{bin,sbin,dev,proc,sys,tmp,mnt,etc,lib,root,lib/modules/"$KREL"}

# --- modules -------------------------------------------------------------------------------
# A module's file name may use '-' where its name uses '_'; files may be .ko, .ko.xz, .ko.zst.
declare -A MOD_FILE=()
while IFS= read -r -d '' f; do
  base="${f##*/}"
  name="${base%%.ko*}"
  MOD_FILE["${name//-/_}"]="$f"
done < <(find "$MODTREE/kernel" -name '*.ko*' -print0)

# Decompressed copy of module $1 in the initramfs; prints its path.
stage_module() {
  local name="$1" src="${MOD_FILE[$1]:-}" dst="$ROOT/lib/modules/$KREL/$1.ko"
  [[ -n "$src" ]] || die "module $name not found in $KPKG"
  if [[ ! -f "$dst" ]]; then
    case "$src" in
      *.ko) cp "$src" "$dst" ;;
      *.ko.xz) xz -dc "$src" >"$dst" ;;
      *.ko.zst) zstd -qdc "$src" >"$dst" ;;
      *.ko.gz) gzip -dc "$src" >"$dst" ;;
      *) die "unknown module compression: $src" ;;
    esac
  fi
  echo "$dst"
}

# Hard dependencies, from the module's own .modinfo "depends=" (the .deb ships no modules.dep;
# depmod derives modules.dep from exactly this field). Soft dependencies name aliases
# (crypto-crc32c) and are covered by MODULES_WANTED listing crc32c_generic before its users.
module_depends() {
  tr '\0' '\n' <"$1" | sed -n 's/^depends=//p' | head -n1 | tr ',' ' '
}

declare -A MOD_DONE=() MOD_ACTIVE=()
MOD_ORDER=()
visit_module() {
  local name="$1" ko dep
  [[ -n "${MOD_DONE[$name]:-}" ]] && return 0
  [[ -n "${MOD_ACTIVE[$name]:-}" ]] && die "module dependency cycle at $name"
  MOD_ACTIVE[$name]=1
  ko="$(stage_module "$name")"
  for dep in $(module_depends "$ko"); do visit_module "${dep//-/_}"; done
  MOD_DONE[$name]=1
  MOD_ORDER+=("$name")
}
for m in "${MODULES_WANTED[@]}"; do visit_module "$m"; done
for m in "${MOD_ORDER[@]}"; do
  vermagic="$(tr '\0' '\n' <"$ROOT/lib/modules/$KREL/$m.ko" | sed -n 's/^vermagic=//p' | head -n1)"
  [[ "$vermagic" == "$KREL "* ]] || die "module $m vermagic '$vermagic' does not match $KREL"
done
printf '%s\n' "${MOD_ORDER[@]}" >"$ROOT/etc/modules.order"
log "modules: ${MOD_ORDER[*]}"

# --- busybox and host binaries with their shared libraries ---------------------------------
cp /bin/busybox "$ROOT/bin/busybox"
for applet in $(/bin/busybox --list); do
  [[ "$applet" == busybox ]] || ln -sf busybox "$ROOT/bin/$applet"
done

copy_file() { # copy_file SRC: copies SRC (resolving symlinks) to the same path inside ROOT
  local src="$1" dst="$ROOT$1"
  mkdir -p "$(dirname "$dst")"
  [[ -e "$dst" ]] || cp -L "$src" "$dst"
}
for b in "${GUEST_BINARIES[@]}"; do
  copy_file "$b"
  # ldd lines: "libx.so.1 => /path (addr)" and "/lib64/ld-linux-x86-64.so.2 (addr)"
  while read -r lib; do copy_file "$lib"; done < <(ldd "$b" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }')
done
# Libraries keep their host paths, which the loader finds through its built-in multiarch search
# path and the libraries' own RUNPATHs.

# --- /init and the guest helper library ----------------------------------------------------
cat >"$ROOT/lib/vbc.sh" <<'EOF'
# Helpers for /test.sh (source /lib/vbc.sh). VBC_TOKEN is exported by /init.
vbc_wait_dev() { # vbc_wait_dev DEV [SECONDS]
  local i=0 limit=$(( ${2:-30} * 10 ))
  while [ ! -b "$1" ]; do
    i=$((i + 1)); [ "$i" -gt "$limit" ] && { echo "vbc: $1 did not appear" >&2; return 1; }
    usleep 100000
  done
}
vbc_pause() { # vbc_pause NAME: blocks until the host sends "vbc-continue NAME"
  local line
  echo "@@VBC-PAUSE $VBC_TOKEN $1@@"
  while read -r line; do
    [ "$line" = "vbc-continue $1" ] && return 0
  done
  echo "vbc: console closed while paused at $1" >&2
  return 1
}
EOF

cat >"$ROOT/init" <<'EOF'
#!/bin/busybox sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
exec </dev/console >/dev/console 2>&1
VBC_TOKEN=none
for arg in $(cat /proc/cmdline); do
  case "$arg" in vbc.token=*) VBC_TOKEN="${arg#vbc.token=}" ;; esac
done
export VBC_TOKEN
KREL="$(uname -r)"
for m in $(cat /etc/modules.order); do
  insmod "/lib/modules/$KREL/$m.ko" || echo "vbc: insmod $m failed"
done
# Raw console: no echo of host input, no CR/LF translation on input.
stty -echo -icrnl -onlcr </dev/console 2>/dev/null
echo "@@VBC-BEGIN $VBC_TOKEN@@"
if [ -f /test.sh ]; then
  sh /test.sh </dev/console >/dev/console 2>&1
  rc=$?
else
  echo "vbc: no /test.sh"
  rc=127
fi
sync
echo "@@VBC-END $VBC_TOKEN rc=$rc@@"
# poweroff -f drops what the console's transmit buffer still holds; stty sets the mode with
# TCSETSW, which first waits until every byte written to the console has been sent.
stty -echo </dev/console
poweroff -f
EOF
chmod 755 "$ROOT/init"

# --- assemble -------------------------------------------------------------------------------
(cd "$ROOT" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet --owner=0:0 |
  gzip -6 >"$WORK/initramfs.cpio.gz")
cp "$WORK/kpkg/boot/vmlinuz-$KREL" "$WORK/vmlinuz"
mv -f "$WORK/vmlinuz" "$VM_DIR/vmlinuz"
mv -f "$WORK/initramfs.cpio.gz" "$VM_DIR/initramfs.cpio.gz"
cat >"$VM_DIR/guest.env" <<EOF
KERNEL_PACKAGE=$KPKG
KERNEL_VERSION=$KVER
KERNEL_RELEASE=$KREL
MODULES=${MOD_ORDER[*]}
BUILD_KEY=$BUILD_KEY
EOF
log "built $VM_DIR (kernel $KREL, initramfs $(du -h "$VM_DIR/initramfs.cpio.gz" | cut -f1))"
