# An OVH bare-metal host: KVM, so it also hosts microVM sandboxes (microvm.nix's host module,
# and nxd's microvm backend with the flake's guest kernel and nx-vm-init).
{ self, microvm, ... }:
{ pkgs, ... }:
let
  packages = self.packages.${pkgs.stdenv.hostPlatform.system};
in
{
  imports = [ microvm.nixosModules.host ];
  networking.hostName = "nx-ovh-1";
  microvm.host.enable = true;
  services.nx.microvm = {
    kernelDir = "${packages.guest-kernel}";
    init = "${packages.nx-vm-init}/bin/nx-vm-init";
    accel = "kvm";
  };
  boot.loader.systemd-boot.enable = true;
  boot.loader.efi.canTouchEfiVariables = true;
  fileSystems."/" = { device = "/dev/disk/by-label/nixos"; fsType = "ext4"; };
  fileSystems."/boot" = { device = "/dev/disk/by-label/boot"; fsType = "vfat"; };
}
