#!/usr/bin/env bash
# Lays out a guest kernel for the microvm backend from Debian's linux-image package (downloaded
# with apt-get download and unpacked with dpkg -x: never installed as the host's kernel):
#   $NX_KERNEL_DIR/vmlinux              the uncompressed kernel (QEMU's microvm machine boots it)
#   $NX_KERNEL_DIR/modules/<name>.ko    the virtio modules the guest needs (network, block), and
#   $NX_KERNEL_DIR/modules/order        the order the guest's init loads them in.
# Default NX_KERNEL_DIR: /var/cache/nx/kernel. Needs apt, dpkg, lz4 (or xz/zstd/gzip).
set -euo pipefail
dest=${NX_KERNEL_DIR:-/var/cache/nx/kernel}
# virtio_blk: a pooled task guest's task drive and a deployment's /data (ext4 is built in).
modules=(virtio_ring virtio virtio_mmio failover net_failover virtio_net virtio_blk)
if [ -s "$dest/vmlinux" ] && [ "$(cat "$dest/modules/order" 2>/dev/null)" = "${modules[*]}" ]; then
  echo "kernel already in $dest"
  exit 0
fi
pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[ -n "$pkg" ] || { echo "no linux-image-*-cloud-amd64 package known to apt; run apt-get update" >&2; exit 1; }
work=$(mktemp -d /var/tmp/nx-kernel.XXXXXX)
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get download -q "$pkg" >/dev/null 2>&1 && dpkg -x ./*.deb root)
image=$(ls "$work"/root/boot/vmlinuz-*)
# The bzImage holds the kernel compressed; cut it out where the compressor's magic starts.
mkdir -p "$dest/modules"
extract() { # magic (as grep -P reads it), then the decompressor's command
  local pos
  for pos in $(grep -obUaP "$1" "$image" | cut -d: -f1); do
    # Trailing bytes after the stream make some decompressors complain; the ELF header decides.
    tail -c+$((pos + 1)) "$image" | "${@:2}" >"$work/vmlinux" 2>/dev/null || true
    if [ "$(head -c4 "$work/vmlinux" | od -An -tx1 | tr -d ' \n')" = 7f454c46 ]; then return 0; fi
  done
  return 1
}
extract '\x02\x21\x4c\x18' lz4 -dc ||
  extract '\xfd\x37\x7a\x58\x5a\x00' xz -dc ||
  extract '\x28\xb5\x2f\xfd' zstd -dc ||
  extract '\x1f\x8b\x08' gzip -dc ||
  { echo "cannot find the compressed kernel inside $image" >&2; exit 1; }
mv "$work/vmlinux" "$dest/vmlinux"
for name in "${modules[@]}"; do
  found=$(find "$work"/root/lib/modules -name "$name.ko" | head -1)
  [ -n "$found" ] || { echo "module $name.ko is not in $pkg" >&2; exit 1; }
  cp "$found" "$dest/modules/$name.ko"
done
echo "${modules[*]}" >"$dest/modules/order"
echo "kernel of $pkg in $dest"
