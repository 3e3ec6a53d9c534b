# nixosModules.canopy: one Canopy node as a hardened systemd service.
#
# Usage (in a flake):
#   imports = [ canopy.nixosModules.canopy ];
#   services.canopy = { enable = true; http.port = 80; openFirewall = true; };
#
# The service runs `canopy node --config /etc/canopy/node.yaml`, the same
# path, keys and stop/restart semantics as the busybox appliance that
# `image/build` makes (see docs/appliance.md).
self:
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.services.canopy;
  inherit (lib) mkOption types;

  # "0.0.0.0" + 80 -> "0.0.0.0:80"; "::" + 80 -> "[::]:80".
  socket =
    listen:
    if lib.hasInfix ":" listen.address then
      "[${listen.address}]:${toString listen.port}"
    else
      "${listen.address}:${toString listen.port}";

  listenOption = name: defaultAddress: defaultPort: {
    address = mkOption {
      type = types.str;
      default = defaultAddress;
      example = "0.0.0.0";
      description = "The address the ${name} listens on.";
    };
    port = mkOption {
      type = types.port;
      default = defaultPort;
      description = "The TCP port the ${name} listens on.";
    };
  };

  # YAML is a superset of JSON: the node reads this as its YAML config.
  nodeConfig = pkgs.writeText "canopy-node.yaml" (
    builtins.toJSON {
      data_dir = cfg.dataDir;
      http = socket cfg.http;
      admin = socket cfg.admin;
    }
  );

  # Ports below 1024 need one capability; nothing else is granted.
  lowPort = cfg.http.port < 1024 || cfg.admin.port < 1024;
  capabilities = lib.optional lowPort "CAP_NET_BIND_SERVICE";
  defaultDataDir = cfg.dataDir == "/var/lib/canopy";
in
{
  options.services.canopy = {
    enable = lib.mkEnableOption "the Canopy node (peer-to-peer serverless cloud)";

    package = mkOption {
      type = types.package;
      default = self.packages.${pkgs.stdenv.hostPlatform.system}.canopy;
      defaultText = lib.literalExpression "canopy.packages.\${system}.canopy";
      description = "The package that provides `bin/canopy`.";
    };

    dataDir = mkOption {
      type = types.path;
      default = "/var/lib/canopy";
      description = ''
        Everything the node keeps: its id, Git repositories, the
        content-addressed store and compiled functions. The default is the
        unit's StateDirectory; any other path is created with tmpfiles and
        made writable for the service.
      '';
    };

    http = listenOption "gateway (user HTTP traffic)" "0.0.0.0" 80;

    admin = listenOption "admin API and Git remote" "127.0.0.1" 7070;

    clusterSecretFile = mkOption {
      type = types.nullOr types.path;
      default = null;
      example = "/run/keys/canopy-cluster-secret";
      description = ''
        A file holding the cluster's shared secret, handed to the service as
        the systemd credential `cluster-secret` (never copied to the Nix
        store). The standalone node of this version does not read it; see
        docs/appliance.md.
      '';
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open the gateway's port in the firewall.";
    };

    openAdminFirewall = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Open the admin port in the firewall. The admin API and Git remote have
        no authentication yet: prefer an SSH tunnel to 127.0.0.1.
      '';
    };

    logLevel = mkOption {
      type = types.str;
      default = "info";
      example = "canopy_node=debug,info";
      description = "RUST_LOG filter for the node's log (journald).";
    };
  };

  config = lib.mkIf cfg.enable {
    warnings = lib.optional (cfg.clusterSecretFile != null) ''
      services.canopy.clusterSecretFile is set, but this canopy version runs
      a standalone node and does not read the secret yet.
    '';

    environment.etc."canopy/node.yaml".source = nodeConfig;

    users.users.canopy = {
      isSystemUser = true;
      group = "canopy";
      home = cfg.dataDir;
      description = "Canopy node";
    };
    users.groups.canopy = { };

    systemd.tmpfiles.rules = lib.optional (!defaultDataDir) "d ${cfg.dataDir} 0750 canopy canopy - -";

    networking.firewall.allowedTCPPorts =
      lib.optional cfg.openFirewall cfg.http.port ++ lib.optional cfg.openAdminFirewall cfg.admin.port;

    systemd.services.canopy = {
      description = "Canopy node";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];
      restartTriggers = [ nodeConfig ];
      environment.RUST_LOG = cfg.logLevel;

      serviceConfig = {
        ExecStart = "${cfg.package}/bin/canopy node --config /etc/canopy/node.yaml";
        User = "canopy";
        Group = "canopy";
        # The node stops cleanly on SIGTERM (in-flight requests drain).
        KillSignal = "SIGTERM";
        TimeoutStopSec = "30s";
        Restart = "on-failure";
        RestartSec = "1s";

        StateDirectory = lib.mkIf defaultDataDir "canopy";
        StateDirectoryMode = "0750";
        ReadWritePaths = lib.optional (!defaultDataDir) cfg.dataDir;
        WorkingDirectory = cfg.dataDir;
        LoadCredential = lib.optional (
          cfg.clusterSecretFile != null
        ) "cluster-secret:${cfg.clusterSecretFile}";
        LimitNOFILE = 65536;
        UMask = "0077";

        # Hardening. Not MemoryDenyWriteExecute: wasmtime's Cranelift JIT maps
        # the code it compiles executable.
        CapabilityBoundingSet = capabilities;
        AmbientCapabilities = capabilities;
        NoNewPrivileges = true;
        ProtectSystem = "strict";
        ProtectHome = true;
        PrivateTmp = true;
        PrivateDevices = true;
        PrivateUsers = !lowPort;
        ProtectClock = true;
        ProtectHostname = true;
        ProtectKernelTunables = true;
        ProtectKernelModules = true;
        ProtectKernelLogs = true;
        ProtectControlGroups = true;
        ProtectProc = "invisible";
        ProcSubset = "pid";
        RestrictAddressFamilies = [
          "AF_INET"
          "AF_INET6"
          "AF_UNIX"
        ];
        RestrictNamespaces = true;
        RestrictRealtime = true;
        RestrictSUIDSGID = true;
        LockPersonality = true;
        RemoveIPC = true;
        SystemCallArchitectures = "native";
        SystemCallFilter = [
          "@system-service"
          "~@privileged"
        ];
        SystemCallErrorNumber = "EPERM";
      };
    };
  };
}
