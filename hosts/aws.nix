# An AWS (non-metal) host: no nested virtualisation, so the container backend.
{ modulesPath, ... }:
{
  imports = [ "${modulesPath}/virtualisation/amazon-image.nix" ];
  networking.hostName = "nx-aws-1";
  ec2.efi = true;
}
