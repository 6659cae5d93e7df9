# The static sample app (what the quick start and the VM tests push).
{ lib, rustPlatform }:
rustPlatform.buildRustPackage {
  pname = "nx-sample-app";
  version = "0.1.0";
  src = lib.cleanSource ./.;
  cargoLock.lockFile = ./Cargo.lock;
  cargoBuildFlags = [ "-p" "nx-sample-app" ];
  doCheck = false;
  meta.mainProgram = "nx-sample-app";
}
