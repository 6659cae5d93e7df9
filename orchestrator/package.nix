# nxd, nx-router (started by nxd, found next to it) and nx from the Cargo workspace. The tests need root, bubblewrap and a systemd manager:
# they run in .ci/run and in checks/, not in the build sandbox. Default features: container and
# microvm (the guest kernel and nx-vm-init are packages of their own: guest-kernel, nx-vm-init).
{ lib, rustPlatform, pkg-config, cmake, stdenv }:
rustPlatform.buildRustPackage {
  pname = "nx";
  version = "0.1.0";
  src = lib.cleanSource ./.;
  cargoLock.lockFile = ./Cargo.lock;
  # The daemon runs on Linux only; a Mac gets the CLI.
  cargoBuildFlags = if stdenv.isLinux then [ "-p" "nxd" "-p" "nx-router" "-p" "nx-cli" ] else [ "-p" "nx-cli" ];
  # cmake: Pingora's (nx-router's) compression libraries build with it.
  nativeBuildInputs = [ pkg-config cmake ];
  doCheck = false;
  meta = {
    description = "Push a binary, get a sandbox, a database and a URL";
    license = lib.licenses.mit;
    mainProgram = "nx";
  };
}
