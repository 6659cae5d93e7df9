# A developer Mac: the nx CLI, a Linux builder so the Mac builds the Linux binaries it pushes,
# and where the NX host and its token are.
{ self, ... }:
{ pkgs, ... }:
{
  environment.systemPackages = [ self.packages.${pkgs.stdenv.hostPlatform.system}.nx ];

  nix.linux-builder = {
    enable = true;
    maxJobs = 4;
  };
  nix.settings = {
    experimental-features = [ "nix-command" "flakes" ];
    trusted-users = [ "@admin" ];
  };

  # nx reads host and token_file from here (the token itself stays in the user's keychain
  # export at ~/.config/nx/token, never in the store). The API over HTTPS on the host's router
  # (services.nx.tls.httpsListen), its certificate from Let's Encrypt: nx verifies it against
  # the system's roots (ca_cert = "<file>" adds a private CA) and refuses plain http:// to
  # anything but loopback.
  environment.variables.NX_CONFIG = "/etc/nx/config.toml";
  environment.etc."nx/config.toml".text = ''
    host = "https://api.nx.example.com"
    token_file = "/Users/dev/.config/nx/token"
  '';

  system.stateVersion = 5;
}
