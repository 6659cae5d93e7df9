# What every NX host shares: nxd with the host's PostgreSQL, SSH for Colmena, the token as a
# Colmena key (/run/keys/<tokenKey>, never in the store).
{ self, tokenKey }:
{ pkgs, ... }:
{
  imports = [ self.nixosModules.host ];

  services.nx = {
    enable = true;
    package = self.packages.${pkgs.stdenv.hostPlatform.system}.nxd;
    baseDomain = "nx.example.com";
    routerListen = "0.0.0.0:80";
    # HTTPS with certificates from Let's Encrypt (HTTP-01 on :80); nxd's API at
    # https://api.nx.example.com for remote nx (the Mac, CI).
    tls.httpsListen = "0.0.0.0:443";
    tokenFile = "/run/keys/${tokenKey}";
    openFirewall = true;
    # Uploads without the CLI: `sftp -P 2222 <sandbox>@<host>` with a key from `nx keys add`.
    sftp = {
      listen = "0.0.0.0:2222";
      openFirewall = true;
    };
  };
  # /run/keys is a tmpfs: after a reboot the token is back only when `colmena upload-keys` (or
  # apply) uploads it. Colmena's <key>-key.service is active while the file exists (its start
  # waits for it), so nxd starts once the token is there, not before.
  systemd.services.nxd = {
    after = [ "${tokenKey}-key.service" ];
    wants = [ "${tokenKey}-key.service" ];
  };
  users.users.nx.extraGroups = [ "keys" ];

  services.openssh = {
    enable = true;
    settings.PasswordAuthentication = false;
  };
  nix.settings.experimental-features = [ "nix-command" "flakes" ];
  system.stateVersion = "26.05";
}
