# A stand-in for nixpkgs' package set where nixpkgs itself is absent (checks/eval.sh): every
# package is an inert derivation-shaped attrset (name, version, outPath, the arguments it was
# built from), so that modules and microvm.nix's runners evaluate, and their scripts and command
# lines can be read, without building or fetching anything. Real `lib` (nixpkgs.lib) throughout.
{ lib, system, nixpkgsPath }:
let
  # A store-path-shaped name; nothing is ever built or looked up there.
  storePath = name: inputs: "/nix/store/${builtins.substring 0 32 (builtins.hashString "sha256" (name + inputs))}-${name}";
  drv = name: attrs:
    let
      self = {
        type = "derivation";
        inherit name;
        # The hash covers the script or text it is built from: forcing the path forces them,
        # as building would (a throw in a runner's script fails here too).
        outPath = storePath name (builtins.toJSON (builtins.intersectAttrs { text = 0; script = 0; } attrs));
        drvPath = storePath "${name}.drv" "";
        outputs = [ "out" ];
        out = self;
        dev = self;
        bin = self;
        meta = { };
        passthru = { };
        overrideAttrs = f: drv name (attrs // (if builtins.isFunction f then f attrs else f));
        override = args: drv name (attrs // (if builtins.isFunction args then args attrs else args));
      } // attrs;
    in
    self;
  package = pname: version: packageWith pname version { };
  packageWith = pname: version: extra: drv "${pname}-${version}" ({ inherit pname version; } // extra);
  platform = lib.systems.elaborate system;
  # callPackage: the function's formals from this set, unknown ones as inert packages.
  callPackageWith = scope: fn: args:
    let
      f = if builtins.isFunction fn then fn else import fn;
      formals = builtins.functionArgs f;
      auto = builtins.mapAttrs (n: _: scope.${n} or (package n "0")) formals;
    in
    f (auto // args);
  pkgs = {
    _type = "pkgs";
    inherit lib system;
    path = nixpkgsPath;
    stdenv = {
      hostPlatform = platform;
      buildPlatform = platform;
      targetPlatform = platform;
      inherit (platform) isLinux isDarwin;
      mkDerivation = args: drv (args.name or "${args.pname}-${args.version}") args;
    };
    stdenvNoCC = pkgs.stdenv;
    buildPackages = pkgs;
    __splicedPackages = pkgs;
    appendOverlays = _: pkgs;
    pkgsStatic = pkgs;
    callPackage = callPackageWith pkgs;
    # passthru attributes land on the derivation, as with stdenv.mkDerivation.
    runCommand = name: env: script: drv name (env // env.passthru or { } // { inherit script; });
    runCommandLocal = pkgs.runCommand;
    writeText = name: text: drv name { inherit text; };
    writeTextFile = args: drv args.name args;
    writeScript = name: text: drv name { inherit text; };
    writeShellScript = name: text: drv name { inherit text; };
    writeShellScriptBin = name: text: drv name { inherit text; };
    writeShellApplication = args: drv args.name args;
    writeClosure = paths: drv "closure" { inherit paths; };
    closureInfo = { rootPaths }: drv "closure-info" { inherit rootPaths; };
    symlinkJoin = args: drv args.name args;
    buildEnv = args: drv args.name args;
    mkShell = args: drv "shell" args;
    writers = {
      writeJSON = name: value: drv name { inherit value; };
      writePython3 = name: _: text: drv name { inherit text; };
    };
    replaceVars = src: replacements: drv (baseNameOf src) { inherit replacements; };
    formats.toml = _: { generate = name: value: drv name { inherit value; }; type = lib.types.anything; };
    formats.json = _: { generate = name: value: drv name { inherit value; }; type = lib.types.anything; };
    formats.ini = _: { generate = name: value: drv name { inherit value; }; type = lib.types.anything; };
    rustPlatform.buildRustPackage = args: drv "${args.pname}-${args.version}" args;
    dockerTools.buildLayeredImage = args: drv "${args.name}.tar.gz" args;
    testers.runNixOSTest = args: drv "vm-test-run-${args.name}" args;
    linux = packageWith "linux" "6.12.0" { target = platform.linux-kernel.target or (if platform.isAarch64 then "Image" else "bzImage"); };
    linuxPackages.kernel = pkgs.linux;
    linuxPackages_latest.kernel = pkgs.linux;
    cloud-hypervisor = package "cloud-hypervisor" "48.0";
    firecracker = package "firecracker" "1.13.1";
    qemu = packageWith "qemu" "10.0.0" { configureFlags = [ "--enable-seccomp" ]; };
    qemu_kvm = pkgs.qemu;
    nix = package "nix" "2.28.0";
    darwin.linux-builder = packageWith "linux-builder" "0" { nixosConfig.nixpkgs.hostPlatform.system = "aarch64-linux"; };
    virtiofsd = packageWith "virtiofsd" "1.13.2" { meta.mainProgram = "virtiofsd"; };
    python3Packages.supervisor = packageWith "supervisor" "4.2.5" { meta.mainProgram = "supervisord"; };
  } // lib.genAttrs [
    "bash"
    "bubblewrap"
    "cargo"
    "clippy"
    "coreutils"
    "curl"
    "deadnix"
    "e2fsprogs"
    "erofs-utils"
    "gawk"
    "gnused"
    "inotify-tools"
    "jq"
    "iproute2"
    "kmod"
    "netcat"
    "nftables"
    "nixpkgs-fmt"
    "openssh"
    "pkg-config"
    "postgresql"
    "python3"
    "rustc"
    "rustfmt"
    "socat"
    "squashfsTools"
    "systemd"
    "tzdata"
    "util-linux"
    "wrk"
    "xz"
  ]
    (n: package n "0");
in
pkgs
