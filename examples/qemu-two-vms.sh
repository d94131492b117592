#!/usr/bin/env bash
# Two VMs on one daemon and one cache (QEMU command lines). Start the daemon first:
#   vhost-blk-cache serve --config examples/config.json
# Each guest needs shared memory (memfd, share=on) so the daemon can map its RAM.
# reconnect=1: QEMU reconnects when the daemon restarts (the cache comes back warm).
set -euo pipefail
ACCEL=${ACCEL:-kvm:tcg}
KERNEL=${KERNEL:?set KERNEL to a bzImage}
INITRD=${INITRD:?set INITRD to an initramfs}

qemu-system-x86_64 -accel "$ACCEL" -m 1G -smp 2 -name vm1 \
  -object memory-backend-memfd,id=mem,size=1G,share=on -numa node,memdev=mem \
  -chardev socket,id=c0,path=/run/vhost-blk-cache/vm1-root.sock,reconnect=1 \
  -device vhost-user-blk-pci,chardev=c0,num-queues=2 \
  -kernel "$KERNEL" -initrd "$INITRD" -append 'console=ttyS0' -display none -serial file:vm1.log &

qemu-system-x86_64 -accel "$ACCEL" -m 1G -smp 2 -name vm2 \
  -object memory-backend-memfd,id=mem,size=1G,share=on -numa node,memdev=mem \
  -chardev socket,id=c0,path=/run/vhost-blk-cache/vm2-data.sock,reconnect=1 \
  -device vhost-user-blk-pci,chardev=c0,num-queues=2 \
  -kernel "$KERNEL" -initrd "$INITRD" -append 'console=ttyS0' -display none -serial file:vm2.log &

wait
