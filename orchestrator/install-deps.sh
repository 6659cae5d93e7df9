#!/usr/bin/env bash
# System packages NX needs on Debian/Ubuntu: bubblewrap (the container backend), systemd and
# dbus (the embedded manager), PostgreSQL (nxd's state), util-linux (unshare), curl, wrk (the
# benchmarks' load generator), and the
# musl target for static sample binaries. Run as root.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
packages=(bubblewrap dbus systemd postgresql util-linux curl ca-certificates coreutils wrk nix-bin)
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
