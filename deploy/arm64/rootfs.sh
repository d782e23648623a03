#!/bin/sh
# An arm64 Debian 12 root with Python, made on x86 under emulation (make arm64-root).
#   deploy/arm64/rootfs.sh ROOT
# Needs root, debootstrap and qemu-user-static (apt-get install debootstrap qemu-user-static).
# Registers qemu's aarch64 interpreter with binfmt_misc when the kernel does not have it yet,
# then runs debootstrap's two stages (the second inside the root, emulated: ~10 minutes).
set -eu
ROOT=${1:?usage: rootfs.sh ROOT}
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    grep -v '^#' /usr/lib/binfmt.d/qemu-aarch64.conf > /proc/sys/fs/binfmt_misc/register
fi
rm -rf "$ROOT.tmp" && mkdir -p "$ROOT.tmp"
debootstrap --foreign --arch=arm64 --variant=minbase \
    --include=python3,python3-venv,python3-pip,ca-certificates bookworm "$ROOT.tmp"
chroot "$ROOT.tmp" /debootstrap/debootstrap --second-stage
cp /etc/ssl/certs/ca-certificates.crt "$ROOT.tmp/etc/ssl/certs/ca-certificates.crt"
chroot "$ROOT.tmp" python3 -c "import platform; assert platform.machine() == 'aarch64'"
rm -rf "$ROOT" && mv "$ROOT.tmp" "$ROOT"   # whole or absent: never half-made
echo "arm64 root ready in $ROOT"
