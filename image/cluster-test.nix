# checks.<system>.cluster: three appliance VMs form a Canopy cluster, take a
# push on one and answer a request on every one (run with `nix build
# .#checks.x86_64-linux.cluster`). The NixOS counterpart of
# image/cluster-test (the busybox appliance, which CI boots).
#
# node1 founds the cluster; the test asks it for two invites with `canopy
# cluster invite --admin ... --json`, writes them to node2 and node3 (their
# `cluster.inviteFile`) and only then starts their canopy units, which join
# through node1's address on the test network.
{ self, hello }:
let
  # The cluster secret: a test fixture, so it may be in the store here; a
  # real host keeps it out of the store (clusterSecretFile is a credential).
  secret = "5d1c2b3a4f6e7d8c9b0a1f2e3d4c5b6a7988776655443322110ffeeddccbbaa9";

  node =
    { joining }:
    {
      config,
      pkgs,
      lib,
      nodes,
      ...
    }:
    {
      imports = [ self.nixosModules.canopy ];
      services.canopy = {
        enable = true;
        http.port = 8080;
        openFirewall = true;
        clusterSecretFile = "/etc/canopy-test/cluster.secret";
        cluster = {
          enable = true;
          # The test network only (eth1), not qemu's user network.
          listen.address = config.networking.primaryIPAddress;
          openFirewall = true;
          peers = lib.optional joining "/ip4/${nodes.node1.networking.primaryIPAddress}/tcp/4001";
          inviteFile = if joining then "/run/canopy-invite" else null;
        };
      };
      environment.etc."canopy-test/cluster.secret" = {
        text = secret;
        mode = "0400";
      };
      # A joining node starts once the test has written its invite.
      systemd.services.canopy.wantedBy = lib.mkIf joining (lib.mkForce [ ]);
      environment.systemPackages = [
        pkgs.git
        pkgs.curl
        pkgs.jq
      ];
      virtualisation.memorySize = 1024;
    };
in
{
  name = "canopy-cluster";

  nodes = {
    node1 = node { joining = false; };
    node2 = node { joining = true; };
    node3 = node { joining = true; };
  };

  testScript = ''
    import json

    start_all()
    node1.wait_for_unit("canopy.service")
    node1.wait_until_succeeds("curl -sf http://127.0.0.1:7070/api/health | grep -q '\"ok\": *true'", timeout=60)
    # The founder's first admin token; cluster state carries it to every node.
    token = node1.succeed("cat /var/lib/canopy/admin-token").strip()

    for joiner in [node2, node3]:
        joiner.wait_for_unit("multi-user.target")
        answer = json.loads(node1.succeed(f"canopy cluster invite --admin http://127.0.0.1:7070 --token {token} --ttl 600 --json"))
        assert answer["token"].startswith("canopy-invite-"), answer
        joiner.succeed(f"(umask 077 && echo {answer['token']} > /run/canopy-invite)")
        joiner.succeed("systemctl start canopy.service")
        joiner.wait_until_succeeds("curl -sf http://127.0.0.1:7070/api/health | grep -q '\"ok\": *true'", timeout=90)

    def converged(machine):
        status = json.loads(machine.succeed(f"curl -sf -H 'Authorization: Bearer {token}' http://127.0.0.1:7070/api/status"))
        cluster = status.get("cluster") or {}
        return cluster.get("members") == 3 and cluster.get("converged") is True

    for machine in [node1, node2, node3]:
        with machine.nested("waiting for 3 members, converged"):
            retry(lambda _: converged(machine), timeout=90)

    node1.succeed(
        "mkdir -p /tmp/project/functions",
        "cp ${hello}/hello.wasm /tmp/project/functions/hello.wasm",
        "printf 'project: hello\\nfunctions:\\n  hello:\\n    wasm: functions/hello.wasm\\n    http: { path: /hello }\\n' > /tmp/project/canopy.yaml",
        "cd /tmp/project && git init -q -b main && git add -A"
        + " && git -c user.name=t -c user.email=t@canopy.invalid commit -q -m hello"
        + f" && git push http://canopy:{token}@127.0.0.1:7070/git/hello.git HEAD:refs/heads/main",
    )
    for machine in [node1, node2, node3]:
        machine.wait_until_succeeds(
            "curl -sf -H 'Host: hello.localhost' http://127.0.0.1:8080/hello | grep -q 'Hello from Canopy!'",
            timeout=120,
        )
        # And through the test network, from another node (the gateway's port is open).
        node1.succeed(
            f"curl -sf -H 'Host: hello.localhost' http://{machine.name}:8080/hello | grep -q 'Hello from Canopy!'"
        )

    # A restarted member comes back without its invite mattering (it is
    # already admitted) and serves again.
    node2.systemctl("restart canopy.service")
    node2.wait_until_succeeds(
        "curl -sf -H 'Host: hello.localhost' http://127.0.0.1:8080/hello | grep -q 'Hello from Canopy!'",
        timeout=60,
    )
    retry(lambda _: converged(node2), timeout=90)
  '';
}
