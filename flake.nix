{
  description = "NX: build locally, push a binary, get a sandbox, a database and a URL";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05";
    microvm = {
      url = "github:microvm-nix/microvm.nix";
      inputs.nixpkgs.follows = "nixpkgs";
    };
    colmena = {
      url = "github:zhaofengli/colmena";
      inputs.nixpkgs.follows = "nixpkgs";
      inputs.stable.follows = "nixpkgs";
    };
    nix-darwin = {
      url = "github:nix-darwin/nix-darwin/nix-darwin-26.05";
      inputs.nixpkgs.follows = "nixpkgs";
    };
  };

  outputs = { self, nixpkgs, microvm, colmena, nix-darwin }:
    let
      linuxSystems = [ "x86_64-linux" "aarch64-linux" ];
      systems = linuxSystems ++ [ "aarch64-darwin" "x86_64-darwin" ];
      forSystems = list: f: nixpkgs.lib.genAttrs list (system: f nixpkgs.legacyPackages.${system});
      exampleSandbox = { pkgs, ... }: {
        nx.sandbox = {
          program = "${self.packages.${pkgs.stdenv.hostPlatform.system}.sample-app}/bin/nx-sample-app";
          environment.APP_VERSION = "from-nix";
        };
      };
      images = pkgs: hypervisor: import ./sandbox-images {
        inherit nixpkgs microvm pkgs hypervisor;
        sandbox = exampleSandbox;
      };
      # The hypervisors the sandbox guest renders for (sandbox-images/default.nix).
      hypervisors = [ "cloud-hypervisor" "firecracker" "qemu" ];
    in
    {
      packages = forSystems systems (pkgs:
        let
          nx = pkgs.callPackage ./orchestrator/package.nix { };
        in
        {
          inherit nx;
          default = nx;
        } // nixpkgs.lib.optionalAttrs pkgs.stdenv.isLinux {
          nxd = nx.overrideAttrs (prev: { meta = prev.meta // { mainProgram = "nxd"; }; });
          sample-app = pkgs.pkgsStatic.callPackage ./orchestrator/static-binary.nix { crate = "nx-sample-app"; };
          nx-vm-init = pkgs.pkgsStatic.callPackage ./orchestrator/static-binary.nix { crate = "nx-vm-init"; };
          guest-kernel = pkgs.callPackage ./orchestrator/guest-kernel.nix { };
          sandbox-image = (images pkgs "cloud-hypervisor").oci;
          sandbox-microvm = (images pkgs "cloud-hypervisor").microvm;
        } // nixpkgs.lib.optionalAttrs pkgs.stdenv.isLinux (nixpkgs.lib.listToAttrs (map
          (hypervisor: nixpkgs.lib.nameValuePair "sandbox-microvm-${hypervisor}" (images pkgs hypervisor).microvm)
          hypervisors)));

      apps = forSystems systems (pkgs: {
        nx = {
          type = "app";
          program = "${self.packages.${pkgs.stdenv.hostPlatform.system}.nx}/bin/nx";
        };
      });

      devShells = forSystems systems (pkgs: {
        default = pkgs.mkShell {
          packages = [ pkgs.cargo pkgs.rustc pkgs.clippy pkgs.rustfmt pkgs.postgresql pkgs.nixpkgs-fmt pkgs.deadnix ]
            ++ nixpkgs.lib.optionals pkgs.stdenv.isLinux [ pkgs.bubblewrap pkgs.qemu pkgs.wrk ];
        };
      });

      nixosModules = {
        host = ./modules/host.nix;
        sandbox = ./modules/sandbox.nix;
      };

      nixosConfigurations =
        let
          hive = import ./hosts/hive.nix { inherit self nixpkgs microvm; };
          host = name: nixpkgs.lib.nixosSystem {
            system = "x86_64-linux";
            modules = hive.${name}.imports;
          };
        in
        {
          aws-1 = host "aws-1";
          ovh-1 = host "ovh-1";
          sandbox-example = (images nixpkgs.legacyPackages.x86_64-linux "cloud-hypervisor").guest;
        };

      colmenaHive = colmena.lib.makeHive (import ./hosts/hive.nix { inherit self nixpkgs microvm; });

      darwinConfigurations.dev-mac = nix-darwin.lib.darwinSystem {
        system = "aarch64-darwin";
        modules = [ (import ./darwin/configuration.nix { inherit self; }) ];
      };

      checks = forSystems linuxSystems (pkgs: {
        host = import ./checks/host.nix { inherit self pkgs; };
      });

      formatter = forSystems systems (pkgs: pkgs.nixpkgs-fmt);
    };
}
