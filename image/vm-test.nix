# checks.<system>.vm: one appliance VM boots, serves, takes a push and
# answers a request (run with `nix build .#checks.x86_64-linux.vm`). The
# three-VM cluster is checks.cluster (image/cluster-test.nix).
{ self, hello }:
{
  name = "canopy-appliance";

  nodes.appliance =
    { pkgs, ... }:
    {
      imports = [ self.nixosModules.canopy ];
      services.canopy = {
        enable = true;
        http.port = 8080;
      };
      environment.systemPackages = [
        pkgs.git
        pkgs.curl
      ];
      virtualisation.memorySize = 1024;
    };

  testScript = ''
    appliance.start()
    appliance.wait_for_unit("canopy.service")
    appliance.wait_until_succeeds("curl -sf http://127.0.0.1:7070/api/health | grep -q '\"ok\": *true'", timeout=60)

    appliance.succeed(
        "mkdir -p /tmp/project/functions",
        "cp ${hello}/hello.wasm /tmp/project/functions/hello.wasm",
        "printf 'project: hello\\nfunctions:\\n  hello:\\n    wasm: functions/hello.wasm\\n    http: { path: /hello }\\n' > /tmp/project/canopy.yaml",
        "cd /tmp/project && git init -q -b main && git add -A"
        + " && git -c user.name=t -c user.email=t@canopy.invalid commit -q -m hello"
        + " && git push http://canopy:$(cat /var/lib/canopy/admin-token)@127.0.0.1:7070/git/hello.git HEAD:refs/heads/main",
    )
    appliance.wait_until_succeeds(
        "curl -sf -H 'Host: hello.localhost' http://127.0.0.1:8080/hello | grep -q 'Hello from Canopy!'",
        timeout=120,
    )

    # The deployment survives a restart of the service (restored from the data dir).
    appliance.systemctl("restart canopy.service")
    appliance.wait_until_succeeds(
        "curl -sf -H 'Host: hello.localhost' http://127.0.0.1:8080/hello | grep -q 'Hello from Canopy!'",
        timeout=60,
    )

    # And a reboot of the machine.
    appliance.shutdown()
    appliance.start()
    appliance.wait_for_unit("canopy.service")
    appliance.wait_until_succeeds(
        "curl -sf -H 'Host: hello.localhost' http://127.0.0.1:8080/hello | grep -q 'Hello from Canopy!'",
        timeout=60,
    )
  '';
}
