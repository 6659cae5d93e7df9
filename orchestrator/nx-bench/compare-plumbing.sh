#!/usr/bin/env bash
# The plumbing NX did not choose, timed the same way: one deployment's network setup (a fresh
# network namespace given an interface, an address and a route on a host-side bridge) with the
# CNI reference plugins (Debian's containernetworking-plugins: bridge + host-local) and with
# netavark (Podman's network stack, Debian's netavark: bridge driver, iptables firewall), N times
# each, inside a throwaway network and mount namespace (never the machine's own network).
# NX's own (rtnetlink in the launcher) is `cargo run --release -p nx-bench -- --only network`.
# Needs root, iproute2, containernetworking-plugins, netavark (and iptables for netavark).
set -euo pipefail
N=${N:-50}
if [[ "${1:-}" != inside ]]; then
  exec unshare --net --mount "$0" inside
fi
mount -t tmpfs none /run
mkdir -p /run/netns /run/cni-ipam /run/netavark
summary() { sort -n | awk -v what="$1" '{a[NR]=$1} END {printf "| %-40s | %4d | %8.1f | %8.1f |\n", what, NR, a[int(NR*0.5)]/1000, a[int(NR*0.99)]/1000}'; }
ms_since() { echo $(( ($(date +%s%N) - $1) / 1000 )); }
echo "| plumbing (one deployment's setup)        |    n |   p50 ms |   p99 ms |"
echo "|------------------------------------------|------|----------|----------|"
cni='{"cniVersion":"1.0.0","name":"nxbench","type":"bridge","bridge":"cni0","isGateway":true,"ipMasq":false,"ipam":{"type":"host-local","subnet":"10.214.0.0/16","dataDir":"/run/cni-ipam"}}'
for i in $(seq "$N"); do
  ip netns add cni$i
  s=$(date +%s%N)
  echo "$cni" | CNI_COMMAND=ADD CNI_CONTAINERID=c$i CNI_NETNS=/run/netns/cni$i CNI_IFNAME=eth0 \
    CNI_PATH=/usr/lib/cni /usr/lib/cni/bridge >/dev/null
  ms_since "$s"
done | summary "CNI bridge + host-local"
net_id=$(printf '%064d' 7)
for i in $(seq "$N"); do
  ip netns add nv$i
  opts="{\"container_id\":\"$(printf '%064d' "$i")\",\"container_name\":\"c$i\",\"networks\":{\"nv\":{\"interface_name\":\"eth0\",\"static_ips\":[\"10.215.$((i / 200)).$((i % 200 + 2))\"]}},\"network_info\":{\"nv\":{\"dns_enabled\":false,\"driver\":\"bridge\",\"id\":\"$net_id\",\"internal\":false,\"ipv6_enabled\":false,\"name\":\"nv\",\"network_interface\":\"nv0\",\"subnets\":[{\"subnet\":\"10.215.0.0/16\",\"gateway\":\"10.215.0.1\"}]}},\"port_mappings\":[]}"
  s=$(date +%s%N)
  echo "$opts" | /usr/lib/podman/netavark --config /run/netavark setup /run/netns/nv$i >/dev/null
  ms_since "$s"
done | summary "netavark bridge (iptables firewall)"
