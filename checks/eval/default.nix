# What checks/eval.sh evaluates: the flake's outputs, called with the real source trees of its
# inputs (microvm.nix, Colmena, flake-utils for Colmena's flake, nix-darwin) and nixpkgs: the
# real one at `nixpkgsSrc` if given (needs a Nix that can evaluate it), else the stand-in of
# ./standin.nix around the real lib at `libPath`. One attribute per output; eval.sh evaluates each
# with --strict, so an assertion, a throw or a type error of any module or runner fails that
# output. Each returns the facts it checked, for the report.
{ libPath ? nixpkgsSrc + "/lib"
, nixpkgsSrc ? null
, microvmSrc
, colmenaSrc
, flakeUtilsSrc
, nixDarwinSrc ? null
, standinPath
, repo ? ../..
}:
let
  standin = import ./standin.nix { inherit libPath standinPath; };
  real = nixpkgsSrc != null;
  nixpkgs = if real then callFlake nixpkgsSrc { } else standin.input;
  inherit (nixpkgs) lib;
  evalNixos = if real then nixpkgs.lib.nixosSystem else standin.nixos.evalConfig;
  # A flake's outputs, called as Nix would call them (self is the result, with outPath).
  callFlake = src: inputs:
    let
      outputs = (import (src + "/flake.nix")).outputs (inputs // { inherit self; });
      self = outputs // { outPath = src; inherit inputs outputs; };
    in
    self;
  microvm = callFlake microvmSrc { inherit nixpkgs; spectrum = throw "spectrum (microvm.nix's graphics overlay) is not used by NX"; };
  colmena = callFlake colmenaSrc {
    inherit nixpkgs;
    stable = nixpkgs;
    flake-utils = callFlake flakeUtilsSrc { };
    nix-github-actions = throw "nix-github-actions is not used by Colmena's lib";
    flake-compat = throw "flake-compat is not used by Colmena's lib";
  };
  nix-darwin =
    if nixDarwinSrc == null
    then { lib.darwinSystem = _: throw "nix-darwin's source was not given (--nix-darwin)"; }
    else callFlake nixDarwinSrc { inherit nixpkgs; };
  self = callFlake repo { inherit nixpkgs microvm colmena nix-darwin; };

  system = "x86_64-linux";
  pkgs = nixpkgs.legacyPackages.${system};
  check = cond: msg: if cond then true else throw msg;
  checkAll = conds: builtins.all (c: check c.cond c.msg) conds;
  hasAll = wanted: list: builtins.all (w: builtins.elem w list) wanted;

  # A host: NixOS's assertions (the stand-in toplevel), and what nxd's unit needs.
  host = name: cfg:
    let
      c = cfg.config;
      nx = c.services.nx;
      nxd = c.systemd.services.nxd;
      tokenKey = lib.removePrefix "/run/keys/" nx.tokenFile;
      isColmenaKey = nx.tokenFile != null && lib.hasPrefix "/run/keys/" nx.tokenFile;
      onMicrovm = nx.microvm.kernelDir != null;
      vmm = { qemu = pkgs.qemu_kvm; cloud-hypervisor = pkgs.cloud-hypervisor; firecracker = pkgs.firecracker; }.${nx.microvm.vmm};
      portOf = addr: lib.toInt (lib.last (lib.splitString ":" addr));
      routerPort = portOf nx.routerListen;
      sftp = nx.sftp or { listen = null; };
      sftpPort = if sftp.listen != null && (sftp.openFirewall or false) then portOf sftp.listen else null;
    in
    assert checkAll [
      {
        cond = isColmenaKey -> (hasAll [ "${tokenKey}-key.service" ] nxd.after && hasAll [ "${tokenKey}-key.service" ] nxd.wants);
        msg = "${name}: tokenFile ${nx.tokenFile} is a Colmena key, but nxd is not after and wanting ${tokenKey}-key.service";
      }
      {
        cond = onMicrovm -> builtins.elem "kvm" c.users.users.nx.extraGroups;
        msg = "${name}: the microvm backend is on, but the nx user is not in the kvm group";
      }
      {
        cond = onMicrovm -> (hasAll [ pkgs.qemu_kvm vmm pkgs.socat ] nxd.path && hasAll [ pkgs.qemu_kvm vmm pkgs.socat ] c.environment.systemPackages);
        msg = "${name}: the microvm backend is on, but QEMU, ${nx.microvm.vmm} or socat is missing from nxd's path or the system's packages";
      }
      {
        cond = nx.database.createLocally -> builtins.any (u: u.name == "nx" && (u.ensureClauses.superuser or false)) c.services.postgresql.ensureUsers;
        msg = "${name}: databases.admin_url must be a superuser connection, but the nx role is not a superuser";
      }
      {
        cond = nx.database.createLocally -> lib.hasInfix "nx root nx" c.services.postgresql.identMap;
        msg = "${name}: nxd's pg_dump and pg_restore units run as root and connect as nx, but root may not";
      }
      {
        cond = routerPort < 1024 -> (c.boot.kernel.sysctl."net.ipv4.ip_unprivileged_port_start" or 1024) <= routerPort;
        msg = "${name}: the router (nx-router.service, as the nx user, no capabilities) cannot bind port ${toString routerPort}";
      }
      {
        cond = sftpPort != null -> builtins.elem sftpPort c.networking.firewall.allowedTCPPorts;
        msg = "${name}: sftp.openFirewall, but the SFTP port ${toString sftpPort} is closed";
      }
      {
        cond = (c.boot.kernel.sysctl."net.ipv4.ip_forward" or 0) == 1 && builtins.elem "CAP_NET_ADMIN" nxd.serviceConfig.AmbientCapabilities
          && builtins.elem "AF_NETLINK" nxd.serviceConfig.RestrictAddressFamilies && hasAll [ pkgs.nftables ] nxd.path;
        msg = "${name}: nxd sets up the deployments' network (nx0, the nftables table inet nx): it needs CAP_NET_ADMIN, AF_NETLINK, nft on its path and ip_forward on";
      }
      {
        cond = c.networking.nftables.enable -> !c.networking.nftables.flushRuleset;
        msg = "${name}: a firewall reload would flush nxd's nftables table inet nx (networking.nftables.flushRuleset)";
      }
      {
        cond = builtins.any (i: builtins.elem 53 i.allowedUDPPorts) (builtins.attrValues c.networking.firewall.interfaces);
        msg = "${name}: the deployments' DNS (port 53 on their gateway, on the nx-* links) is closed by the firewall";
      }
      {
        cond = nx.openFirewall -> builtins.elem routerPort c.networking.firewall.allowedTCPPorts;
        msg = "${name}: openFirewall, but the router's port ${toString routerPort} is closed";
      }
    ];
    {
      toplevel = c.system.build.toplevel.name;
      warnings = c.warnings;
      nxd = {
        inherit (nxd) after wants requires;
        path = map (p: p.name) nxd.path;
        inherit (nxd.serviceConfig) User AmbientCapabilities CapabilityBoundingSet;
        groups = c.users.users.nx.extraGroups;
      };
      firewall = c.networking.firewall.allowedTCPPorts;
    };

  # microvm.nix's own runner for a guest (lib/runners/<hypervisor>.nix), to read its command.
  runnerOf = hypervisor:
    let
      guest = (self.packages.${system}."sandbox-microvm-${hypervisor}");
      c = (import (repo + "/sandbox-images") {
        inherit nixpkgs microvm pkgs hypervisor;
        sandbox = { pkgs, ... }: { nx.sandbox.program = "${self.packages.${pkgs.stdenv.hostPlatform.system}.sample-app}/bin/nx-sample-app"; };
      }).guest.config;
      mlib = import (microvmSrc + "/lib") { inherit lib; };
    in
    {
      inherit guest;
      config = c.microvm;
      runner = import (microvmSrc + "/lib/runners/${hypervisor}.nix") {
        inherit pkgs;
        microvmConfig = c.microvm // { inherit (c.networking) hostName; inherit hypervisor; };
        macvtapFds = { };
        linuxTarget = "bzImage";
        inherit (mlib) withDriveLetters extractOptValues extractParamValue;
      };
    };
  # A command line as escapeShellArgs wrote it ('a' 'b' ...), back to its words.
  # Every option NX declares has a type that says something and a description.
  documented = prefix: opts:
    let
      all = lib.collect lib.isOption opts;
      bad = builtins.filter (o: (o.description or null) == null || builtins.elem o.type.name [ "unspecified" "anything" "raw" ]) all;
    in
    assert check (bad == [ ]) "${prefix}: options without a type or a description: ${toString (map (o: lib.showOption o.loc) bad)}";
    builtins.length all;
  # A command line as lib.escapeShellArgs wrote it, back to its words.
  words = cmd: map (m: lib.removePrefix "'" (lib.removeSuffix "'" (builtins.head m)))
    (builtins.filter builtins.isList (builtins.split "('[^']*'|[^ ']+)" cmd));
  after = flag: argv:
    let i = lib.lists.findFirstIndex (a: a == flag) null argv;
    in if i == null then throw "no ${flag} in ${toString argv}" else builtins.elemAt argv (i + 1);
in
{
  "options" = {
    "services.nx" = documented "services.nx" self.nixosConfigurations.ovh-1.options.services.nx;
    "nx.sandbox" = documented "nx.sandbox" self.nixosConfigurations.sandbox-example.options.nx.sandbox;
  };
  "nixosConfigurations.aws-1" = host "aws-1" self.nixosConfigurations.aws-1;
  "nixosConfigurations.ovh-1" = host "ovh-1" self.nixosConfigurations.ovh-1;
  "nixosConfigurations.sandbox-example" =
    let c = self.nixosConfigurations.sandbox-example.config;
    in {
      toplevel = c.system.build.toplevel.name;
      runner = builtins.seq c.microvm.declaredRunner.outPath c.microvm.declaredRunner.name;
      inherit (c.microvm) hypervisor;
      interfaces = map (i: { inherit (i) type id; }) c.microvm.interfaces;
      forwardPorts = map (f: { inherit (f) from; host = f.host.port; guest = f.guest.port; }) c.microvm.forwardPorts;
      warnings = c.warnings;
    };
  # A package's path covers the scripts it is built from (checks/eval/pkgs.nix): a throw in a
  # runner's command fails here as it would when building.
  "packages.${system}" = lib.mapAttrs (_: p: builtins.seq p.outPath p.name) self.packages.${system};
  # The other systems' packages (`nix flake check` evaluates them all): the Mac's CLI, and
  # aarch64-linux's guests.
  "packages.aarch64-linux" = lib.mapAttrs (_: p: builtins.seq p.outPath p.name) self.packages.aarch64-linux;
  "packages.aarch64-darwin" = lib.mapAttrs (_: p: builtins.seq p.outPath p.name) self.packages.aarch64-darwin;
  "apps, devShells, formatter" = lib.genAttrs [ system "aarch64-linux" "aarch64-darwin" "x86_64-darwin" ] (s: {
    apps = lib.mapAttrs (_: a: a.program) self.apps.${s};
    devShell = builtins.seq self.devShells.${s}.default.outPath (map (p: p.name) self.devShells.${s}.default.packages);
    formatter = self.formatter.${s}.name;
  });
  # The VM test (checks/host.nix) of each Linux system: its node and its test script.
  checks = lib.mapAttrs
    (s: c:
      let t = c.host;
      in {
        inherit (t) name;
        # nixpkgs' test driver evaluates the node; the stand-in evaluates it as a configuration.
        node =
          if real then t.nodes.host.system.build.toplevel.name
          else (evalNixos { system = s; modules = [ t.nodes.host ]; }).config.system.build.toplevel.name;
        testScriptLines = builtins.length (lib.splitString "\n" t.testScript);
      })
    self.checks;
  # Colmena's own evaluation of the hive (lib.makeHive, its deployment options and key modules).
  colmenaHive =
    let
      hive = self.colmenaHive;
      keyUnits = name: node:
        let
          c = node.config;
          keys = lib.filterAttrs (_: k: k.path == c.services.nx.tokenFile) c.deployment.keys;
        in
        assert check (keys != { }) "${name}: services.nx.tokenFile is not one of the node's deployment.keys";
        lib.mapAttrsToList
          (k: _:
            let unit = "${k}-key.service";
            in assert check (c.systemd.services ? "${k}-key") "${name}: Colmena made no ${unit}";
            assert check (builtins.elem unit c.systemd.services.nxd.after && builtins.elem unit c.systemd.services.nxd.wants)
              "${name}: nxd is not after and wanting ${unit}";
            unit)
          keys;
    in
    {
      toplevel = lib.mapAttrs (_: t: t.name) hive.toplevel;
      nxdWaitsFor = lib.mapAttrs keyUnits hive.nodes;
      deployment = lib.mapAttrs (_: d: { inherit (d) targetHost tags; keys = builtins.attrNames d.keys; }) hive.deploymentConfig;
    };
  # The flags nxd's microvm backend passes (orchestrator/nx-orchestrator/src/backend/microvm/vmm.rs,
  # whose unit tests pin them) against microvm.nix's runner for the same guest: same flags, same
  # value formats, the tap named by the interface's id.
  "microvm runners" =
    let
      ch = runnerOf "cloud-hypervisor";
      chArgv = words ch.runner.command;
      chIface = builtins.head ch.config.interfaces;
      fc = runnerOf "firecracker";
      fcArgv = words fc.runner.command;
      qemu = runnerOf "qemu";
      qemuArgv = words qemu.runner.command;
    in
    assert checkAll
      ([
        { cond = hasAll [ "--kernel" "--initramfs" "--cmdline" "--cpus" "--memory" "--net" "--serial" ] chArgv; msg = "cloud-hypervisor: microvm.nix's runner lacks a flag nxd passes: ${toString chArgv}"; }
        { cond = after "--cpus" chArgv == "boot=${toString ch.config.vcpu}"; msg = "cloud-hypervisor --cpus: ${after "--cpus" chArgv}"; }
        { cond = builtins.elem "size=${toString ch.config.mem}M" (lib.splitString "," (after "--memory" chArgv)); msg = "cloud-hypervisor --memory: ${after "--memory" chArgv}"; }
        { cond = builtins.elem "tap=${chIface.id}" (lib.splitString "," (after "--net" chArgv)); msg = "cloud-hypervisor --net: ${after "--net" chArgv}"; }
        { cond = after "--serial" chArgv == "tty"; msg = "cloud-hypervisor --serial: ${after "--serial" chArgv}"; }
        { cond = hasAll [ "--config-file" ] fcArgv && (builtins.head fc.config.interfaces).type == "tap"; msg = "firecracker: ${toString fcArgv}"; }
        { cond = hasAll [ "-M" "-kernel" "-initrd" "-append" "-m" "-smp" "-netdev" ] qemuArgv; msg = "qemu: microvm.nix's runner lacks a flag nxd passes: ${toString qemuArgv}"; }
        { cond = lib.hasPrefix "microvm," (after "-M" qemuArgv); msg = "qemu -M: ${after "-M" qemuArgv}"; }
        { cond = builtins.match "user,id=[^,]*,hostfwd=tcp:[^:]*:8080-[^:]*:8080,?.*" (after "-netdev" qemuArgv) != null; msg = "qemu -netdev: ${after "-netdev" qemuArgv}"; }
      ]);
    {
      cloud-hypervisor = { argv = chArgv; nxd = "cloud-hypervisor --kernel K --initramfs I --cmdline C --cpus boot=N --memory size=MM --net tap=nx<port> --serial tty --console off"; };
      firecracker = { argv = fcArgv; nxd = "firecracker --no-api --config-file F (boot-source, machine-config, network-interfaces[0].host_dev_name = nx<port>)"; };
      qemu = { argv = qemuArgv; nxd = "qemu-system-x86_64 -M microvm,rtc=on -accel A -cpu C -m MM -smp N ... -kernel K -initrd I -append C -netdev user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:P-10.0.2.15:P[,guestfwd=...] -device virtio-net-device,netdev=n0"; };
    };
  "darwinConfigurations.dev-mac" = self.darwinConfigurations.dev-mac.config.system.build.toplevel.name;
}
