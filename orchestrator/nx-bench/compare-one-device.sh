#!/usr/bin/env bash
# One device per deployment instead of NX's veth pair: kernel memory per deployment with N kept
# up (SUnreclaim + Percpu + VmallocUsed after the kernel settles, as `nx-bench --only network`
# counts it), for an empty namespace, NX's layout done with `ip` (veth pair, /32 route, the
# launcher's sysctls) and a macvlan per deployment, ROUNDS rounds each, IPv4 only in all three
# (IPv6 off in the deployments' namespaces before their device exists), inside a throwaway
# network and mount namespace (never the machine's own network).
# This kernel has no ipvlan and no netkit (CONFIG_IPVLAN, CONFIG_NETKIT unset; no modules):
# macvlan is the one single-device driver it has. Its layout: a veth nxh (host side) / nxl
# (lower) here; each deployment's eth0 a macvlan of nxl in private mode (no shortcut between
# deployments: everything leaves through nxl and arrives on nxh, through the host's firewall);
# one on-link route for the deployments' half on nxh and a static neighbour per deployment.
# What it cannot give: every deployment's packets arrive on the same nxh, told apart only by
# the source MAC and address in the frame, which anything holding CAP_NET_RAW or CAP_NET_ADMIN
# in a deployment's namespace forges (the veth pair's host end names its deployment).
# Usage: compare-one-device.sh [N [ROUNDS]] (defaults 500, 2). Needs root, iproute2, python3.
set -euo pipefail
N=${1:-500}
ROUNDS=${2:-2}
if [[ "${3:-}" != inside ]]; then
  exec unshare --net --mount --propagation private "$0" "$N" "$ROUNDS" inside
fi
mount -t tmpfs none /run
ip link set lo up
echo 1 > /proc/sys/net/ipv4/ip_forward
ip link add nx0 type bridge
ip link set nx0 up
ip addr add 10.213.0.1/32 dev nx0
ip route add unreachable 10.213.0.0/16
kmem() { awk '/^(SUnreclaim|Percpu|VmallocUsed):/ {s += $2} END {print s}' /proc/meminfo; }
settle() {
  local last now
  last=$(kmem)
  for _ in $(seq 60); do
    sleep 1
    now=$(kmem)
    if (( last - now < 256 )); then return; fi
    last=$now
  done
}
addr() { echo "10.213.$((128 + $1 / 250)).$((2 + $1 % 250))"; }
namespace() {
  ip netns add "$1"
  ip netns exec "$1" sh -c 'echo 0 > /proc/sys/net/ipv4/ip_unprivileged_port_start; for s in all default; do echo 1 > /proc/sys/net/ipv6/conf/$s/disable_ipv6; done'
}
empty() { namespace "d$1"; }
veth() {
  local i=$1 a
  a=$(addr "$i")
  namespace "d$i"
  ip link add "nx-$i" numtxqueues 1 numrxqueues 1 up type veth peer name eth0 numtxqueues 1 numrxqueues 1 netns "d$i"
  echo 1 > "/proc/sys/net/ipv4/conf/nx-$i/rp_filter"
  echo 1 > "/proc/sys/net/ipv4/conf/nx-$i/route_localnet"
  echo 1 > "/proc/sys/net/ipv6/conf/nx-$i/disable_ipv6"
  ip route add "$a/32" dev "nx-$i" src 10.213.0.1 scope link
  inside "$i" "$a"
}
macvlan_host() {
  ip link add nxh numtxqueues 1 numrxqueues 1 up type veth peer name nxl numtxqueues 1 numrxqueues 1
  ip link set nxl up
  echo 1 > /proc/sys/net/ipv6/conf/nxh/disable_ipv6
  echo 1 > /proc/sys/net/ipv6/conf/nxl/disable_ipv6
  ip addr add 10.213.0.1/32 dev nxh
  ip route add 10.213.128.0/17 dev nxh src 10.213.0.1 scope link
}
macvlan() {
  local i=$1 a mac
  a=$(addr "$i")
  mac=$(printf '02:00:0a:d5:%02x:%02x' $((i / 256)) $((i % 256)))
  namespace "d$i"
  ip link add link nxl name eth0 netns "d$i" address "$mac" numtxqueues 1 numrxqueues 1 type macvlan mode private
  ip neigh add "$a" lladdr "$mac" dev nxh nud permanent
  inside "$i" "$a"
}
inside() {
  ip -n "d$1" link set lo up
  ip -n "d$1" link set eth0 up
  ip -n "d$1" addr add "$2/32" dev eth0
  ip -n "d$1" route add default via 10.213.0.1 dev eth0 onlink
}
# Whether the host reaches d1's address and d0 the gateway, port 80 each (the layout works).
reach() {
  python3 - "$(addr 1)" <<'PY'
import ctypes, os, socket, sys, threading
libc = ctypes.CDLL(None, use_errno=True)
def run(ns, f):
    out = []
    def body():
        if ns:
            fd = os.open(f'/run/netns/{ns}', os.O_RDONLY); libc.setns(fd, 0x40000000); os.close(fd)
        out.append(f())
    t = threading.Thread(target=body); t.start(); t.join(); return out[0]
def listen(addr):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((addr, 80)); s.listen(); return s
def connect(addr):
    try: socket.create_connection((addr, 80), timeout=2).close(); return 'ok'
    except OSError as e: return f'FAILS ({e})'
held = [run('d1', lambda: listen(sys.argv[1])), run(None, lambda: listen('10.213.0.1'))]
print(f'host->d1 {run(None, lambda: connect(sys.argv[1]))}, d0->gateway {run("d0", lambda: connect("10.213.0.1"))}')
PY
}
teardown() {
  for ns in $(ip netns list | awk '{print $1}'); do ip netns del "$ns"; done
  ip link del nxh 2>/dev/null || true
}
for round in $(seq "$ROUNDS"); do
  for layout in empty veth macvlan; do
    settle
    before=$(kmem)
    if [[ $layout == macvlan ]]; then macvlan_host; fi
    for i in $(seq 0 $((N - 1))); do "$layout" "$i"; done
    sleep 1
    after=$(kmem)
    works=-
    if [[ $layout == macvlan ]]; then works=$(reach); fi
    echo "round $round $layout: $(( (after - before) / N )) KiB per deployment ($N up; $works; load $(cut -d' ' -f1 /proc/loadavg))"
    teardown
  done
done
