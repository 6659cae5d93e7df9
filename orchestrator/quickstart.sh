#!/usr/bin/env bash
# Runs NX for real on this machine: installs the packages, builds nxd, nx-router, nx and the static sample
# app, starts nxd with its embedded defaults (a private systemd manager and PostgreSQL under
# $NX_STATE_DIR), pushes the sample, promotes it, and curls its preview and production URLs.
# nxd keeps running afterwards; stop it (manager-stop once nxd has exited) with:
# pid=$(cat $NX_STATE_DIR/nxd.pid); kill $pid && tail --pid=$pid -s 0.2 -f /dev/null &&
# orchestrator/target/release/nxd manager-stop --state-dir $NX_STATE_DIR
set -euo pipefail
cd "$(dirname "$0")"
state=${NX_STATE_DIR:-/var/lib/nx-quickstart}
# The API's and the router's ports on 127.0.0.1 (a machine where 7700/7780 are taken:
# NX_API_PORT=7701 NX_ROUTER_PORT=7781). A second nxd beside a running one is refused: one nxd
# runs a network namespace's deployments' network.
api_port=${NX_API_PORT:-7700}
router_port=${NX_ROUTER_PORT:-7780}
bash install-deps.sh
cargo build --release --locked -p nxd -p nx-router -p nx-cli
cargo build --release --locked -p nx-sample-app -p nx-vm-init --target x86_64-unknown-linux-musl
sample=target/x86_64-unknown-linux-musl/release/nx-sample-app

if [ -f "$state/nxd.pid" ] && kill -0 "$(cat "$state/nxd.pid")" 2>/dev/null; then
  echo "nxd already running (pid $(cat "$state/nxd.pid"))"
else
  mkdir -p "$state"
  # The microvm backend too: Debian's kernel (install-deps.sh fetched it) and NX's guest init.
  cat >"$state/nxd.toml" <<EOF
state_dir = "$state"
api_listen = "127.0.0.1:$api_port"
router_listen = "127.0.0.1:$router_port"

[microvm]
kernel_dir = "${NX_KERNEL_DIR:-/var/cache/nx/kernel}"
init = "$PWD/target/x86_64-unknown-linux-musl/release/nx-vm-init"
EOF
  target/release/nxd --config "$state/nxd.toml" >"$state/nxd.log" 2>&1 &
  echo $! >"$state/nxd.pid"
fi
export NX_HOST=http://127.0.0.1:$api_port
# (The first start probes KVM and TCG for the microvm backend: up to ~15 s.)
up=
for _ in $(seq 300); do [ -s "$state/token" ] && curl -sf -o /dev/null -H "Authorization: Bearer $(cat "$state/token")" $NX_HOST/v1/health && up=1 && break; sleep 0.1; done
if [ -z "$up" ]; then
  echo "nxd did not answer on $NX_HOST within 30 s; the end of $state/nxd.log:" >&2
  tail -n 20 "$state/nxd.log" >&2
  exit 1
fi
NX_TOKEN=$(cat "$state/token")
export NX_TOKEN

nx=target/release/nx
id=$($nx --json push "$sample" --sandbox hello --env APP_VERSION=v1 | sed -n 's/^    "id": "\(.*\)",$/\1/p' | head -1)
$nx promote hello "$id"
$nx ls
preview="http://$id.hello.nx.localhost:$router_port/"
production="http://hello.nx.localhost:$router_port/"
echo "preview    $preview -> $(curl -sS --resolve "$id.hello.nx.localhost:$router_port:127.0.0.1" "$preview")"
echo "production $production -> $(curl -sS --resolve "hello.nx.localhost:$router_port:127.0.0.1" "$production")"
echo "nx is at target/release/nx; export NX_HOST=$NX_HOST NX_TOKEN=\$(cat $state/token)"
echo "a microVM: target/release/nx push $sample --sandbox vm --backend microvm"
