# Stand-in for nixpkgs' nixos/modules/virtualisation/amazon-image.nix: the options NX's AWS host
# sets, and the root file system the real module declares.
{ lib, ... }:
{
  options.ec2.efi = lib.mkOption { type = lib.types.bool; default = false; description = "Boot with EFI."; };
  config.fileSystems."/" = { device = "/dev/disk/by-label/nixos"; fsType = "ext4"; };
}
