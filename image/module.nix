# nixosModules.canopy: one Canopy node as a hardened systemd service.
#
# Usage (in a flake):
#   imports = [ canopy.nixosModules.canopy ];
#   services.canopy = { enable = true; http.port = 80; openFirewall = true; };
#
# The service runs `canopy node` with the generated config (also at
# /etc/canopy/node.yaml), the same keys and stop/restart semantics as the
# busybox appliance that `image/build` makes (see docs/appliance.md). With
# `cluster.enable` the config gets a `cluster:` section; the secret and an
# invite reach the node as systemd credentials, never through the store.
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
  # The unit runs it from its RuntimeDirectory (/run/canopy), next to links
  # to its credentials, so the cluster section names them by relative path
  # (relative to the config file): `cluster.secret`, `cluster.invite`.
  nodeConfig = pkgs.writeText "canopy-node.yaml" (
    builtins.toJSON (
      {
        data_dir = cfg.dataDir;
        http = socket cfg.http;
        admin = socket cfg.admin;
      }
      // lib.optionalAttrs (cfg.adminNames != [ ]) { admin_names = cfg.adminNames; }
      // lib.optionalAttrs (cfg.localCa != null) { local_ca = cfg.localCa; }
      // lib.optionalAttrs cluster.enable {
        cluster = {
          listen = [ (socket cluster.listen) ];
          inherit (cluster) peers mdns quic;
        }
        // lib.optionalAttrs (cfg.clusterSecretFile != null) { secret_file = "cluster.secret"; }
        // lib.optionalAttrs (cluster.inviteFile != null) { invite_file = "cluster.invite"; }
        // lib.optionalAttrs (cluster.replication != null) { inherit (cluster) replication; };
      }
    )
  );

  # `canopy node` with its config in /run/canopy and the systemd credentials
  # (LoadCredential, in $CREDENTIALS_DIRECTORY) linked beside it.
  start = pkgs.writeShellScript "canopy-start" ''
    set -eu
    dir=$RUNTIME_DIRECTORY
    ln -sfn ${nodeConfig} "$dir/node.yaml"
    for name in cluster.secret cluster.invite; do
      credential=''${CREDENTIALS_DIRECTORY:-/nonexistent}/''${name/./-}
      if [ -e "$credential" ]; then
        ln -sfn "$credential" "$dir/$name"
      else
        rm -f "$dir/$name"
      fi
    done
    exec ${cfg.package}/bin/canopy node --config "$dir/node.yaml"
  '';

  cluster = cfg.cluster;

  # Ports below 1024 need one capability; nothing else is granted.
  lowPort =
    cfg.http.port < 1024 || cfg.admin.port < 1024 || (cluster.enable && cluster.listen.port < 1024);
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
        A file holding the cluster's shared secret (64 hex digits; `canopy
        cluster init --secret-file FILE` makes one), the same on every node.
        Handed to the service as the systemd credential `cluster-secret`
        (never copied to the Nix store) and read by the node as its
        `cluster.secret_file`. It guards TCP connections (libp2p pnet), not
        QUIC: see docs/security.md. Needs `cluster.enable`.
      '';
    };

    cluster = {
      enable = lib.mkEnableOption ''
        membership in a Canopy cluster. The first node (no `inviteFile`)
        founds the cluster; every other node joins with an invite from a
        member (`canopy cluster invite --admin URL`)
      '';

      listen = listenOption "peer-to-peer network (TCP, and QUIC on the same UDP port)" "0.0.0.0" 4001;

      peers = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "/ip4/192.0.2.10/tcp/4001/p2p/12D3KooW..." ];
        description = ''
          Nodes to connect to, as libp2p multiaddrs: the addresses `canopy
          cluster invite` prints (with `/p2p/<peer id>`), or a bare
          `/ip4/ADDR/tcp/PORT`. A joining node needs its inviter among them.
        '';
      };

      inviteFile = mkOption {
        type = types.nullOr types.path;
        default = null;
        example = "/run/keys/canopy-invite";
        description = ''
          A file holding an invite token (`canopy-invite-...`, from `canopy
          cluster invite` on a member), handed to the service as the systemd
          credential `cluster-invite`. Only a joining node needs one; a
          member ignores it. systemd fails the unit while the file is missing,
          so write it before the service starts, and unset this option (or
          keep the spent file) after the node joined: a token admits one node
          once and expires.
        '';
      };

      mdns = mkOption {
        type = types.bool;
        default = false;
        description = "Discover peers on the local network with mDNS (UDP 5353; not opened in the firewall).";
      };

      quic = mkOption {
        type = types.bool;
        default = false;
        description = ''
          Also listen and dial over QUIC (UDP, same port). The cluster secret
          does not cover QUIC (only node-key admission does; docs/security.md),
          so it is off by default.
        '';
      };

      replication = mkOption {
        type = types.nullOr types.ints.positive;
        default = null;
        description = "How many nodes keep each blob (default: min(3, members)).";
      };

      openFirewall = mkOption {
        type = types.bool;
        default = false;
        description = "Open the peer-to-peer port (TCP, and UDP when `quic` is on) in the firewall.";
      };
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
        Open the admin port in the firewall. Off 127.0.0.1 the admin API and
        Git remote are served over TLS only, so set adminNames too; an SSH
        tunnel to 127.0.0.1 needs neither.
      '';
    };

    adminNames = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "node1.example.net" "10.0.0.5" ];
      description = ''
        The DNS names and addresses clients reach the admin port by, when it
        listens off loopback: its TLS certificate names exactly these.
      '';
    };

    localCa = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/etc/canopy/ca";
      description = ''
        The directory of the CA (ca.pem, ca-key.pem) that signs the admin
        port's certificate; default DATA_DIR/tls. Share one between nodes
        (`canopy cluster init --ca-dir DIR`); clients trust its ca.pem.
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
    warnings =
      lib.optional (cfg.clusterSecretFile != null && !cluster.enable) ''
        services.canopy.clusterSecretFile is set but services.canopy.cluster.enable
        is not: the node runs standalone and does not read the secret.
      ''
      ++ lib.optional (cluster.enable && cfg.clusterSecretFile == null) ''
        services.canopy.cluster is enabled without clusterSecretFile: any host
        can reach the peer-to-peer port (only node-key admission guards it).
      '';
    assertions = [
      {
        assertion = cluster.inviteFile == null || cluster.peers != [ ];
        message = "services.canopy.cluster.inviteFile needs cluster.peers: the inviting node's address (printed by `canopy cluster invite`).";
      }
    ];

    environment.etc."canopy/node.yaml".source = nodeConfig;
    # `canopy cluster invite`, `canopy status` for the operator.
    environment.systemPackages = [ cfg.package ];

    users.users.canopy = {
      isSystemUser = true;
      group = "canopy";
      home = cfg.dataDir;
      description = "Canopy node";
    };
    users.groups.canopy = { };

    systemd.tmpfiles.rules = lib.optional (!defaultDataDir) "d ${cfg.dataDir} 0750 canopy canopy - -";

    networking.firewall.allowedTCPPorts =
      lib.optional cfg.openFirewall cfg.http.port
      ++ lib.optional cfg.openAdminFirewall cfg.admin.port
      ++ lib.optional (cluster.enable && cluster.openFirewall) cluster.listen.port;
    networking.firewall.allowedUDPPorts = lib.optional (
      cluster.enable && cluster.openFirewall && cluster.quic
    ) cluster.listen.port;

    systemd.services.canopy = {
      description = "Canopy node";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];
      restartTriggers = [ nodeConfig ];
      environment.RUST_LOG = cfg.logLevel;
      # `build.command`s run in bubblewrap (node/src/deploy/build/sandbox.rs);
      # without it the node refuses builds and deploys only prebuilt `wasm:`.
      path = [ pkgs.bubblewrap ];

      serviceConfig = {
        ExecStart = start;
        RuntimeDirectory = "canopy";
        RuntimeDirectoryMode = "0750";
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
        LoadCredential =
          lib.optional (cfg.clusterSecretFile != null) "cluster-secret:${cfg.clusterSecretFile}"
          ++ lib.optional (cluster.inviteFile != null) "cluster-invite:${cluster.inviteFile}";
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
        # The build sandbox makes a user namespace with its own mounts,
        # processes, network, IPC and host name; nothing else may.
        RestrictNamespaces = [
          "user"
          "mnt"
          "pid"
          "net"
          "ipc"
          "uts"
          "cgroup"
        ];
        RestrictRealtime = true;
        RestrictSUIDSGID = true;
        LockPersonality = true;
        RemoveIPC = true;
        SystemCallArchitectures = "native";
        SystemCallFilter = [
          "@system-service"
          "~@privileged"
          # bubblewrap, inside its user namespace: mounts the sandbox's
          # root, pivots into it and drops its capabilities.
          "@mount"
          "pivot_root"
          "capset"
          "setgroups"
          "setresuid"
          "setresgid"
        ];
        SystemCallErrorNumber = "EPERM";
      };
    };
  };
}
