# The microvm backend's guest kernel on NixOS, laid out as fetch-kernel.sh lays out Debian's:
# vmlinux (uncompressed) and modules/ with the virtio modules (decompressed) and their order.
{ runCommand, linuxPackages, xz }:
let
  kernel = linuxPackages.kernel;
  modules = [ "virtio_ring" "virtio" "virtio_mmio" "failover" "net_failover" "virtio_net" "virtio_blk" ];
in
runCommand "nx-guest-kernel-${kernel.version}" { nativeBuildInputs = [ xz ]; } ''
  mkdir -p $out/modules
  cp ${kernel.dev}/vmlinux $out/vmlinux
  for m in ${toString modules}; do
    found=$(find ${kernel}/lib/modules -name "$m.ko*" | head -1)
    if [ -z "$found" ]; then
      echo "$m is built in" >&2
      continue
    fi
    case "$found" in
      *.xz) xz -dc "$found" > $out/modules/$m.ko ;;
      *) cp "$found" $out/modules/$m.ko ;;
    esac
    echo -n "$m " >> $out/modules/order
  done
  touch $out/modules/order
''
