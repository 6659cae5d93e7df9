# nx.sandbox: what runs inside a sandbox guest. The user's binary is the one service, with its
# environment, port and limits. sandbox-images/ renders this module as an OCI image (container
# backend, Podman) and as a microvm.nix guest (microvm backend).
{ config, lib, ... }:
let
  cfg = config.nx.sandbox;
  inherit (lib) mkOption types;
in
{
  options.nx.sandbox = {
    program = mkOption {
      type = types.str;
      example = lib.literalExpression ''"''${pkgs.pkgsStatic.hello}/bin/hello"'';
      description = "The binary to run (a store path).";
    };
    args = mkOption { type = types.listOf types.str; default = [ ]; description = "Its arguments."; };
    port = mkOption { type = types.port; default = 8080; description = "The port it listens on ($PORT)."; };
    environment = mkOption {
      type = types.attrsOf types.str;
      default = { };
      description = "Extra environment (NX sets PORT, NX_* and, with a database, DATABASE_URL and PG*).";
    };
    memoryMaxMb = mkOption { type = types.ints.positive; default = 512; description = "MemoryMax, MiB."; };
    cpuQuotaPercent = mkOption { type = types.ints.positive; default = 100; description = "CPUQuota, percent of one CPU."; };
    tasksMax = mkOption { type = types.ints.positive; default = 256; description = "TasksMax."; };
    dataDir = mkOption { type = types.str; default = "/var/lib/nx-app"; description = "Its writable data directory ($NX_DATA_DIR)."; };
  };

  config = {
    systemd.services.nx-app = {
      description = "NX sandbox program";
      wantedBy = [ "multi-user.target" ];
      after = [ "network.target" ];
      environment = cfg.environment // {
        PORT = toString cfg.port;
        NX_DATA_DIR = cfg.dataDir;
      };
      serviceConfig = {
        ExecStart = lib.escapeShellArgs ([ cfg.program ] ++ cfg.args);
        DynamicUser = true;
        StateDirectory = lib.removePrefix "/var/lib/" cfg.dataDir;
        Restart = "on-failure";
        MemoryMax = "${toString cfg.memoryMaxMb}M";
        CPUQuota = "${toString cfg.cpuQuotaPercent}%";
        TasksMax = cfg.tasksMax;
        NoNewPrivileges = true;
        ProtectSystem = "strict";
        ProtectHome = true;
        PrivateTmp = true;
        RestrictNamespaces = true;
        CapabilityBoundingSet = [ "" ];
      };
    };
    networking.firewall.allowedTCPPorts = [ cfg.port ];
  };
}
