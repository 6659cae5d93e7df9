# A stand-in for NixOS where nixpkgs itself is absent (checks/eval.sh): `evalConfig` (the shape
# of nixpkgs' nixos/lib/eval-config.nix and lib.nixosSystem) evaluates a configuration with the
# real lib.evalModules against stand-in declarations of the NixOS options that NX's modules,
# microvm.nix and Colmena set or read. The options NX itself sets are declared with NixOS's types
# (so a wrong type or an unknown unit setting fails as it would on NixOS); namespaces only the
# projects NX builds on touch are free-form. `system.build.toplevel` fails on a failed assertion,
# as NixOS's does. What this cannot see: anything NixOS's own modules would add or check.
{ lib, pkgsFor }:
let
  inherit (lib) mkOption types;
  # NixOS's systemd unit option type (nixos/lib/systemd-types.nix): lists concatenate, other
  # values must agree.
  unitOption = lib.mkOptionType {
    name = "systemd option";
    merge = loc: defs:
      let defs' = lib.filterOverrides defs;
      in
      if lib.any (def: builtins.isList def.value) defs'
      then lib.concatMap (def: lib.toList def.value) defs'
      else lib.mergeEqualOption loc defs';
  };
  units = types.attrsOf unitOption;
  strs = mkOption { type = types.listOf types.str; default = [ ]; };
  free = mkOption { type = types.submodule { freeformType = types.attrsOf types.anything; }; default = { }; };
  # The options of one systemd unit that NixOS declares (nixos/lib/systemd-unit-options.nix).
  unit = extra: types.submodule ({ name, ... }: {
    options = {
      enable = mkOption { type = types.bool; default = true; };
      description = mkOption { type = types.str; default = ""; };
      wantedBy = strs;
      requiredBy = strs;
      upheldBy = strs;
      before = strs;
      after = strs;
      wants = strs;
      requires = strs;
      bindsTo = strs;
      partOf = strs;
      upholds = strs;
      conflicts = strs;
      requisite = strs;
      onFailure = strs;
      onSuccess = strs;
      aliases = strs;
      documentation = strs;
      overrideStrategy = mkOption { type = types.enum [ "asDropinIfExists" "asDropin" ]; default = "asDropinIfExists"; };
      restartTriggers = mkOption { type = types.listOf types.unspecified; default = [ ]; };
      reloadTriggers = mkOption { type = types.listOf types.unspecified; default = [ ]; };
      unitConfig = mkOption { type = units; default = { }; };
      startLimitIntervalSec = mkOption { type = types.nullOr types.int; default = null; };
      startLimitBurst = mkOption { type = types.nullOr types.int; default = null; };
      name = mkOption { type = types.str; default = name; };
    } // extra;
  });
  serviceOptions = {
    serviceConfig = mkOption { type = units; default = { }; };
    environment = mkOption { type = types.attrsOf (types.nullOr (types.oneOf [ types.str types.path types.package ])); default = { }; };
    path = mkOption { type = types.listOf (types.oneOf [ types.package types.str ]); default = [ ]; };
    script = mkOption { type = types.lines; default = ""; };
    scriptArgs = mkOption { type = types.str; default = ""; };
    preStart = mkOption { type = types.lines; default = ""; };
    postStart = mkOption { type = types.lines; default = ""; };
    preStop = mkOption { type = types.lines; default = ""; };
    postStop = mkOption { type = types.lines; default = ""; };
    reload = mkOption { type = types.lines; default = ""; };
    restartIfChanged = mkOption { type = types.bool; default = true; };
    reloadIfChanged = mkOption { type = types.bool; default = false; };
    stopIfChanged = mkOption { type = types.bool; default = true; };
    startAt = mkOption { type = types.either types.str (types.listOf types.str); default = [ ]; };
    confinement = free;
  };
  # A namespace of NixOS options: those declared here typed, anything else accepted as is.
  ns = options: mkOption {
    type = types.submodule { freeformType = types.lazyAttrsOf types.anything; inherit options; };
    default = { };
  };
  unitsOf = extra: mkOption { type = types.attrsOf (unit extra); default = { }; };
  port = types.ints.between 0 65535;

  options = { config, ... }: {
    options = {
      assertions = mkOption { type = types.listOf types.unspecified; default = [ ]; };
      warnings = mkOption { type = types.listOf types.str; default = [ ]; };
      systemd = ns {
        services = unitsOf serviceOptions;
        slices = unitsOf { sliceConfig = mkOption { type = units; default = { }; }; };
        paths = unitsOf { pathConfig = mkOption { type = units; default = { }; }; };
        sockets = unitsOf { socketConfig = mkOption { type = units; default = { }; }; listenStreams = strs; };
        targets = unitsOf { };
        timers = unitsOf { timerConfig = mkOption { type = units; default = { }; }; };
        mounts = mkOption { type = types.listOf types.anything; default = [ ]; };
        network = free;
        tmpfiles = free;
        packages = mkOption { type = types.listOf types.package; default = [ ]; };
      };
      users = {
        users = mkOption {
          default = { };
          type = types.attrsOf (types.submodule ({ name, ... }: {
            options = {
              name = mkOption { type = types.str; default = name; };
              isSystemUser = mkOption { type = types.bool; default = false; };
              isNormalUser = mkOption { type = types.bool; default = false; };
              group = mkOption { type = types.str; default = ""; };
              extraGroups = strs;
              home = mkOption { type = types.path; default = "/var/empty"; };
              createHome = mkOption { type = types.bool; default = false; };
              uid = mkOption { type = types.nullOr types.int; default = null; };
              description = mkOption { type = types.str; default = ""; };
              openssh.authorizedKeys.keys = strs;
            };
          }));
        };
        groups = mkOption {
          default = { };
          type = types.attrsOf (types.submodule ({ name, ... }: {
            options = {
              name = mkOption { type = types.str; default = name; };
              gid = mkOption { type = types.nullOr types.int; default = null; };
              members = strs;
            };
          }));
        };
      };
      networking = ns {
        hostName = mkOption { type = types.str; default = "nixos"; };
        hostId = mkOption { type = types.nullOr types.str; default = null; };
        useNetworkd = mkOption { type = types.bool; default = false; };
        useDHCP = mkOption { type = types.bool; default = true; };
        firewall = {
          enable = mkOption { type = types.bool; default = true; };
          allowedTCPPorts = mkOption { type = types.listOf port; default = [ ]; };
          allowedUDPPorts = mkOption { type = types.listOf port; default = [ ]; };
          trustedInterfaces = strs;
          extraInputRules = mkOption { type = types.lines; default = ""; };
          extraForwardRules = mkOption { type = types.lines; default = ""; };
          checkReversePath = mkOption { type = types.either types.bool (types.enum [ "strict" "loose" ]); default = true; };
          interfaces = mkOption {
            type = types.attrsOf (types.submodule {
              options.allowedTCPPorts = mkOption { type = types.listOf port; default = [ ]; };
              options.allowedUDPPorts = mkOption { type = types.listOf port; default = [ ]; };
            });
            default = { };
          };
        };
        nftables = {
          enable = mkOption { type = types.bool; default = false; };
          flushRuleset = mkOption { type = types.bool; default = true; };
          tables = free;
        };
        nat = free;
        bridges = free;
        interfaces = free;
      };
      boot = ns {
        kernelModules = strs;
        blacklistedKernelModules = strs;
        kernelParams = strs;
        kernel.sysctl = mkOption { type = types.attrsOf types.anything; default = { }; };
        kernelPackages = mkOption { type = types.raw; default = (pkgsFor config).linuxPackages; };
        initrd = free;
        loader = free;
        postBootCommands = mkOption { type = types.lines; default = ""; };
        isContainer = mkOption { type = types.bool; default = false; };
      };
      fileSystems = mkOption {
        default = { };
        type = types.attrsOf (types.submodule ({ name, ... }: {
          options = {
            mountPoint = mkOption { type = types.str; default = name; };
            device = mkOption { type = types.nullOr types.str; default = null; };
            fsType = mkOption { type = types.str; default = "auto"; };
            options = strs;
            neededForBoot = mkOption { type = types.bool; default = false; };
          };
        }));
      };
      environment = ns {
        systemPackages = mkOption { type = types.listOf types.package; default = [ ]; };
        etc = mkOption { type = types.attrsOf types.anything; default = { }; };
        variables = mkOption { type = types.attrsOf types.anything; default = { }; };
        noXlibs = mkOption { type = types.bool; default = false; };
      };
      services = {
        postgresql = {
          enable = mkOption { type = types.bool; default = false; };
          package = mkOption { type = types.package; default = (pkgsFor config).postgresql; };
          ensureDatabases = strs;
          ensureUsers = mkOption { type = types.listOf types.anything; default = [ ]; };
          authentication = mkOption { type = types.lines; default = ""; };
          identMap = mkOption { type = types.lines; default = ""; };
          settings = mkOption { type = types.attrsOf types.anything; default = { }; };
        };
        openssh = {
          enable = mkOption { type = types.bool; default = false; };
          settings = mkOption { type = types.attrsOf types.anything; default = { }; };
        };
        getty = free;
        nix-daemon = free;
        mount-pstore = free;
        udev = free;
      };
      security = ns {
        polkit = {
          enable = mkOption { type = types.bool; default = false; };
          extraConfig = mkOption { type = types.lines; default = ""; };
        };
        pam.loginLimits = mkOption { type = types.listOf types.anything; default = [ ]; };
        wrappers = free;
        virtualisation.flushL1DataCache = mkOption { type = types.nullOr types.str; default = null; };
        acme = free;
      };
      nix = ns {
        enable = mkOption { type = types.bool; default = true; };
        package = mkOption { type = types.package; default = (pkgsFor config).nix; };
        settings = mkOption {
          type = types.submodule { freeformType = types.attrsOf types.anything; options.auto-optimise-store = mkOption { type = types.bool; default = false; }; };
          default = { };
        };
        optimise.automatic = mkOption { type = types.bool; default = false; };
        gc = free;
      };
      nixpkgs = {
        overlays = mkOption { type = types.listOf types.anything; default = [ ]; };
        config = mkOption { type = types.attrsOf types.anything; default = { }; };
        hostPlatform = mkOption { type = types.raw; };
      };
      system = ns {
        stateVersion = mkOption { type = types.str; };
        nixos.label = mkOption { type = types.str; default = "stand-in"; };
        activationScripts = mkOption { type = types.attrsOf types.anything; default = { }; };
        switch.enable = mkOption { type = types.bool; default = true; };
        boot.loader = {
          kernelFile = mkOption { type = types.str; default = "bzImage"; };
          initrdFile = mkOption { type = types.str; default = "initrd"; };
        };
        build = mkOption { type = types.lazyAttrsOf types.raw; default = { }; };
      };
      hardware = free;
      documentation = free;
      virtualisation = free;
      programs = free;
      time = free;
      i18n = free;
      console = free;
    };
    config = {
      _module.args.pkgs = pkgsFor config;
      system.build = {
        initialRamdisk = (pkgsFor config).runCommand "initrd" { } "";
        # NixOS refuses to build a system whose assertions fail; so does the stand-in.
        toplevel =
          let failed = map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);
          in
          if failed != [ ]
          then throw "\nFailed assertions:\n${lib.concatMapStrings (m: "- ${m}\n") failed}"
          else (pkgsFor config).runCommand "nixos-system-${config.networking.hostName}" { } "";
      };
    };
  };

  evalConfig = { system ? null, modules, specialArgs ? { }, ... }:
    let
      eval = lib.evalModules {
        class = "nixos";
        modules = [ options ] ++ lib.optional (system != null) { nixpkgs.hostPlatform = lib.mkDefault system; } ++ modules;
        specialArgs = { modulesPath = toString ./modules; } // specialArgs;
      };
    in
    eval // { inherit (eval._module.args) pkgs; };
in
{
  inherit evalConfig;
  nixosSystem = evalConfig;
}
