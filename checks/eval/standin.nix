# The stand-in nixpkgs of checks/eval.sh: the real nixpkgs lib at `libPath`, NixOS stood in by
# ./nixos.nix and packages by ./pkgs.nix. `standinPath` is the directory eval.sh generates
# (default.nix and nixos/lib/eval-config.nix, each calling into this file) so that
# `import nixpkgs { system; }` and Colmena's `pkgs.path + "/nixos/lib/eval-config.nix"` work.
{ libPath, standinPath }:
rec {
  lib = import libPath;
  pkgs = system: import ./pkgs.nix { inherit lib system; nixpkgsPath = standinPath; };
  nixos = import ./nixos.nix {
    inherit lib;
    pkgsFor = config: pkgs config.nixpkgs.hostPlatform;
  };
  # The shape of the nixpkgs flake input: lib (with nixosSystem), legacyPackages, outPath.
  input = {
    outPath = standinPath;
    lib = lib // { inherit (nixos) nixosSystem; };
    legacyPackages = lib.genAttrs [ "x86_64-linux" "aarch64-linux" "x86_64-darwin" "aarch64-darwin" ] pkgs;
  };
}
