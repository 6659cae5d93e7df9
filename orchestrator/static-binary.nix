# A static binary of one workspace crate (call it with pkgsStatic): the sample app that the quick
# start and the VM tests push, or nx-vm-init, the microVM guest's PID 1.
{ lib, rustPlatform, crate }:
rustPlatform.buildRustPackage {
  pname = crate;
  version = "0.1.0";
  src = lib.cleanSource ./.;
  cargoLock.lockFile = ./Cargo.lock;
  cargoBuildFlags = [ "-p" crate ];
  doCheck = false;
  meta.mainProgram = crate;
}
