# The sandbox guest module (modules/sandbox.nix) rendered two ways:
# - oci: an image for the container backend (Podman), built with dockerTools from the guest's
#   nx.sandbox settings: the program alone, its environment and port;
# - microvm: a microvm.nix guest for the microvm backend, one per hypervisor, each networked the
#   way that hypervisor can be (microvm.nix refuses anything else):
#   - cloud-hypervisor (long-lived services) and firecracker (short tasks): a tap interface named
#     like nxd's (nx<port>), attached on the host to NX's network with its egress policy; the
#     host reaches the program at the guest's address, so no port is forwarded;
#   - qemu: user networking with the program's port forwarded from the host (no tap needed).
#   /nix/store is shared read-only over virtiofs (firecracker has no virtiofs: the store is an
#   erofs disk), a writable volume holds the data. Its declaredRunner is what microvm.nix starts.
{ nixpkgs, microvm, pkgs, sandbox, hypervisor ? "cloud-hypervisor" }:
let
  onTap = hypervisor != "qemu";
  guest = nixpkgs.lib.nixosSystem {
    inherit (pkgs.stdenv.hostPlatform) system;
    modules = [
      microvm.nixosModules.microvm
      ../modules/sandbox.nix
      sandbox
      ({ config, lib, ... }:
        let port = config.nx.sandbox.port;
        in {
          networking.hostName = "nx-sandbox";
          system.stateVersion = "26.05";
          microvm = {
            inherit hypervisor;
            vcpu = 1;
            mem = config.nx.sandbox.memoryMaxMb;
            shares = lib.optional (hypervisor != "firecracker") {
              proto = "virtiofs";
              tag = "ro-store";
              source = "/nix/store";
              mountPoint = "/nix/.ro-store";
            };
            volumes = [{
              image = "nx-data.img";
              mountPoint = config.nx.sandbox.dataDir;
              size = 1024;
            }];
            interfaces = [{
              type = if onTap then "tap" else "user";
              id = if onTap then "nx${toString port}" else "nx0";
              mac = "02:00:00:00:00:01";
            }];
            # Readiness over vsock (systemd's notify socket): Cloud Hypervisor and Firecracker
            # carry vsock on a unix socket of their own, so the same CID in every guest is fine.
            vsock.cid = lib.mkIf onTap 3;
            forwardPorts = lib.optional (!onTap) {
              from = "host";
              # The host's loopback only: the router is the way in from outside.
              host = { address = "127.0.0.1"; inherit port; };
              guest.port = port;
            };
          };
        })
    ];
  };
  settings = guest.config.nx.sandbox;
in
{
  inherit guest;
  microvm = guest.config.microvm.declaredRunner;
  oci = pkgs.dockerTools.buildLayeredImage {
    name = "nx-sandbox";
    tag = "latest";
    config = {
      Entrypoint = [ settings.program ] ++ settings.args;
      Env = pkgs.lib.mapAttrsToList (k: v: "${k}=${v}")
        (settings.environment // { PORT = toString settings.port; NX_DATA_DIR = settings.dataDir; });
      ExposedPorts."${toString settings.port}/tcp" = { };
      WorkingDir = settings.dataDir;
    };
  };
}
