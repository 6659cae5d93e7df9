# A NixOS VM test: a host boots with services.nx, `nx push` the static sample, the preview URL
# answers, promote, production answers, and the sandbox's database answers; a task runs once
# (its nxt-* unit) and a database backup is taken and restored (pg_dump and pg_restore in nxdb-*
# units, as root, connecting as the nx role). Container backend (bubblewrap); the microvm
# backend needs nested KVM, which the test VM does not promise.
{ self, pkgs }:
let
  system = pkgs.stdenv.hostPlatform.system;
  nx = self.packages.${system}.nx;
  sample = self.packages.${system}.sample-app;
in
pkgs.testers.runNixOSTest {
  name = "nx-host";
  nodes.host = { ... }: {
    imports = [ self.nixosModules.host ];
    services.nx = {
      enable = true;
      package = nx;
      baseDomain = "nx.test";
    };
    environment.systemPackages = [ nx pkgs.curl ];
    virtualisation.memorySize = 2048;
  };
  testScript = ''
    host.wait_for_unit("nxd.service")
    host.wait_until_succeeds("test -s /var/lib/nx/token")
    env = "NX_HOST=http://127.0.0.1:7700 NX_TOKEN=$(cat /var/lib/nx/token) "
    out = host.succeed(env + "nx --json push ${sample}/bin/nx-sample-app --sandbox web -e APP_VERSION=v1")
    import json
    dep = json.loads(out)["deployment"]["id"]
    host.succeed(f"curl -sf -H 'Host: {dep}.web.nx.test' http://127.0.0.1:7780/ | grep 'nx-sample v1'")
    host.succeed(env + f"nx promote web {dep}")
    host.succeed("curl -sf -H 'Host: web.nx.test' http://127.0.0.1:7780/ | grep 'nx-sample v1'")
    host.succeed(f"curl -sf -H 'Host: {dep}.web.nx.test' 'http://127.0.0.1:7780/db/put?v=hello'")
    host.succeed(f"curl -sf -H 'Host: {dep}.web.nx.test' http://127.0.0.1:7780/db/list | grep hello")

    # A task: a unit of its own, started by nxd as the nx user (polkit).
    out = host.succeed(env + "nx run-task ${sample}/bin/nx-sample-app -- task print from-a-task")
    assert "from-a-task" in out, out

    # A backup, a change, a restore: the change is gone.
    backup = json.loads(host.succeed(env + "nx --json db backup web -o /tmp/web.dump"))["backup"]
    host.succeed(f"curl -sf -H 'Host: {dep}.web.nx.test' 'http://127.0.0.1:7780/db/put?v=after-backup'")
    host.succeed(env + "nx db restore web " + backup["id"])
    host.succeed(f"curl -sf -H 'Host: {dep}.web.nx.test' http://127.0.0.1:7780/db/list | grep hello")
    host.fail(f"curl -sf -H 'Host: {dep}.web.nx.test' http://127.0.0.1:7780/db/list | grep after-backup")
  '';
}
