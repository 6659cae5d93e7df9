# The sandbox guest module (modules/sandbox.nix) rendered two ways:
# - oci: an image for the container backend (Podman), built with dockerTools from the guest's
#   nx.sandbox settings: the program alone, its environment and port;
# - microvm: a microvm.nix guest for the microvm backend: cloud-hypervisor for long-lived
#   services (firecracker for short tasks), /nix/store shared read-only over virtiofs, a
#   writable volume for data. Its declaredRunner is what the backend starts.
{ nixpkgs, microvm, pkgs, sandbox, hypervisor ? "cloud-hypervisor" }:
let
  guest = nixpkgs.lib.nixosSystem {
    inherit (pkgs.stdenv.hostPlatform) system;
    modules = [
      microvm.nixosModules.microvm
      ../modules/sandbox.nix
      sandbox
      ({ config, ... }: {
        networking.hostName = "nx-sandbox";
        system.stateVersion = "26.05";
        microvm = {
          inherit hypervisor;
          vcpu = 1;
          mem = config.nx.sandbox.memoryMaxMb;
          shares = [{
            proto = "virtiofs";
            tag = "ro-store";
            source = "/nix/store";
            mountPoint = "/nix/.ro-store";
          }];
          volumes = [{
            image = "nx-data.img";
            mountPoint = config.nx.sandbox.dataDir;
            size = 1024;
          }];
          interfaces = [{
            type = "user";
            id = "nx0";
            mac = "02:00:00:00:00:01";
          }];
          forwardPorts = [{
            from = "host";
            host.port = config.nx.sandbox.port;
            guest.port = config.nx.sandbox.port;
          }];
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
