# The Colmena fleet: `colmena apply` (or `colmena apply --on @aws`). The API token ships as a
# Colmena key, read on the deploying machine by keyCommand, so it never enters the store.
{ self, nixpkgs, microvm }:
let
  # The key's name is its file's name under /run/keys and names Colmena's <name>-key.service.
  tokenKey = "nx-token";
  base = import ./common.nix { inherit self tokenKey; };
  token = {
    keyCommand = [ "pass" "show" "nx/api-token" ];
    destDir = "/run/keys";
    user = "nx";
    group = "nx";
    permissions = "0600";
  };
in
{
  meta.nixpkgs = import nixpkgs { system = "x86_64-linux"; };

  aws-1 = {
    imports = [ base ./aws.nix ];
    deployment = {
      targetHost = "aws-1.nx.example.com";
      tags = [ "aws" "container" ];
      keys.${tokenKey} = token;
    };
  };

  ovh-1 = {
    imports = [ base (import ./ovh.nix { inherit self microvm; }) ];
    deployment = {
      targetHost = "ovh-1.nx.example.com";
      tags = [ "ovh" "microvm" ];
      keys.${tokenKey} = token;
    };
  };
}
