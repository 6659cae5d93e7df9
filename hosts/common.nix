# What every NX host shares: nxd with the host's PostgreSQL, SSH for Colmena, the token as a
# Colmena key (/run/keys/nx-token, never in the store).
{ self, ... }:
{ pkgs, ... }:
{
  imports = [ self.nixosModules.host ];

  services.nx = {
    enable = true;
    package = self.packages.${pkgs.stdenv.hostPlatform.system}.nxd;
    baseDomain = "nx.example.com";
    routerListen = "0.0.0.0:80";
    tokenFile = "/run/keys/nx-token";
    openFirewall = true;
  };
  # The router binds port 80 as the nx user.
  systemd.services.nxd.serviceConfig.AmbientCapabilities = [ "CAP_NET_BIND_SERVICE" ];
  systemd.services.nxd.serviceConfig.CapabilityBoundingSet = [ "CAP_NET_BIND_SERVICE" ];
  users.users.nx.extraGroups = [ "keys" ];

  services.openssh = {
    enable = true;
    settings.PasswordAuthentication = false;
  };
  nix.settings.experimental-features = [ "nix-command" "flakes" ];
  system.stateVersion = "26.05";
}
