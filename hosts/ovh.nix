# An OVH bare-metal host: KVM, so it also hosts microVM sandboxes (microvm.nix's host module).
{ microvm, ... }:
{ ... }:
{
  imports = [ microvm.nixosModules.host ];
  networking.hostName = "nx-ovh-1";
  microvm.host.enable = true;
  boot.loader.systemd-boot.enable = true;
  boot.loader.efi.canTouchEfiVariables = true;
  boot.kernelModules = [ "kvm-intel" "kvm-amd" "vhost_vsock" ];
  fileSystems."/" = { device = "/dev/disk/by-label/nixos"; fsType = "ext4"; };
  fileSystems."/boot" = { device = "/dev/disk/by-label/boot"; fsType = "vfat"; };
}
