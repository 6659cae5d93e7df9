#!/usr/bin/env python3
"""Where a deployment's network memory goes, step by step (issue 11's 256 KiB mark).

The deployment's network as the launcher sets it up (network::attach::enter), rebuilt with
`ip` in cumulative levels for N deployments kept up, each level measured on its own, ROUNDS
times, inside a throwaway network and mount namespace (never the machine's own network):

    ns     an empty namespace with the launcher's sysctls (ip_unprivileged_port_start=0; with
           IPv6 default addr_gen_mode=1, without disable_ipv6 on all/default)
    pair   + the veth pair nx-<i> (host, down) / eth0 (in the namespace, down), one queue
           each, and the host end's sysctls (rp_filter, route_localnet; addr_gen_mode=1 or
           disable_ipv6)
    up     + the host end, lo and eth0 up
    addr   + the deployment's /32 on eth0; with IPv6 fe80::1/128 on the host end and its
           /128 inside (nodad, noprefixroute)
    route  + the host's /32 (and /128) to it, the default route(s) inside: what the
           launcher does
    neigh  + one UDP datagram from the host to it per family: the ARP / neighbour discovery
           entries both ends then hold
A level may carry an MTU for both ends of the pair, e.g. `route:1279`: below IPv6's minimum
(1280), a device gets no IPv6 state from the kernel at all (net/ipv6/addrconf.c,
addrconf_notify: NETDEV_REGISTER adds the device's inet6_dev only when mtu >= IPV6_MIN_MTU),
which shows what IPv6's per-device state costs; raising the MTU later adds it back
(NETDEV_CHANGEMTU), so it is a measurement, not a setting NX could use without the small MTU.

Per level: kernel memory per deployment (SUnreclaim + Percpu + VmallocUsed of /proc/meminfo
after the kernel settles, as `nx-bench --only network` counts it), the median of the rounds,
and the slab caches that grew from one level to the next. With `trace` (first round only; its
memory figures are then not comparable, the trace buffers count): the kernel's kmem, percpu and
vmalloc tracepoints, allocations made by ip, python3, sh, kworkers and softirqs (frees by
anyone), live bytes by call site per deployment and step: exact shares, blind to others' work
on the machine, though the sum runs above the meminfo delta (batched frees are not all traced).
Its tracing instance (256 MiB of buffer a CPU) is removed when the script ends.

Usage: attribute-pair.py v6|v4 [N [ROUNDS [trace] [levels=ns,pair,...]]]
  v6: the throwaway host has IPv6 and forwarding (deployments get IPv6, as nxd gives them);
  v4: IPv6 off in it (disable_ipv6 on all/default), as on a host without.
Needs root, iproute2, tracefs at /sys/kernel/tracing for `trace`. N=500 with 6 levels takes
about 2 minutes a round.
"""
import collections
import ctypes
import os
import re
import socket
import subprocess
import sys
import time

CLONE_NEWNET = 0x40000000
LEVELS = ['ns', 'pair', 'up', 'addr', 'route', 'neigh']
TRACEFS = '/sys/kernel/tracing/instances/nx-attribute-pair'
ALLOCS = ['kmem/kmalloc', 'kmem/kmem_cache_alloc', 'percpu/percpu_alloc_percpu',
          'vmalloc/alloc_vmap_area']
FREES = ['kmem/kfree', 'kmem/kmem_cache_free', 'percpu/percpu_free_percpu',
         'vmalloc/free_vmap_area_noflush']
EVENT = re.compile(r'^\s*\S+-\d+\s.*?(kmalloc|kmem_cache_alloc|kfree|kmem_cache_free|'
                   r'percpu_alloc_percpu|percpu_free_percpu|alloc_vmap_area|'
                   r'free_vmap_area_noflush): (.*)$')
libc = ctypes.CDLL(None, use_errno=True)


def write(path, value):
    with open(path, 'w') as f:
        f.write(value)


def ip(*args, batch=None):
    """Runs ip(8); `batch`: commands, one a line, run by one ip process (-batch)."""
    subprocess.run(['ip', *args] + (['-b', '-'] if batch is not None else []),
                   input=batch, text=True, check=True)


def kernel_kib():
    """SUnreclaim + Percpu + VmallocUsed of /proc/meminfo, KiB."""
    fields = {}
    for line in open('/proc/meminfo'):
        name, value = line.split(':')
        fields[name] = int(value.split()[0])
    return fields['SUnreclaim'] + fields['Percpu'] + fields['VmallocUsed']


def slab_kib():
    """KiB of slab pages per cache, from /proc/slabinfo."""
    caches = {}
    for line in open('/proc/slabinfo').readlines()[2:]:
        f = line.split()
        caches[f[0]] = int(f[14]) * int(f[5]) * 4  # slabs x pages per slab x 4 KiB
    return caches


def settle():
    """Waits (at most 60 s) until namespaces dropped earlier are freed: kernel memory fell
    less than 256 KiB over the last second (the kernel frees them in a work queue)."""
    last = kernel_kib()
    for _ in range(60):
        time.sleep(1)
        now = kernel_kib()
        if last - now < 256:
            return
        last = now


class Deployments:
    """N deployments' networks in namespaces d0..d<N-1>, addressed as nxd's plan does."""

    def __init__(self, n, ipv6):
        self.n, self.ipv6 = n, ipv6
        self.home = os.open('/proc/self/ns/net', os.O_RDONLY)

    @staticmethod
    def address(i):
        return f'10.213.{128 + i // 250}.{2 + i % 250}'

    @staticmethod
    def address6(i):
        return f'fd6e:7800:213:0:8000::{2 + i:x}'

    def inside(self, i, action):
        """Runs `action` with this thread in d<i> (/proc/sys/net is then d<i>'s)."""
        fd = os.open(f'/run/netns/d{i}', os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET):
                raise OSError(ctypes.get_errno(), 'setns')
            action()
        finally:
            libc.setns(self.home, CLONE_NEWNET)
            os.close(fd)

    def namespace_sysctls(self):
        write('/proc/sys/net/ipv4/ip_unprivileged_port_start', '0')
        if self.ipv6:
            write('/proc/sys/net/ipv6/conf/default/addr_gen_mode', '1')
        else:
            for scope in ('all', 'default'):
                write(f'/proc/sys/net/ipv6/conf/{scope}/disable_ipv6', '1')

    def build(self, level):
        """Sets up every deployment up to `level` (`name` or `name:mtu`)."""
        name, _, mtu = level.partition(':')
        depth = LEVELS.index(name)
        for i in range(self.n):
            ip('netns', 'add', f'd{i}')
            self.inside(i, self.namespace_sysctls)
        if depth < 1:
            return
        mtu_arg = f'mtu {mtu} ' if mtu else ''
        ip(batch=''.join(f'link add nx-{i} {mtu_arg}numtxqueues 1 numrxqueues 1 type veth peer '
                         f'name eth0 netns d{i} {mtu_arg}numtxqueues 1 numrxqueues 1\n'
                         for i in range(self.n)))
        for i in range(self.n):
            write(f'/proc/sys/net/ipv4/conf/nx-{i}/rp_filter', '1')
            write(f'/proc/sys/net/ipv4/conf/nx-{i}/route_localnet', '1')
            if self.ipv6:
                write(f'/proc/sys/net/ipv6/conf/nx-{i}/addr_gen_mode', '1')
            elif not mtu:  # a link without IPv6 state has no net.ipv6.conf.<link>
                write(f'/proc/sys/net/ipv6/conf/nx-{i}/disable_ipv6', '1')
        if depth < 2:
            return
        host = []
        for i in range(self.n):
            host.append(f'link set nx-{i} up\n')
            if depth >= 3 and self.ipv6:
                host.append(f'addr add fe80::1/128 dev nx-{i} nodad noprefixroute\n')
            if depth >= 4:
                host.append(f'route add {self.address(i)}/32 dev nx-{i} src 10.213.0.1 scope link\n')
                if self.ipv6:
                    host.append(f'route add {self.address6(i)}/128 dev nx-{i}\n')
        ip(batch=''.join(host))
        for i in range(self.n):
            inside = ['link set lo up\n', 'link set eth0 up\n']
            if depth >= 3:
                inside.append(f'addr add {self.address(i)}/32 dev eth0\n')
                if self.ipv6:
                    inside.append(f'addr add {self.address6(i)}/128 dev eth0 nodad noprefixroute\n')
            if depth >= 4:
                inside.append('route add default via 10.213.0.1 dev eth0 onlink\n')
                if self.ipv6:
                    inside.append('route add default via fe80::1 dev eth0\n')
            ip('-n', f'd{i}', batch=''.join(inside))
        if depth < 5:
            return
        families = [(socket.AF_INET, self.address)]
        if self.ipv6:
            families.append((socket.AF_INET6, self.address6))
        for family, address in families:
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                for i in range(self.n):
                    s.sendto(b'x', (address(i), 9))
        time.sleep(2)

    @staticmethod
    def remove():
        for name in os.listdir('/run/netns'):
            ip('netns', 'del', name)


def trace_start():
    os.makedirs(TRACEFS, exist_ok=True)
    write(f'{TRACEFS}/tracing_on', '0')
    write(f'{TRACEFS}/buffer_size_kb', '262144')
    write(f'{TRACEFS}/trace', '')
    ours = ('comm == "ip" || comm == "python3" || comm == "sh" || comm ~ "kworker*" || '
            'comm ~ "ksoftirqd*"')
    for event in ALLOCS + FREES:
        # Frees from anyone (an RCU callback frees what ip allocated); '0' clears a filter.
        write(f'{TRACEFS}/events/{event}/filter', ours if event in ALLOCS else '0')
        write(f'{TRACEFS}/events/{event}/enable', '1')
    write(f'{TRACEFS}/tracing_on', '1')


def trace_stop():
    """Live bytes by call site since trace_start, and how many events the buffer lost."""
    write(f'{TRACEFS}/tracing_on', '0')
    for event in ALLOCS + FREES:
        write(f'{TRACEFS}/events/{event}/enable', '0')
    lost = sum(int(re.search(r'overrun: (\d+)', open(f'{TRACEFS}/per_cpu/cpu{c}/stats').read())[1])
               for c in range(os.cpu_count()))
    live = {}
    for line in open(f'{TRACEFS}/trace'):
        m = EVENT.match(line)
        if not m:
            continue
        event, rest = m[1], m[2]
        f = dict(kv.split('=', 1) for kv in re.findall(r'(\w+=\S+)', rest))
        if event in ('kfree', 'kmem_cache_free'):
            live.pop(('slab', f.get('ptr')), None)
        elif event == 'percpu_free_percpu':
            live.pop(('percpu', f.get('ptr')), None)
        elif event == 'free_vmap_area_noflush':
            live.pop(('vmalloc', f.get('va_start')), None)
        elif event == 'alloc_vmap_area':
            live[('vmalloc', f.get('addr'))] = (int(f.get('size', 0)), 'vmalloc')
        elif event == 'percpu_alloc_percpu':
            # bytes_alloc is per CPU; the area exists for every possible CPU (0-1 here).
            live[('percpu', f.get('ptr'))] = (int(f['bytes_alloc']) * os.cpu_count(),
                                              'percpu:' + f['call_site'].split('+')[0])
        else:
            site = f['call_site'].split('+')[0]
            if event == 'kmem_cache_alloc':
                site += '[' + f.get('name', '?') + ']'
            live[('slab', f.get('ptr'))] = (int(f['bytes_alloc']), site)
    by_site = collections.Counter()
    for size, site in live.values():
        by_site[site] += size
    write(f'{TRACEFS}/trace', '')
    return by_site, lost


def host_setup(ipv6):
    """The throwaway host: loopback, forwarding, nx0 with the gateway, as nxd sets it up."""
    subprocess.run(['mount', '-t', 'tmpfs', 'tmpfs', '/run'], check=True)
    os.makedirs('/run/netns', exist_ok=True)
    ip('link', 'set', 'lo', 'up')
    write('/proc/sys/net/ipv4/ip_forward', '1')
    if ipv6:
        write('/proc/sys/net/ipv6/conf/all/forwarding', '1')
    else:
        for scope in ('all', 'default'):
            write(f'/proc/sys/net/ipv6/conf/{scope}/disable_ipv6', '1')
    ip('link', 'add', 'nx0', 'type', 'bridge')
    ip('link', 'set', 'nx0', 'up')
    ip('addr', 'add', '10.213.0.1/32', 'dev', 'nx0')
    ip('route', 'add', 'unreachable', '10.213.0.0/16')
    if ipv6:
        ip('route', 'add', 'unreachable', 'fd6e:7800:213::/64')


def report(mode, n, rounds, levels, kib, slabs, traced):
    print(f'\n{mode}: kernel memory per deployment, KiB, median of {rounds} rounds '
          f'(step: over the level before)')
    previous = None
    for level in levels:
        median = sorted(kib[level])[len(kib[level]) // 2]
        step = '' if previous is None else f'  step {median - previous:+6.1f}'
        print(f'  {level:10} {median:6.1f}{step}   rounds {[round(x, 1) for x in kib[level]]}')
        previous = median
    print('\nslab caches, KiB of slab pages per deployment, step over the level before (>= 0.5):')
    for a, b in zip(levels, levels[1:]):
        step = {c: slabs[b].get(c, 0) - slabs[a].get(c, 0) for c in slabs[b]}
        grew = sorted(((v, c) for c, v in step.items() if abs(v) >= 0.5), reverse=True)
        print(f'  {a} -> {b}: ' + ', '.join(f'{c} {v:+.1f}' for v, c in grew))
    if traced:
        print('\ntraced live bytes per deployment by call site, step over the level before '
              '(|step| >= 64 B):')
        for a, b in zip([None] + levels, levels):
            now, lost = traced[b]
            before = traced[a][0] if a else collections.Counter()
            step = {s: (now.get(s, 0) - before.get(s, 0)) / n for s in set(before) | set(now)}
            print(f'  {a} -> {b} (traced live {sum(now.values()) / n / 1024:.1f} KiB, step '
                  f'{sum(step.values()) / 1024:+.1f} KiB; events lost {lost}):')
            for site, size in sorted(step.items(), key=lambda kv: -abs(kv[1])):
                if abs(size) >= 64:
                    print(f'      {site:60} {size:+8.0f} B')


def main():
    args = sys.argv[1:]
    if len(args) < 1 or args[0] not in ('v4', 'v6'):
        sys.exit(__doc__)
    if os.environ.get('NX_ATTRIBUTE_PAIR_INSIDE') != '1':
        os.environ['NX_ATTRIBUTE_PAIR_INSIDE'] = '1'
        os.execvp('unshare', ['unshare', '--net', '--mount', '--propagation', 'private',
                              sys.executable, *sys.argv])
    mode = args[0]
    numbers = [a for a in args[1:] if a.isdigit()]
    n = int(numbers[0]) if numbers else 500
    rounds = int(numbers[1]) if len(numbers) > 1 else 3
    trace = 'trace' in args
    levels = next((a.split('=', 1)[1].split(',') for a in args if a.startswith('levels=')), LEVELS)
    if mode == 'v6' and any(':' in level for level in levels):
        sys.exit('a level with an MTU below 1280 has no IPv6: use it with v4')
    deployments = Deployments(n, mode == 'v6')
    host_setup(deployments.ipv6)
    kib, slabs, traced = collections.defaultdict(list), {}, {}
    try:
        measure(deployments, mode, n, rounds, trace, levels, kib, slabs, traced)
    finally:
        if os.path.isdir(TRACEFS):
            # The instance's buffers (256 MiB a CPU) stay allocated until it is removed.
            write(f'{TRACEFS}/tracing_on', '0')
            for event in ALLOCS + FREES:
                write(f'{TRACEFS}/events/{event}/enable', '0')
            os.rmdir(TRACEFS)
    report(mode, n, rounds, levels, kib, slabs, traced)


def measure(deployments, mode, n, rounds, trace, levels, kib, slabs, traced):
    """Builds, measures and removes every level `rounds` times; fills kib, slabs, traced."""
    for r in range(rounds):
        for level in levels:
            settle()
            kernel0, slab0 = kernel_kib(), slab_kib()
            if trace and r == 0:
                trace_start()
            started = time.time()
            deployments.build(level)
            took = time.time() - started
            time.sleep(1)
            if trace and r == 0:
                traced[level] = trace_stop()
            kernel1, slab1 = kernel_kib(), slab_kib()
            kib[level].append((kernel1 - kernel0) / n)
            if r == 0:
                slabs[level] = {c: (slab1.get(c, 0) - slab0.get(c, 0)) / n
                                for c in set(slab0) | set(slab1)}
            print(f'{mode} round {r} {level:10}: {kib[level][-1]:6.1f} KiB per deployment '
                  f'({n} up, set up in {took:.1f} s, load {os.getloadavg()[0]:.1f})', flush=True)
            deployments.remove()


main()
